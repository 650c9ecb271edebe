"""Data past memory: a folder decoded once into its uint8 cache, reused while the files are
unchanged, and streamed from disk batch by batch (`data.in_memory=false`) with the same batches
as in memory."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from cnnexp import data
from cnnexp.bench import cifar10_files, peak_rss_mb
from cnnexp.data import sources
from cnnexp.data.images import RowFile
from cnnexp.errors import ConfigError
from cnnexp.validate import validate
from tests.conftest import FAST, all_runs, cli_in_process, run_cli
from tests.test_augment import CROP_FLIP, batches_seen
from tests.test_data import compose_data


def write_pngs(path: Path, per_class: int = 24, size: int = 20) -> Path:
    """Noise PNGs of size² in three class folders."""
    rng = np.random.default_rng(1)
    for name in ("a", "b", "c"):
        (path / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path / name / f"{i}.png")
    return path


def folder_data(tmp_path: Path, folder: Path, *overrides: str):
    return compose_data(
        "image_folder", tmp_path, f"data.path={folder}", "data.image_size=16", *overrides
    )


def decodes(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Per data build of a folder: "decoded N" or "reused" (from cnnexp's log lines)."""
    messages = [r.getMessage() for r in caplog.records if r.name == "cnnexp.data.folder"]
    return [
        m.split(" into")[0].split(": ")[1] if "nothing" not in m else "reused" for m in messages
    ]


def test_a_folder_is_decoded_once_and_again_only_when_its_files_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = write_pngs(tmp_path / "images")
    with caplog.at_level(logging.INFO, logger="cnnexp.data.folder"):
        first = data.build(folder_data(tmp_path, folder, "data.split_seed=1"))
        cache = next((tmp_path / "data" / "cache").iterdir()) / "images.u8"
        written = cache.stat().st_mtime_ns
        again = data.build(folder_data(tmp_path, folder, "data.split_seed=2"))  # a new split
        assert cache.stat().st_mtime_ns == written  # read, not rewritten
        changed = folder / "b" / "3.png"
        Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(changed)
        os.utime(changed, ns=(written + 10**9, written + 10**9))  # a new modification time
        third = data.build(folder_data(tmp_path, folder, "data.split_seed=3"))
    assert decodes(caplog) == ["decoded 72 images", "reused", "decoded 72 images"]
    assert len(first.train[1]) + len(first.val[1]) + len(first.test[1]) == 72
    assert torch.equal(
        *(torch.cat([x[:] for x, _ in (dm.train, dm.val, dm.test)]).sum(0) for dm in (first, again))
    )  # the same pixels, split differently

    assert black_images(first) == 0 and black_images(third) == 1  # the changed file, decoded


def test_one_process_sees_a_folder_change_between_builds_of_one_config(tmp_path: Path) -> None:
    folder = write_pngs(tmp_path / "images")
    first = data.build(folder_data(tmp_path, folder))
    assert data.build(folder_data(tmp_path, folder)).train[0] is first.train[0]  # reused
    changed = folder / "a" / "0.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(changed)
    later = changed.stat().st_mtime_ns + 10**9
    os.utime(changed, ns=(later, later))  # a new modification time, however coarse the clock
    third = data.build(folder_data(tmp_path, folder))
    assert third.train[0] is not first.train[0]
    assert black_images(first) == 0 and black_images(third) == 1


def black_images(dm: data.TensorDataModule) -> int:
    every = torch.cat([x[:] for x, _ in (dm.train, dm.val, dm.test)])
    return int((every.amax(dim=(1, 2, 3)) == 0).sum())


