"""How much memory training a net takes, estimated before any weight is allocated.

The net is built on PyTorch's meta device (shapes only, no storage; cnnexp/validate.py) and one
image is passed through it there, so a net of a billion channels is measured in milliseconds
instead of failing with a 40 GB allocation. The estimate is a floor, in float32: each parameter
with its gradient and two Adam moments (16 bytes), and each module's output kept for the
backward pass with its gradient (8 bytes per value and image).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

BYTES_PER_PARAMETER = 16  # weight, gradient, Adam's two moments (float32)
BYTES_PER_ACTIVATION = 8  # a module output kept for backward, and its gradient (float32)


@dataclass(frozen=True)
class Footprint:
    params: int
    activations: int  # values of every leaf module's output, for one image

    def training_bytes(self, batch_size: int) -> int:
        weights = self.params * BYTES_PER_PARAMETER
        return weights + self.activations * BYTES_PER_ACTIVATION * batch_size

    def largest_batch(self, available: int) -> int:
        """The most images per batch whose training fits in `available` bytes (0: none)."""
        room = available - self.params * BYTES_PER_PARAMETER
        return max(0, room // max(1, self.activations * BYTES_PER_ACTIVATION))


def meta_net(model: Any, input_shape: tuple[int, int, int], classes: int) -> nn.Module:
    """The net the typed `model` section describes, on the meta device: shapes and
    parameters, no storage."""
    from cnnexp import models

    with torch.device("meta"):
        return models.build(model, input_shape, classes)


def footprint(net: nn.Module, input_shape: tuple[int, int, int]) -> Footprint:
    """The Footprint of `net`, built on the meta device (torch.device("meta")), from one pass
    of an image there."""
    sizes: list[int] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: sizes.append(_numel(out)))
        for m in net.modules()
        if not list(m.children())
    ]
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, *input_shape, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return Footprint(sum(p.numel() for p in net.parameters()), sum(sizes))


def _numel(out: object) -> int:
    if isinstance(out, torch.Tensor):
        return out.numel()
    if isinstance(out, tuple | list):
        return sum(_numel(o) for o in out)
    return 0
