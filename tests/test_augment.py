"""data.augment: torchvision.transforms.v2 per training image, on real configs and the real CLI."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torchvision.transforms import v2

from cnnexp import data
from cnnexp.data.augment import PerImage
from tests.conftest import FAST, all_runs, cli_in_process
from tests.test_data import compose_data, write_cifar

V2 = "torchvision.transforms.v2"
CROP = f"{{_target_:{V2}.RandomCrop,size:8,padding:2}}"  # digits are 8×8
FLIP = f"{{_target_:{V2}.RandomHorizontalFlip}}"
CROP_FLIP = f"data.augment=[{CROP},{FLIP}]"


def brightness(low: float, high: float) -> str:
    return f"data.augment=[{{_target_:{V2}.ColorJitter,brightness:[{low},{high}]}}]"


class Recorder(L.LightningModule):
    """Keeps the batches Lightning hands to the steps."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(64, 10)
        self.seen: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        self.seen["train"].append(batch[0])
        return torch.nn.functional.cross_entropy(self.linear(batch[0].flatten(1)), batch[1])

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        self.seen["val"].append(batch[0])

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        self.seen["test"].append(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def batches_seen(
    dm: data.TensorDataModule, seed: int = 0, accelerator: str = "cpu"
) -> dict[str, list[torch.Tensor]]:
    """The batches of one epoch of fit (2 training, 2 validation) and then test (2)."""
    L.seed_everything(seed)
    recorder = Recorder()
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=2,
        limit_test_batches=2,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(recorder, dm)
    trainer.test(recorder, dm, verbose=False)
    return recorder.seen


def test_augmentation_changes_training_batches_only(tmp_path: Path) -> None:
    plain = batches_seen(data.build(compose_data("digits", tmp_path)))
    augmented = batches_seen(data.build(compose_data("digits", tmp_path, CROP_FLIP)))
    for a, b in zip(plain["train"], augmented["train"], strict=True):
        assert a.shape == b.shape and not torch.allclose(a, b)
    for part in ("val", "test"):
        assert len(plain[part]) == len(augmented[part]) == 2
        for a, b in zip(plain[part], augmented[part], strict=True):
            assert torch.equal(a, b)


def test_same_seed_same_training_batches(tmp_path: Path) -> None:
    dm = data.build(compose_data("digits", tmp_path, CROP_FLIP))
    first, again = batches_seen(dm, seed=3)["train"], batches_seen(dm, seed=3)["train"]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_each_image_draws_its_own_parameters_from_the_seed(tmp_path: Path) -> None:
    dm = data.build(compose_data("digits", tmp_path, CROP_FLIP))
    same = dm.train[0][:1].expand(64, -1, -1, -1)  # one image, 64 times

    def augmented(seed: int) -> torch.Tensor:
        L.seed_everything(seed)
        return dm.augment(same)

    assert len(torch.unique(v2.RandomCrop(8, padding=2)(same), dim=0)) == 1  # v2: one draw
    assert len(torch.unique(augmented(0), dim=0)) > 10  # here: one draw per image
    assert torch.equal(augmented(0), augmented(0)) and not torch.equal(augmented(0), augmented(1))


def test_augmentation_works_on_the_uint8_pixels(tmp_path: Path) -> None:
    x = data.build(compose_data("digits", tmp_path)).train[0][:16]
    unchanged = data.build(compose_data("digits", tmp_path, brightness(1, 1)))
    assert torch.equal(unchanged.augment(x), x)
    black = data.build(compose_data("digits", tmp_path, brightness(0, 0)))
    assert torch.equal(black.augment(x), torch.zeros_like(x))


def test_randaugment_gets_each_uint8_image_before_normalisation() -> None:
    seen: list[torch.Tensor] = []

    def recorded(image: torch.Tensor) -> torch.Tensor:
        seen.append(image)
        return v2.RandAugment()(image)

    L.seed_everything(0)
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    out = PerImage(recorded)(x)
    assert out.shape == x.shape and out.dtype == torch.uint8 and len(seen) == 4
    assert all(image.dtype == torch.uint8 and image.shape == (3, 16, 16) for image in seen)


BAD = [  # (override, start of the one line)
    (
        f"data.augment=[{FLIP},{{_target_:{V2}.RandomFlop}}]",
        f"data.augment[1]._target_: cannot import '{V2}.RandomFlop' (allowed: a dotted path to a "
        f"subclass of {V2}.Transform",
    ),
    (
        f"data.augment=[{{_target_:{V2}.ColorJitter,brightness:-1}}]",
        "data.augment[0].brightness: -1 is not allowed (",
    ),
    (
        f"data.augment=[{{_target_:{V2}.RandomCrop,size:6}}]",
        "data.augment: turns 1×8×8 images into 1×6×6 (allowed: transforms that keep the shape",
    ),
]


@pytest.mark.parametrize(("override", "message"), BAD, ids=["target", "argument", "shape"])
def test_bad_transform_is_one_line_and_opens_no_run(override: str, message: str, out) -> None:
    result = cli_in_process("model=tiny", "data=digits", "analysis=none", *FAST, override, out=out)
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"cnnexp: error: {message}"), line
    assert all_runs(out) == []


def test_cifar_preset_trains_an_epoch_with_crop_and_flip(out) -> None:
    write_cifar(out / "data")
    args = ("data=cifar10", "data.download=false", "data.verify=false", "data.batch_size=32")
    result = cli_in_process("model=tiny", "analysis=none", *FAST, *args, out=out)
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = all_runs(out)
    assert run.info.status == "FINISHED"
    assert "RandomCrop" in run.data.params["data.augment"]
    assert (
        run.data.metrics["throughput_train"] > 0 and run.data.metrics["throughput_train_iqr"] >= 0
    )
