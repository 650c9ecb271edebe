"""cnnexp.data on real configs and real files, written by the tests in torchvision's formats."""

from __future__ import annotations

import dataclasses
import logging
import struct
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision import datasets

from cnnexp import data
from cnnexp.data.ondisk import write_cifar10
from cnnexp.data.splits import split_indices, stratified_subset
from cnnexp.errors import ConfigError
from cnnexp.limits import check_settings
from cnnexp.schema import DataConf, DigitsConf
from cnnexp.typed import typed_section
from tests.conftest import CONF, typed_cfg

PRESETS = sorted(p.stem for p in (CONF / "data").glob("*.yaml") if not p.stem.startswith("_"))
SHAPES = {
    "mnist5k": (1, 28, 28),
    "digits": (1, 8, 8),
    "shapes": (1, 32, 32),
    "shapes_pair": (1, 32, 32),
    "mnist": (1, 28, 28),
    "fashion_mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
    "image_folder": (3, 32, 32),
}


def compose_data(name: str, tmp_path: Path, *overrides: str) -> DataConf:
    """The typed data section of the real root config with data=<name>, outputs under
    tmp_path."""
    return typed_cfg(f"data={name}", f"paths.output_dir={tmp_path}", *overrides).data


# --- files in torchvision's real on-disk formats ------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    """MNIST IDX: big-endian magic (2051 images, 2049 labels), the sizes, then uint8 bytes."""
    magic = 2051 if array.ndim == 3 else 2049
    header = struct.pack(f">{1 + array.ndim}I", magic, *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str, n_train: int = 200, n_test: int = 50) -> dict:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays[prefix] = rng.integers(0, 256, (n, 28, 28)), np.arange(n) % 10
        write_idx(raw / f"{prefix}-images-idx3-ubyte", arrays[prefix][0])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", arrays[prefix][1])
    return arrays


CIFAR_NAMES = [f"kind {i}" for i in range(10)]  # read back from batches.meta


def write_cifar(root: Path, per_batch: int = 30) -> None:
    """CIFAR-10's files with per_batch images each; image i: channel i % 3 bright."""
    labels = [i % 10 for i in range(per_batch)]
    pixels = np.zeros((per_batch, 3, 1024), np.uint8)
    pixels[np.arange(per_batch), np.arange(per_batch) % 3] = 255
    train = (np.tile(pixels, (5, 1, 1)).reshape(-1, 3, 32, 32), labels * 5)
    write_cifar10(root, train, (pixels.reshape(-1, 3, 32, 32), labels), CIFAR_NAMES)


def write_image_folder(path: Path, per_class: int = 10) -> Path:
    """PNGs of assorted sizes in three class folders; every `white` image is all white."""
    rng = np.random.default_rng(0)
    for name in ("black", "noise", "white"):
        (path / name).mkdir(parents=True)
        for i in range(per_class):
            shape = (20 + i, 24, 3)
            pixels = {"black": np.zeros(shape), "white": np.full(shape, 255)}.get(name)
            pixels = rng.integers(0, 256, shape) if pixels is None else pixels
            Image.fromarray(pixels.astype(np.uint8)).save(path / name / f"{i}.png")
    return path


def source_files(name: str, tmp_path: Path) -> list[str]:
    """Overrides that point a preset at files written under tmp_path (none for bundled data)."""
    root = tmp_path / "data"
    if name in ("mnist", "fashion_mnist"):
        write_mnist(root, {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}[name])
        return ["data.download=false"]
    if name == "cifar10":
        write_cifar(root)
        return ["data.download=false", "data.verify=false"]
    if name == "image_folder":
        write_image_folder(tmp_path / "images")
        return [f"data.path={tmp_path / 'images'}", "data.val_fraction=0.2"]
    return []


def scaled(x: data.Images) -> torch.Tensor:
    """The uint8 images on the 0..1 scale."""
    return x[:].float() / 255


