"""Data sets written in the formats cnnexp reads from disk: CIFAR-10's pickled batches exactly as
torchvision expects them, and a folder of PNGs per class. `make bench` and the tests train on
these (the real files cannot be downloaded here)."""

from __future__ import annotations

import io
import pickle
import struct
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str`, as in the real CIFAR-10 batches (made with Python 2):
    read with encoding="latin1", as torchvision does, the keys come back as str."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        size = len(obj)
        short = size < 256
        head = bytes([size]) if short else struct.pack("<i", size)
        self.write((pickle.SHORT_BINSTRING if short else pickle.BINSTRING) + head + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def write_pickle(path: Path, obj: dict) -> None:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    path.write_bytes(buffer.getvalue())


def write_cifar10(
    root: Path,
    train: tuple[np.ndarray, Sequence[int]],
    test: tuple[np.ndarray, Sequence[int]],
    names: Sequence[str],
) -> None:
    """root/cifar-10-batches-py: `train` (uint8 N×3×32×32 pixels, labels) cut into the five
    data_batch files, `test` as test_batch, class `names` in batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    pixels, labels = train
    parts = np.array_split(np.arange(len(labels)), len(CIFAR_BATCHES))
    files = zip(CIFAR_BATCHES, parts, strict=True)
    batches = [(name, pixels[p], [labels[i] for i in p]) for name, p in files]
    for name, x, y in [*batches, ("test_batch", test[0], list(test[1]))]:
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in y]}
        write_pickle(folder / name, batch | {b"data": x.reshape(len(x), 3072)})
    meta = {b"label_names": [n.encode() for n in names], b"num_vis": 3072}
    write_pickle(folder / "batches.meta", meta)


def write_png_folder(path: Path, n_images: int, size: int, classes: int, seed: int = 0) -> Path:
    """`n_images` smooth random colour PNGs of size² in `classes` folders (c0, c1, …); a class
    differs by its mean brightness, so a net can learn it."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (path / f"c{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        c = i % classes
        coarse = rng.integers(0, 256, (8, 8, 3)) * 0.5 + 128 * c / max(1, classes - 1) * 0.5
        image = cv2.resize(coarse.astype(np.uint8), (size, size), interpolation=cv2.INTER_LINEAR)
        cv2.imwrite(str(path / f"c{c}" / f"{i}.png"), image)
    return path
