"""data=image_folder: a folder of image files decoded and resized once into a uint8 cache file.

The cache (`data.cache_dir`/<digest of the folder, size and channels>/: images.u8, rows of
C×S×S bytes, and meta.json) is reused by every later run while the folder's files are unchanged
(same names, sizes and modification times) and the cache is whole (meta.json parses and names
those files, images.u8 holds exactly rows × C×S×S bytes); otherwise the folder is decoded again.
Decoding runs in `data.num_workers` loader processes. The rows are then loaded into memory, or
read from the file batch by batch (`data.in_memory`).

How a file becomes uint8 C×S×S, the same for the cache and for task=predict (`decode`): PIL
reads every format (one decoder, so a file's pixels never depend on which library its format
went to; the first frame of an animation; EXIF orientation is not applied), then one rule:
- 16-bit samples keep their high byte (v >> 8: torchvision's to_dtype(scale=True) rule, and how
  PIL itself reads 16-bit colour PNGs); 1-bit pixels are 0 or 255; 32-bit integer grey (PIL mode
  I) is taken as 16-bit and refused outside 0..65535; float pixels (mode F) are refused, as no
  scale to 8 bits is defined for them.
- a palette is expanded to its colours; alpha (a channel, or a palette's transparency) is
  dropped, not composited: a transparent pixel keeps the colour stored under it.
- other colour modes (CMYK, YCbCr, LAB, HSV) become RGB by PIL's conversion.
- colour to grey (channels=1): ITU-R 601-2 luma, L = (19595 R + 38470 G + 7471 B + 2^15) >> 16,
  i.e. 0.299 R + 0.587 G + 0.114 B rounded (PIL's convert("L")); grey to colour (channels=3): the
  grey repeated in R, G and B.
- resized to S×S with torchvision's antialiased bilinear resize of the uint8 pixels, when the
  file's size differs.
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
from torchvision.transforms.v2 import functional as TF

from cnnexp.data.images import RowFile
from cnnexp.errors import ConfigError
from cnnexp.paths import write_whole

log = logging.getLogger(__name__)
CACHE_FORMAT = 2  # bump when the bytes a file decodes to change (2: PIL and the one rule)
EIGHT_BIT = {"1", "L", "LA", "RGB"}  # PIL's own convert to L or RGB is the rule for these
WIDE_GREY = {"I;16", "I;16B", "I;16L", "I;16N", "I"}  # PIL's modes for 16-bit grey files
# What PIL raises on a file it cannot decode (found by truncating and corrupting files of every
# format); UnidentifiedImageError is an OSError, DecompressionBombError is not.
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
DECODE_BATCH = 256


def read_image(file: str | Path, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """One image file as uint8 C×H×W at `size` (H, W), by the module's rule; an UNREADABLE error
    if it cannot be."""
    with Image.open(file) as img:
        pixels = eight_bit(img, channels)
    image = torch.from_numpy(pixels).permute(2, 0, 1)
    if tuple(image.shape[1:]) != tuple(size):
        image = TF.resize(image, list(size), antialias=True)
    return image.contiguous()


def eight_bit(img: Image.Image, channels: int) -> np.ndarray:
    """A PIL image as uint8 H×W×`channels` (the module's rule)."""
    if img.mode in WIDE_GREY:
        img = Image.fromarray(high_byte(np.asarray(img)))
    elif img.mode == "F":
        raise ValueError("32-bit float pixels, which have no defined scale to 8 bits")
    elif img.mode not in EIGHT_BIT:
        img.info.pop("transparency", None)  # dropped with alpha (PIL warns if it is kept)
        img = img.convert("RGB")
    img = img.convert("L" if channels == 1 else "RGB")
    return np.array(img).reshape(img.height, img.width, channels)  # a copy torch may write to


def high_byte(samples: np.ndarray) -> np.ndarray:
    """16-bit grey samples as 8 bits: v >> 8. Mode I holds int32, so its range is checked."""
    low, high = int(samples.min()), int(samples.max())
    if low < 0 or high > 0xFFFF:
        raise ValueError(f"32-bit integer pixels {low}..{high}, outside the 16-bit 0..65535")
    return (samples >> 8).astype(np.uint8)


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
    """`read_image`, or why the file cannot be read (a short text, one line)."""
    try:
        return read_image(file, channels, size)
    except UNREADABLE as err:
        return (str(err).splitlines() or [type(err).__name__])[0]


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
    only when the cache does not match its files or is not whole."""
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
        why = cache_problem(rows, meta_file, fingerprint)
        if why is None:
            log.info("data image_folder: cache %s matches the folder; nothing decoded", where)
        else:
            start = time.perf_counter()
            meta_file.unlink(missing_ok=True)  # a cache being rewritten is never valid
            partial = where / "images.u8.partial"
            decode_into(partial, listing, channels, image_size, num_workers, path)
            os.replace(partial, rows.path)
            meta = {"fingerprint": fingerprint, "classes": listing.classes}
            write_whole(meta_file, json.dumps(meta | {"folder": str(path), "shape": shape}))
            log.info(
                "data image_folder: decoded %d images into cache %s in %.1f s (%s)",
                rows.n,
                where,
                time.perf_counter() - start,
                why,
            )
    return rows, torch.tensor(listing.targets, dtype=torch.int64), listing.classes


def cache_problem(rows: RowFile, meta_file: Path, fingerprint: str) -> str | None:
    """Why the cache cannot be used (None: it can): no meta.json, one that does not parse or was
    written for other files or another CACHE_FORMAT, or an images.u8 of the wrong size."""
    if not meta_file.exists():
        return "no finished cache yet"
    try:
        meta = json.loads(meta_file.read_text())
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError: a damaged file
        return f"its meta.json does not parse: {err}"
    if not isinstance(meta, dict) or meta.get("fingerprint") != fingerprint:
        return "it was made from other files or by another cache format"
    return rows.size_problem()
