"""From a loaded data set to normalised train/val/test tensors: seeded, stratified splits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from cnnexp.config import ConfigError
from cnnexp.data.sources import Raw

Split = tuple[torch.Tensor, torch.Tensor]  # (x float32 N×C×H×W, y int64 N)


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


def make_splits(raw: Raw, cfg: dict[str, Any]) -> Splits:
    """Split `raw` per the (checked, resolved) data config and normalise with train statistics."""
    seed = cfg["split_seed"]
    train, val, test = split_indices(raw.y.numpy(), cfg["val_fraction"], cfg["test_fraction"], seed)
    train = train[shrink(raw.y[train].numpy(), cfg["train_size"], seed)]
    test_x, test_y = raw.test if raw.test is not None else (raw.x[test], raw.y[test])
    x = {"train": to_float(raw.x[train]), "val": to_float(raw.x[val]), "test": to_float(test_x)}
    mean, std = channel_stats(x["train"], cfg["normalize"])
    for images in x.values():
        images.sub_(mean[:, None, None]).div_(std[:, None, None])
    return Splits(
        cfg["name"],
        (x["train"], raw.y[train]),
        (x["val"], raw.y[val]),
        (x["test"], test_y),
        raw.class_names,
        tuple(mean.tolist()),
        tuple(std.tolist()),
    )


def to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255)


def channel_stats(x: torch.Tensor, normalize: str | dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, std) for `data.normalize`: auto, none or declared values."""
    channels = x.shape[1]
    if normalize == "auto":
        return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)).clamp_min(1e-6)
    if normalize == "none":
        return torch.zeros(channels), torch.ones(channels)
    if len(normalize["mean"]) != channels:
        raise ConfigError(
            f"data.normalize.mean: {normalize['mean']} has {len(normalize['mean'])} values "
            f"(allowed: {channels}, one per channel)"
        )
    mean, std = (torch.tensor(normalize[key], dtype=torch.float32) for key in ("mean", "std"))
    return mean, std
