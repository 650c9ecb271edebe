"""data=image_folder: a folder of image files decoded and resized once into a uint8 cache file.

The cache (`data.cache_dir`/<digest of the folder, size and channels>/: images.u8, rows of
C×S×S bytes, and meta.json)
is reused by every later run while the folder's files are unchanged (same names, sizes and
modification times); any change decodes the folder again. Decoding runs in `data.num_workers`
loader processes with torchvision.io (PNG, JPEG, GIF, WebP; PIL for the other formats), resized
with torchvision's antialiased bilinear resize. The rows are then loaded into memory, or read
from the file batch by batch (`data.in_memory`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from cnnexp.config import ConfigError
from cnnexp.data.images import RowFile

log = logging.getLogger(__name__)
CACHE_FORMAT = 1  # bump when the bytes a file decodes to change
DECODED_BY_TORCHVISION = {".png", ".jpg", ".jpeg", ".gif", ".webp"}
DECODE_BATCH = 256


def read_image(file: str | Path, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """One image file as uint8 C×H×W at `size` (H, W); OSError or RuntimeError if unreadable."""
    file = Path(file)
    if file.suffix.lower() in DECODED_BY_TORCHVISION:
        mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
        image = decode_image(str(file), mode=mode)
    else:
        with Image.open(file) as img:
            pixels = np.asarray(img.convert("L" if channels == 1 else "RGB"))
        image = torch.from_numpy(pixels.reshape(*pixels.shape[:2], channels)).permute(2, 0, 1)
    if tuple(image.shape[1:]) != tuple(size):
        image = TF.resize(image, list(size), antialias=True)
    return image.contiguous()


@dataclass(frozen=True)
class Listing:
    files: list[Path]
    targets: list[int]  # index into classes
    classes: list[str]  # subfolders that hold images, sorted

    def fingerprint(self, image_size: int, channels: int) -> str:
        digest = hashlib.sha256(f"{CACHE_FORMAT} {image_size} {channels}".encode())
        for file, target in zip(self.files, self.targets, strict=True):
            stat = file.stat()
            digest.update(f"\n{file} {target} {stat.st_size} {stat.st_mtime_ns}".encode())
        return digest.hexdigest()


def list_folder(path: str) -> Listing:
    """The image files under `path/<class>/` and their classes (subfolders without images are
    not classes)."""
    folder = datasets.ImageFolder(path, allow_empty=True)
    classes = [folder.classes[i] for i in sorted(set(folder.targets))]
    targets = [classes.index(folder.classes[t]) for t in folder.targets]
    return Listing([Path(file) for file, _ in folder.samples], targets, classes)


class _Decoded(Dataset):
    """File i decoded (uint8 C×S×S), or the reason it could not be, as text."""

    def __init__(self, files: list[Path], channels: int, image_size: int) -> None:
        self.files, self.channels, self.size = files, channels, (image_size, image_size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor | str:
        image = decode(self.files[i], self.channels, self.size)
        return f"{self.files[i]}: {image}" if isinstance(image, str) else image


def decode(file: Path, channels: int, size: tuple[int, int]) -> torch.Tensor | str:
    """`read_image`, or why the file cannot be read (a short text)."""
    try:
        return read_image(file, channels, size)
    except OSError as err:  # PIL's UnidentifiedImageError is one
        return str(err)
    except RuntimeError:  # torchvision's decoders: a long message naming their C++ source
        return f"not a readable {Path(file).suffix} image"


def decode_into(
    target: Path, listing: Listing, channels: int, image_size: int, workers: int, folder: str
) -> None:
    """Decode every file of `listing`, in order, into the row file `target`."""
    decoded = _Decoded(listing.files, channels, image_size)
    loader = DataLoader(decoded, DECODE_BATCH, num_workers=workers, collate_fn=list)
    with target.open("wb") as out:
        for batch in loader:
            for image in batch:
                if isinstance(image, str):
                    raise ConfigError(f"data.path: cannot read an image under {folder} ({image})")
                out.write(image.numpy().tobytes())


def cached_rows(
    path: str, image_size: int, channels: int, cache_dir: str, num_workers: int
) -> tuple[RowFile, torch.Tensor, list[str]]:
    """(the folder's images as a RowFile in the cache, labels, class names); decodes the folder
    only when the cache does not match its files."""
    listing = list_folder(path)
    shape = (channels, image_size, image_size)
    key = f"{Path(path).resolve()} {image_size} {channels}"  # each size has its own cache
    where = Path(cache_dir) / hashlib.sha256(key.encode()).hexdigest()[:16]
    where.mkdir(parents=True, exist_ok=True)
    rows = RowFile(where / "images.u8", len(listing.files), shape)
    meta_file = where / "meta.json"
    fingerprint = listing.fingerprint(image_size, channels)
    with (where / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel jobs of a sweep decode once
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        if meta.get("fingerprint") == fingerprint:
            log.info("data image_folder: cache %s matches the folder; nothing decoded", where)
        else:
            start = time.perf_counter()
            meta_file.unlink(missing_ok=True)  # a cache being rewritten is never valid
            partial = where / "images.u8.partial"
            decode_into(partial, listing, channels, image_size, num_workers, path)
            os.replace(partial, rows.path)
            meta = {"fingerprint": fingerprint, "classes": listing.classes}
            meta_file.write_text(json.dumps(meta | {"folder": str(path), "shape": shape}))
            log.info(
                "data image_folder: decoded %d images into cache %s in %.1f s",
                rows.n,
                where,
                time.perf_counter() - start,
            )
    return rows, torch.tensor(listing.targets, dtype=torch.int64), listing.classes