def test_each_image_size_keeps_its_own_cache(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = write_pngs(tmp_path / "images")
    with caplog.at_level(logging.INFO, logger="cnnexp.data.folder"):
        for size, seed in ((16, 1), (8, 1), (16, 2), (8, 2)):
            dm = data.build(
                folder_data(tmp_path, folder, f"data.image_size={size}", f"data.split_seed={seed}")
            )
            assert dm.input_shape == (3, size, size)
    assert decodes(caplog) == ["decoded 72 images"] * 2 + ["reused"] * 2


def test_the_cache_holds_the_pixels_a_direct_decode_gives(tmp_path: Path) -> None:
    folder = write_pngs(tmp_path / "images", per_class=4, size=16)  # no resize: exact pixels
    dm = data.build(
        folder_data(tmp_path, folder, "data.val_fraction=0.25", "data.test_fraction=0.25")
    )
    decoded = {np.asarray(Image.open(f)).transpose(2, 0, 1).tobytes() for f in folder.glob("*/*")}
    held = [x.numpy().tobytes() for x, _ in (dm.train, dm.val, dm.test) for x in x[:]]
    assert len(held) == 12 and set(held) == decoded  # every file, byte for byte


def test_streamed_batches_equal_in_memory_batches(tmp_path: Path) -> None:
    folder = write_pngs(tmp_path / "images")
    held = data.build(folder_data(tmp_path, folder, "data.in_memory=true", "data.batch_size=16"))
    streamed = data.build(
        folder_data(
            tmp_path, folder, "data.in_memory=false", "data.batch_size=16", "data.num_workers=2"
        )
    )
    assert held.in_memory and not streamed.in_memory
    assert isinstance(streamed.train[0].base, RowFile) and held.mean == streamed.mean

    def epoch(dm: data.TensorDataModule) -> list[tuple[torch.Tensor, torch.Tensor]]:
        L.seed_everything(5)
        return [*dm.train_dataloader(), *dm.val_dataloader(), *dm.test_dataloader()]

    pairs = list(zip(epoch(held), epoch(streamed), strict=True))
    assert len(pairs) == 4 + 1 + 1  # 51 training images in batches of 16, 7 val, 14 test
    for (x1, y1), (x2, y2) in pairs:
        assert x2.dtype == torch.uint8 and torch.equal(x1, x2) and torch.equal(y1, y2)


@pytest.mark.parametrize(("free", "expected"), [(10**12, True), (0, False)])
def test_auto_keeps_the_set_in_memory_when_it_fits(
    free: int, expected: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_pngs(tmp_path / "images", per_class=10)
    monkeypatch.setattr(sources, "free_memory", lambda: free)  # this machine's memory, set
    dm = data.build(folder_data(tmp_path, folder, f"data.split_seed={free % 7}"))
    assert dm.in_memory is expected


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data=digits", "data.in_memory=false"], "data.in_memory: False is not allowed (allowed:"),
        (["data=digits", "data.in_memory=1"], "data.in_memory: 1 is not allowed (allowed: auto,"),
        (["data=digits", "data.num_workers=-1"], "data.num_workers: -1 is not allowed"),
        (["data=digits", "data.device=tpu"], "data.device: 'tpu' is not allowed"),
    ],
)
def test_placement_mistakes_are_one_line_errors(
    overrides: list[str], message: str, tmp_path: Path
) -> None:
    name = overrides[0].removeprefix("data=")
    with pytest.raises(ConfigError) as caught:
        data.check(compose_data(name, tmp_path, *overrides[1:]))
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_data_on_gpu_without_cuda_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^data\.device: 'gpu' is not allowed \(allowed: auto"):
        data.check(compose_data("digits", tmp_path, "data.device=gpu"))


@pytest.mark.slow
def test_a_streamed_folder_trains_and_the_second_run_decodes_nothing(
    tmp_path: Path, out: Path
) -> None:
    folder = write_pngs(tmp_path / "images", per_class=40)
    args = ("model=tiny", "data=image_folder", f"data.path={folder}", "data.image_size=16")
    args += (*FAST, "data.in_memory=false", "data.num_workers=2", "analysis=none")
    first = cli_in_process(*args, out=out)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli(*args, "seed=1", out=out)  # another process: only the cache on disk is shared
    assert second.returncode == 0, second.stderr[-3000:]
    assert "decoded 120 images into cache" in first.stdout
    assert "matches the folder; nothing decoded" in second.stdout
    assert "decoded" not in second.stdout.replace("nothing decoded", "")
    assert "on disk, read per batch" in second.stdout
    runs = all_runs(out)
    assert [r.info.status for r in runs] == ["FINISHED"] * 2
    assert all(r.data.metrics["test_acc"] >= 0 for r in runs)


@pytest.mark.slow
def test_cifar10_held_as_uint8_adds_at_most_350_mb_over_digits(tmp_path: Path) -> None:
    """Peak memory of a short real run (make bench's measure) on the full 60,000 images of
    CIFAR-10, written in its real format, over the same run on digits; float32 would add 737 MB
    for the pixels alone."""
    cifar = cifar10_files(tmp_path / "cifar")
    held, console = peak_rss_mb(cifar, tmp_path / "cifar-run")
    digits, _ = peak_rss_mb(["data=digits"], tmp_path / "digits-run")
    assert "45000/5000/10000 train/val/test uint8 images of 3×32×32" in console
    assert held - digits <= 350, f"CIFAR-10 adds {held - digits:.0f} MB"


@pytest.mark.gpu
@pytest.mark.parametrize("augment", [[], [CROP_FLIP]])
def test_data_lives_on_the_gpu_and_gives_the_cpu_batches(augment: list[str], tmp_path) -> None:
    """data.device=gpu: the uint8 images move to the GPU once and batches are indexed there;
    with the same seed they are the batches a CPU run sees (augmented training batches: the
    same shapes; their random draws may differ between devices)."""
    on_gpu = data.build(compose_data("digits", tmp_path, "data.device=gpu", *augment))
    gpu = batches_seen(on_gpu, accelerator="gpu")
    cpu = batches_seen(data.build(compose_data("digits", tmp_path, *augment)))
    assert on_gpu.train[0].base.is_cuda and on_gpu.val[1].is_cuda
    for part in ("train", "val", "test"):
        for a, b in zip(gpu[part], cpu[part], strict=True):
            assert a.is_cuda and a.dtype == torch.float32 and a.shape == b.shape
            if not augment or part != "train":
                assert torch.allclose(a.cpu(), b, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.slow
def test_a_streamed_folder_trains_on_the_gpu_with_pinned_batches(tmp_path, out) -> None:
    folder = write_pngs(tmp_path / "images", per_class=40)
    args = ("model=tiny", "data=image_folder", f"data.path={folder}", "data.image_size=16")
    result = run_cli(*args, *FAST, "trainer=gpu", "data.in_memory=false", out=out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on disk, read per batch" in result.stdout
    [run] = all_runs(out)
    assert run.info.status == "FINISHED"


@pytest.mark.gpu
def test_data_on_gpu_with_a_cpu_trainer_is_refused_before_any_run(compose_job) -> None:
    cfg = compose_job("data=digits", "data.device=gpu", "trainer=cpu")
    with pytest.raises(ConfigError, match=r"^data\.device: gpu, but the Trainer runs on CPUAcc"):
        validate(cfg)
