"""Model facts logged with every run: parameter count and FLOPs per image."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnexp.analysis.receptive_field import eval_mode, module_device


def n_params(net: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def flop_counts(net: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, int]:
    """Forward FLOPs for one image per module name ("Global" = total), torch's FlopCounterMode
    convention: 2 FLOPs per multiply-accumulate of convolutions and matmuls; activations,
    pooling, normalisation and additions count 0."""
    counter = FlopCounterMode(display=False)
    with eval_mode(net), torch.no_grad(), counter:
        net(torch.zeros(1, *input_shape, device=module_device(net)))
    return {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}


def flops_per_image(net: nn.Module, input_shape: tuple[int, int, int]) -> int:
    return flop_counts(net, input_shape).get("Global", 0)