# --- every preset --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_builds_a_datamodule(name: str, tmp_path: Path) -> None:
    dm = data.build(compose_data(name, tmp_path, *source_files(name, tmp_path)))
    assert dm.name == name and dm.input_shape == SHAPES[name]
    assert dm.num_classes == len(dm.class_names) == len(set(dm.class_names))
    for x, y in (dm.train, dm.val, dm.test):
        assert x[:].dtype == torch.uint8 and y.dtype == torch.int64  # 1 byte per pixel held
        assert x.shape == (len(y), *dm.input_shape) and len(y) > 0
        assert set(y.tolist()) == set(range(dm.num_classes))  # stratified: all in every split
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (min(64, len(dm.train[1])), *dm.input_shape) and y.shape == x.shape[:1]
    assert (
        x.dtype == torch.uint8 and dm.on_after_batch_transfer((x, y), 0)[0].dtype == torch.float32
    )


def test_mnist5k_default_split_sizes_and_normalisation(tmp_path: Path) -> None:
    dm = data.build(compose_data("mnist5k", tmp_path))
    assert [len(s[1]) for s in (dm.train, dm.val, dm.test)] == [3500, 500, 1000]
    assert torch.bincount(dm.val[1]).tolist() == [50] * 10
    x = dm.inputs(dm.train[0][:])  # normalised per batch, with the training split's statistics
    assert abs(x.mean()) < 1e-4 and abs(x.std() - 1) < 1e-3
    assert 0.1 < dm.mean[0] < 0.15 and 0.28 < dm.std[0] < 0.33  # MNIST's well-known stats


# --- torchvision files ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"), [("mnist", datasets.MNIST), ("fashion_mnist", datasets.FashionMNIST)]
)
def test_mnist_idx_files_give_official_test_split(name: str, cls: type, tmp_path: Path) -> None:
    arrays = write_mnist(tmp_path / "data", cls.__name__)
    dm = data.build(compose_data(name, tmp_path, "data.download=false"))
    assert dm.class_names == cls.classes
    assert len(dm.train[1]) == 180 and len(dm.val[1]) == 20  # 10 % of the official train set
    images, labels = arrays["t10k"]
    assert dm.test[1].tolist() == labels.tolist()
    expected = torch.from_numpy(images).float().unsqueeze(1) / 255
    assert torch.allclose(scaled(dm.test[0]), expected, atol=1e-5)


def test_cifar10_pickled_batches_keep_channel_order(tmp_path: Path) -> None:
    write_cifar(tmp_path / "data")
    dm = data.build(compose_data("cifar10", tmp_path, "data.download=false", "data.verify=false"))
    assert dm.class_names == CIFAR_NAMES
    assert len(dm.train[1]) + len(dm.val[1]) == 150 and len(dm.test[1]) == 30
    bright = scaled(dm.test[0]).mean(dim=(2, 3)).argmax(dim=1)
    assert bright.tolist() == [i % 3 for i in range(30)]


def test_cifar10_md5_check_rejects_unofficial_files(tmp_path: Path) -> None:
    write_cifar(tmp_path / "data")
    with pytest.raises(ConfigError, match=r"^data\.root: CIFAR10 data missing or corrupt"):
        data.build(compose_data("cifar10", tmp_path, "data.download=false"))


@pytest.mark.parametrize("channels", [1, 3])
def test_image_folder_resizes_and_labels_by_folder(channels: int, tmp_path: Path) -> None:
    path = write_image_folder(tmp_path / "images")
    cfg = compose_data(
        "image_folder",
        tmp_path,
        f"data.path={path}",
        f"data.channels={channels}",
        "data.image_size=16",
        "data.normalize=none",
        "data.val_fraction=0.2",
    )
    dm = data.build(cfg)
    assert dm.class_names == ["black", "noise", "white"] and dm.input_shape == (channels, 16, 16)
    assert [len(s[1]) for s in (dm.train, dm.val, dm.test)] == [18, 6, 6]
    x, y = scaled(dm.train[0]), dm.train[1]
    assert torch.all(x[y == 0] == 0) and torch.all(x[y == 2] == 1)


# --- splits --------------------------------------------------------------------------------------


def test_split_indices_are_stratified_disjoint_and_seeded() -> None:
    y = np.repeat(np.arange(4), 50)
    train, val, test = split_indices(y, 0.1, 0.2, seed=42)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(200))
    assert np.bincount(y[val]).tolist() == [5] * 4 and np.bincount(y[test]).tolist() == [10] * 4
    again = split_indices(y, 0.1, 0.2, seed=42)
    other = split_indices(y, 0.1, 0.2, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again, strict=True))
    assert not np.array_equal(val, other[1])


