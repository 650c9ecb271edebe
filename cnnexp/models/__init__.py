"""Models: a typed `model` section becomes an nn.Module (a block graph from conf/model/ or a
torchvision classifier); Classifier trains it."""

from __future__ import annotations

from typing import Any

from torch import nn

from cnnexp.models.classifier import Classifier
from cnnexp.models.kinds import kind

__all__ = ["Classifier", "build", "kind"]


def build(model: Any, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The net the typed, checked `model` section describes for `input_shape` (C, H, W)."""
    return kind(model).build(model, input_shape, num_classes)
