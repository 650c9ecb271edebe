"""`data.augment`: torchvision.transforms.v2 transforms applied to each training image on its own.

A training batch is transformed while it is still uint8 (the pixels torchvision's transforms
expect), image by image (a v2 transform given a batch draws one set of random parameters for all
of it), on the batch's device, before it is normalised. Randomness comes from torch's global RNG,
which `seed_everything` seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from hydra.utils import instantiate
from torchvision.transforms import v2


def make_transform(spec: dict[str, Any]) -> v2.Transform:
    """One `data.augment` entry ({_target_: ..., its arguments}) built; lists stay lists.
    Called through a partial, so a bad argument raises the transform's own error."""
    return instantiate(spec, _partial_=True, _convert_="all")()


class PerImage:
    """Applies `transform` to each image of a batch with its own random draw."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.transform(image) for image in x])


def per_image(specs: list[dict[str, Any]]) -> PerImage | None:
    """The PerImage augmentation of `data.augment` (None when the list is empty)."""
    if not specs:
        return None
    return PerImage(v2.Compose([make_transform(s) for s in specs]))