def test_split_seed_changes_validation_images(tmp_path: Path) -> None:
    one = data.build(compose_data("digits", tmp_path, "data.split_seed=1"))
    two = data.build(compose_data("digits", tmp_path, "data.split_seed=2"))
    assert one.val[0].shape == two.val[0].shape and not torch.equal(one.val[0][:], two.val[0][:])


def test_stratified_subsets_keep_balance_and_nest() -> None:
    y = np.repeat(np.arange(5), [40, 40, 40, 40, 80])
    small, large = stratified_subset(y, 30, seed=0), stratified_subset(y, 120, seed=0)
    assert set(small) <= set(large)
    assert np.bincount(y[large]).tolist() == [20, 20, 20, 20, 40]
    assert np.abs(np.bincount(y[small]) - np.array([5, 5, 5, 5, 10])).max() <= 1


@pytest.mark.parametrize(("train_size", "expected"), [(100, 100), (0.5, 629), (1.0, 1258)])
def test_train_size_shrinks_only_training_set(
    train_size: float, expected: int, tmp_path: Path
) -> None:
    full = data.build(compose_data("digits", tmp_path))
    small = data.build(compose_data("digits", tmp_path, f"data.train_size={train_size}"))
    assert len(full.train[1]) == 1258 and len(small.train[1]) == expected
    share = np.bincount(full.train[1]) * expected / 1258
    assert np.abs(np.bincount(small.train[1]) - share).max() <= 1
    for part in ("val", "test"):
        (x_full, y_full), (x_small, y_small) = getattr(full, part), getattr(small, part)
        assert torch.equal(y_full, y_small)
        assert torch.equal(x_full[:], x_small[:])


# --- normalisation, loaders, cache -------------------------------------------------------------


def test_declared_and_no_normalisation(tmp_path: Path) -> None:
    declared = data.build(
        compose_data("digits", tmp_path, "data.normalize={mean: [0.5], std: [0.25]}")
    )
    assert declared.mean == (0.5,) and declared.std == (0.25,)
    x = declared.inputs(declared.train[0][:])
    assert x.min() == -2 and x.max() == pytest.approx(2, abs=1e-6)  # (0..1 - 0.5) / 0.25
    raw = data.build(compose_data("digits", tmp_path, "data.normalize=none"))
    x = raw.inputs(raw.train[0][:])
    assert x.min() == 0 and x.max() == pytest.approx(1, abs=1e-6) and raw.mean == (0.0,)


def test_shuffling_follows_the_global_seed(tmp_path: Path) -> None:
    dm = data.build(compose_data("digits", tmp_path))

    def first_labels(seed: int) -> list[int]:
        L.seed_everything(seed)
        return next(iter(dm.train_dataloader()))[1].tolist()

    assert first_labels(0) == first_labels(0) != first_labels(1)
    assert torch.equal(next(iter(dm.val_dataloader()))[1], dm.val[1][:64])


def test_same_config_reuses_cached_tensors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = compose_data("digits", tmp_path, "data.split_seed=1234")
    with caplog.at_level(logging.INFO, logger="cnnexp.data"):
        first = data.build(cfg)
        second = data.build(
            compose_data("digits", tmp_path, "data.split_seed=1234", "data.batch_size=8")
        )
    messages = [r.getMessage() for r in caplog.records if r.name == "cnnexp.data"]
    assert messages[0].startswith("data digits: 1258/180/359 train/val/test uint8 images of 1×8×8")
    assert "in memory; ready in" in messages[0] and messages[0].endswith(" s")
    assert messages[1] == "data digits: reused from cache"
    assert second is not first and second.train[0] is first.train[0] and second.batch_size == 8


# --- mistakes ------------------------------------------------------------------------------------


def not_a_directory(tmp_path: Path) -> str:
    (tmp_path / "file").write_text("")
    return f"paths.data_dir={tmp_path / 'file'}"


