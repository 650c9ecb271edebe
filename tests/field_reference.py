"""A receptive field as the gradient shows it: the input pixels that move one unit of a layer."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

Span = tuple[int, int]


class _Reached(Exception):
    """Raised once the layer's output is kept: the rest of the net is skipped."""


def gradient_spans(
    net: nn.Module,
    layer: str,
    x: torch.Tensor,
    unit_of: Callable[[torch.Tensor, int], torch.Tensor],
) -> list[tuple[Span, Span]]:
    """For each image b of the batch `x`: the first and last input row, and column, that
    unit_of(output of `layer`, b) depends on (a non-zero gradient). `layer` is a qualified module
    name ("" for the whole net); `net` must be in eval mode, so that batch items do not mix."""
    outputs = []

    def keep(_module: nn.Module, _inputs: tuple, output: object) -> None:
        outputs.append(output[0] if isinstance(output, tuple) else output)  # MultiheadAttention
        raise _Reached

    handle = net.get_submodule(layer).register_forward_hook(keep)
    x = x.clone().requires_grad_()
    try:
        net(x)
    except _Reached:
        pass
    finally:
        handle.remove()
    out = outputs[0]
    # Random weights per channel: a plain sum over a LayerNorm's channels is a constant, whose
    # gradient is zero although every pixel of the token moves the channels.
    weights = torch.rand(out.shape[1:], generator=torch.Generator().manual_seed(0))
    weighted = out * weights.to(out.dtype)
    (grad,) = torch.autograd.grad(sum(unit_of(weighted, b).sum() for b in range(len(x))), x)
    spans = []
    for moved in grad.abs().sum(1):  # over input channels: B×H×W
        # Relative, not > 0: Swin's shifted windows mask other windows with -100 before the
        # softmax, which leaves weights of e^-100 ≈ 4e-44 (even in float32), not 0.
        seen = moved > moved.max() * 1e-12
        rows, cols = seen.any(1).nonzero().flatten(), seen.any(0).nonzero().flatten()
        spans.append(((int(rows[0]), int(rows[-1])), (int(cols[0]), int(cols[-1]))))
    return spans
