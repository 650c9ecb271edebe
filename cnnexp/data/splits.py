"""From a loaded data set to train/val/test splits: seeded, stratified, with the per-channel
mean/std the batches are normalised with (the pixels stay uint8; see cnnexp/data/images.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from cnnexp.data.images import Images, channel_stats, images
from cnnexp.data.sources import Raw
from cnnexp.errors import ConfigError

Split = tuple[Images, torch.Tensor]  # (x uint8 N×C×H×W rows, y int64 N)


@dataclass(frozen=True)
class Splits:
    name: str
    train: Split
    val: Split
    test: Split
    class_names: list[str]
    mean: tuple[float, ...]  # per channel, on the 0..1 scale; (0, …) and (1, …) when not normalised
    std: tuple[float, ...]


def held_out(y: np.ndarray, n: int, seed: int, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (kept, held-out) positions of y with n held out; ConfigError names `key`."""
    try:
        return train_test_split(np.arange(len(y)), test_size=n, stratify=y, random_state=seed)
    except ValueError as err:
        raise ConfigError(f"data.{key}: cannot hold out {n} of {len(y)} images ({err})") from None


def stratified_subset(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted positions of n labels in y's class proportions; a smaller n gives a subset."""
    rng = np.random.default_rng(seed)
    rank = np.empty(len(y))
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        rank[members] = (np.arange(len(members)) + 0.5) / len(members)
    order = np.lexsort((rng.random(len(y)), rank))  # random among equal ranks
    return np.sort(order[:n])


def split_indices(
    y: np.ndarray, val_fraction: float, test_fraction: float | None, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified train/val/test positions; fractions are of len(y). No test when None."""
    n = len(y)
    rest, test = np.arange(n), np.arange(0)
    if test_fraction is not None:
        rest, test = held_out(y, round(test_fraction * n), seed, "test_fraction")
    keep, val = held_out(y[rest], round(val_fraction * n), seed, "val_fraction")
    return rest[keep], rest[val], test


def shrink(y: np.ndarray, train_size: int | float | None, seed: int) -> np.ndarray:
    """Positions of the training images to keep for `data.train_size`."""
    if train_size is None:
        return np.arange(len(y))
    n = train_size if isinstance(train_size, int) else max(1, round(train_size * len(y)))
    if n > len(y):
        raise ConfigError(
            f"data.train_size: {n} is more than the {len(y)} training images "
            f"(allowed: 1..{len(y)} or a fraction in (0, 1])"
        )
    return stratified_subset(y, n, seed)


def make_splits(raw: Raw, cfg: Any) -> Splits:
    """Split `raw` per the (checked, resolved) data config; mean/std from the training images.
    The splits are rows of raw's images: no pixel is copied."""
    seed = cfg.split_seed
    train, val, test = split_indices(raw.y.numpy(), cfg.val_fraction, cfg.test_fraction, seed)
    train = train[shrink(raw.y[train].numpy(), cfg.train_size, seed)]
    x = images(raw.x)
    test_x, test_y = raw.test if raw.test is not None else (x.subset(test), raw.y[test])
    mean, std = normalisation(x.subset(train), cfg.normalize)
    return Splits(
        cfg.name,
        (x.subset(train), raw.y[train]),
        (x.subset(val), raw.y[val]),
        (images(test_x), test_y),
        raw.class_names,
        tuple(mean.tolist()),
        tuple(std.tolist()),
    )


def normalisation(x: Images, normalize: str | dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, std) for `data.normalize`: auto (of x), none or declared values."""
    channels = x.shape[1]
    if normalize == "auto":
        mean, std = channel_stats(x)
        return mean, std.clamp_min(1e-6)
    if normalize == "none":
        return torch.zeros(channels), torch.ones(channels)
    if len(normalize["mean"]) != channels:
        raise ConfigError(
            f"data.normalize.mean: {normalize['mean']} has {len(normalize['mean'])} values "
            f"(allowed: {channels}, one per channel)"
        )
    mean, std = (torch.tensor(normalize[key], dtype=torch.float32) for key in ("mean", "std"))
    return mean, std