MISTAKES = [  # (preset, overrides, start of the message, stage that must catch it)
    ("digits", ["data.name=nope"], "data.name: 'nope' is not allowed; choose", data.check),
    ("digits", ["+data.colour=red"], "data.colour: unknown key", data.check),
    ("digits", ["data.batch_size=0"], "data.batch_size: 0 is not allowed", data.check),
    ("digits", ["data.val_fraction=0.8"], "data.test_fraction: 0.2 with", data.check),
    ("mnist", ["data.test_fraction=0.2"], "data.test_fraction: 0.2 is not allowed", data.check),
    ("shapes", ["data.classes=[circle,blob]"], "data.classes: ['circle', 'blob']", data.check),
    ("image_folder", [], "data.path: no value given", data.check),
    ("image_folder", ["data.path=/no/such/dir"], "data.path: '/no/such/dir'", data.check),
    ("image_folder", ["data.path=TMP"], "data.path: TMP holds images of 0 class", data.check),
    ("digits", ["data.train_size=5000"], "data.train_size: 5000 is not allowed", data.check),
    ("digits", ["data.normalize={mean: [0, 0], std: [1, 1]}"], "data.normalize.mean", data.check),
    ("digits", ["data.val_fraction=0.001"], "data.val_fraction: 0.001 is not allowed", data.check),
    ("mnist", ["data.download=false"], "data.root: MNIST data missing", data.build),
]


@pytest.mark.parametrize(("name", "overrides", "message", "stage"), MISTAKES)
def test_mistakes_are_one_line_config_errors(
    name, overrides, message, stage, tmp_path: Path
) -> None:
    overrides = [o.replace("TMP", str(tmp_path)) for o in overrides]
    with pytest.raises(ConfigError) as caught:
        stage(compose_data(name, tmp_path, *overrides))
    text = str(caught.value)
    assert text.startswith(message.replace("TMP", str(tmp_path))) and "\n" not in text


def test_unreadable_image_names_the_folder(tmp_path: Path) -> None:
    path = write_image_folder(tmp_path / "images")
    (path / "noise" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match=r"^data\.path: cannot read an image under .*broken"):
        data.build(compose_data("image_folder", tmp_path, f"data.path={path}"))


def test_failed_download_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^data\.root: .*download failed: .*"):
        data.build(compose_data("mnist", tmp_path, not_a_directory(tmp_path)))


@pytest.fixture(scope="module")
def digits_cfg(tmp_path_factory: pytest.TempPathFactory) -> DataConf:
    return compose_data("digits", tmp_path_factory.mktemp("out"))


def valid_train_size(size: object, n_train: int) -> bool:
    if type(size) is float:
        return 0 < size <= 1
    return size is None or (type(size) is int and 0 < size <= n_train)


@settings(max_examples=150, deadline=None)
@given(
    batch=st.integers(-2, 3),
    val=st.sampled_from([0.0, 1.0]) | st.floats(-0.5, 1.5),
    size=st.sampled_from([None, 0, 0.0, 1.0, True]) | st.integers(-3, 3000) | st.floats(-0.5, 1.5),
    test=st.sampled_from([0.0, 1.0]) | st.floats(-0.5, 1.5),
)
def test_check_accepts_exactly_the_valid_numbers(digits_cfg, batch, val, size, test) -> None:
    values = {"batch_size": batch, "val_fraction": val, "train_size": size, "test_fraction": test}
    conf = typed_section("data", dataclasses.asdict(digits_cfg) | values, DigitsConf)

    def check() -> None:
        check_settings(conf, "data")
        data.check(conf)

    n, classes = 1797, 10  # digits: every split needs an image of each class
    n_train = n - round(val * n) - round(test * n)
    valid = [  # in the order check() looks at them: schema ranges, then sizes
        ("batch_size", batch > 0),
        ("val_fraction", 0 < val < 1),
        ("test_fraction", 0 < test < 1),
        ("test_fraction", val + test < 1),
        ("val_fraction", round(val * n) >= classes),
        ("test_fraction", round(test * n) >= classes),
        ("train_size", valid_train_size(size, n_train)),
    ]
    bad = [key for key, ok in valid if not ok]
    if not bad:
        check()
        return
    with pytest.raises(ConfigError, match=rf"^data\.{bad[0]}: "):
        check()
