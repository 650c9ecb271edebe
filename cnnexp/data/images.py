"""uint8 images N×C×H×W, held in memory or read from a cache file, and the one normalisation.

`Images` is what a split holds: rows `positions` of a base (a uint8 tensor, on the CPU or the
GPU, or a `RowFile` on disk), so splitting copies no pixel. Indexing it returns a uint8 tensor.
`Normalise` turns such a batch into the net's input (float, mean/std per channel on the 0..1
scale) on the batch's own device: the pixels stay 1 byte each until a batch is used.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

STATS_CHUNK_BYTES = 16 << 20  # pixels read per step when computing channel statistics


@dataclass(frozen=True)
class RowFile:
    """A file of N uint8 images of `shape` (C, H, W), one after the other; rows are read with
    os.pread, so reading one leaves the process's memory as it was (the OS caches the file)."""

    path: Path
    n: int
    shape: tuple[int, int, int]

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape))

    def size_problem(self) -> str | None:
        """Why the file cannot hold exactly these rows (None: its size says it does)."""
        if not self.path.exists():
            return f"{self.path.name} is missing"
        return self._wrong_size(self.path.stat().st_size)

    def _wrong_size(self, size: int) -> str | None:
        """None if `size` bytes are n rows of `shape`; any other size would read rows shifted."""
        if size == self.n * self.row_bytes:
            return None
        return f"{self.path.name} holds {size} bytes, not {self.n} rows of {self.row_bytes}"

    def read(self, rows: np.ndarray) -> torch.Tensor:
        size = self.row_bytes
        out = np.empty((len(rows), size), np.uint8)
        if not len(rows):
            return torch.from_numpy(out).view(0, *self.shape)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            if problem := self._wrong_size(os.fstat(fd).st_size):  # cut or replaced since
                raise OSError(f"{self.path.parent}: {problem}")
            start = 0
            for run in _runs(rows):  # consecutive rows: one read
                count = len(run)
                view = memoryview(out[start : start + count]).cast("B")
                if os.preadv(fd, [view], int(run[0]) * size) != count * size:
                    raise OSError(f"{self.path}: shorter than its {self.n} images")
                start += count
        finally:
            os.close(fd)
        return torch.from_numpy(out).view(len(rows), *self.shape)

    def load(self) -> torch.Tensor:
        """The whole file in memory."""
        pixels = np.fromfile(self.path, np.uint8)
        if problem := self._wrong_size(len(pixels)):
            raise OSError(f"{self.path.parent}: {problem}")
        return torch.from_numpy(pixels).view(self.n, *self.shape)


def _runs(rows: np.ndarray) -> list[np.ndarray]:
    """`rows` cut where they stop being consecutive (row i + 1 after row i)."""
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    return np.split(rows, breaks)


class Images:
    """Rows `positions` (all when None) of a uint8 base: a tensor or a RowFile."""

    def __init__(self, base: torch.Tensor | RowFile, positions: np.ndarray | None = None) -> None:
        self.base = base
        n = base.n if isinstance(base, RowFile) else len(base)
        self.positions = np.arange(n) if positions is None else np.asarray(positions)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.base, torch.Tensor)

    @property
    def shape(self) -> tuple[int, ...]:
        chw = self.base.shape if isinstance(self.base, RowFile) else tuple(self.base.shape[1:])
        return (len(self.positions), *chw)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int | slice | Sequence[int] | np.ndarray) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        rows = self.positions[index]
        single, rows = np.ndim(rows) == 0, np.atleast_1d(rows)
        if isinstance(self.base, RowFile):
            out = self.base.read(rows)
        else:
            out = self.base[row_index(rows, self.base.device)]
        return out[0] if single else out

    def subset(self, positions: np.ndarray) -> Images:
        """Rows `positions` of these images (no pixel copied)."""
        return Images(self.base, self.positions[positions])

    def chunks(self, max_bytes: int = STATS_CHUNK_BYTES) -> Iterator[torch.Tensor]:
        """The images in order, as uint8 tensors of at most `max_bytes` each."""
        step = max(1, max_bytes // max(1, int(np.prod(self.shape[1:]))))
        for start in range(0, len(self), step):
            yield self[slice(start, start + step)]


def row_index(rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """Positions as an index tensor on `device`; pinned on the way to a GPU, so the upload never
    waits for the GPU (no host sync per batch)."""
    index = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))
    return index.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else index


def images(x: torch.Tensor | Images) -> Images:
    return x if isinstance(x, Images) else Images(x)


class Normalise:
    """Images → float32 net input on their own device: on the 0..1 scale (uint8 0..255; floats
    are taken as 0..1, torchvision's rule), then (x - mean) / std per channel, as one
    multiply-add per pixel after the conversion: x·scale + shift. The per-channel factors are
    copied to each device once, so a batch on a GPU never waits for a host copy."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        m, s = (torch.tensor(v, dtype=torch.float64) for v in (mean, std))
        self.factors = {
            full: ((1 / (full * s)).float()[:, None, None], (-m / s).float()[:, None, None])
            for full in (255.0, 1.0)
        }
        self.on_device: dict[tuple[torch.device, float], tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        full = 255.0 if x.dtype == torch.uint8 else 1.0
        key = (x.device, full)
        if key not in self.on_device:
            self.on_device[key] = tuple(f.to(x.device) for f in self.factors[full])
        scale, shift = self.on_device[key]
        scaled = x.float() if x.dtype != torch.float32 else x.clone()
        return torch.addcmul(shift, scaled, scale, out=scaled)


def normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """`Normalise(mean, std)(x)` for one batch."""
    return Normalise(mean, std)(x)


def channel_stats(x: Images) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (unbiased) std of uint8 images on the 0..1 scale, read in chunks so
    no float copy of the whole set is ever made."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for chunk in x.chunks():
        pixels = chunk.cpu().double()
        total += pixels.sum(dim=(0, 2, 3))
        squares += pixels.square().sum(dim=(0, 2, 3))
    n = len(x) * x.shape[2] * x.shape[3]
    mean = total / n
    var = (squares - n * mean.square()) / max(1, n - 1)
    return (mean / 255).float(), (var.clamp_min(0).sqrt() / 255).float()
