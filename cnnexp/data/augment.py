"""`data.augment`: torchvision.transforms.v2 transforms applied to each training image on its own.

The images in memory are normalised floats; colour transforms and RandAugment want the 0..1
scale, so a batch is un-normalised, transformed image by image (a v2 transform given a batch
draws one set of random parameters for all of it) and normalised again, on the batch's device.
Randomness comes from torch's global RNG, which `seed_everything` seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from hydra.utils import get_object, instantiate
from torchvision.transforms import v2

from cnnexp.config import ConfigError


def transform_class(target: Any, where: str) -> type[v2.Transform]:
    """The class `target` names; ConfigError unless it is a torchvision.transforms.v2 transform."""
    try:
        cls = get_object(str(target))
    except Exception:  # hydra raises several types for a bad dotted path
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, v2.Transform)):
        raise ConfigError(
            f"{where}: {target!r} is not allowed (allowed: a transform class of "
            "torchvision.transforms.v2, e.g. torchvision.transforms.v2.RandomCrop, "
            "RandomHorizontalFlip, ColorJitter, RandAugment, RandomAffine)"
        )
    return cls


def make_transform(spec: dict[str, Any]) -> v2.Transform:
    """One `data.augment` entry ({_target_: ..., its arguments}) built; lists stay lists.
    Called through a partial, so a bad argument raises the transform's own error."""
    return instantiate(spec, _partial_=True, _convert_="all")()


class PerImage:
    """Applies `transform` to each image of a normalised batch (mean/std per channel, on the 0..1
    scale) with its own random draw, in the 0..1 scale, and returns the batch normalised again."""

    def __init__(self, transform: Callable, mean: Sequence[float], std: Sequence[float]) -> None:
        self.transform, self.mean, self.std = transform, mean, std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = (
            torch.tensor(v, dtype=x.dtype, device=x.device)[:, None, None]
            for v in (self.mean, self.std)
        )
        images = (x * std + mean).clamp_(0, 1)
        return (torch.stack([self.transform(image) for image in images]) - mean) / std


def per_image(
    specs: list[dict[str, Any]], mean: Sequence[float], std: Sequence[float]
) -> PerImage | None:
    """The PerImage augmentation of `data.augment` (None when the list is empty)."""
    if not specs:
        return None
    return PerImage(v2.Compose([make_transform(s) for s in specs]), mean, std)
