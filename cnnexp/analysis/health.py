"""Activation health of conv blocks: dead ReLU units, saturated sigmoid/tanh, mean and spread.

A conv block is each `convN` (conv, bn, act) of a cnnexp net, wherever it sits in the graph (inside
residual, parallel or repeated blocks too); its output is taken after the activation, so the
numbers describe what the next layer actually receives. In any other net (a torchvision reference)
each Conv2d is a block, named by its qualified name.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnexp.models.modules import eval_mode

RELU_FAMILY = (nn.ReLU, nn.ReLU6)  # exact zeros: a unit can die
SATURATING = (nn.Sigmoid, nn.Tanh)
EPS = 0.01  # "saturated" = within EPS of the activation's bounds


def conv_blocks(net: nn.Module) -> dict[str, nn.Module]:
    """{"conv1": block, ...}: the conv blocks of `net` in definition (= forward) order."""
    from cnnexp.models.blocks import ConvBlock

    found = {name.rpartition(".")[2]: m for name, m in net.named_modules() if type(m) is ConvBlock}
    if found:
        return found
    return {name: m for name, m in net.named_modules() if isinstance(m, nn.Conv2d)}


def block_activation(block: nn.Module) -> nn.Module | None:
    return getattr(block, "act", None)


def block_outputs(net: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each conv block's output for `x` (eval mode, no grad), keyed like `conv_blocks`."""
    outputs: dict[str, torch.Tensor] = {}
    blocks = conv_blocks(net)
    handles = [
        block.register_forward_hook(
            lambda _m, _i, out, name=name: outputs.__setitem__(name, out.detach())
        )
        for name, block in blocks.items()
    ]
    try:
        with eval_mode(net), torch.no_grad():
            net(x)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def activation_health(acts: torch.Tensor, activation: nn.Module | None) -> dict[str, float]:
    """mean, std, and dead_fraction (ReLU) or saturation (sigmoid/tanh) of an N×C×H×W batch.

    dead_fraction: share of units (channel × position) that are zero for every sample.
    saturation: share of activations within EPS of the bounds (sigmoid: 0 and 1; tanh: ±1).
    """
    acts = acts.float()
    stats = {"mean": acts.mean().item(), "std": acts.std().item()}
    if isinstance(activation, RELU_FAMILY):
        stats["dead_fraction"] = (acts == 0).all(dim=0).float().mean().item()
    elif isinstance(activation, nn.Sigmoid):
        stats["saturation"] = ((acts < EPS) | (acts > 1 - EPS)).float().mean().item()
    elif isinstance(activation, nn.Tanh):
        stats["saturation"] = (acts.abs() > 1 - EPS).float().mean().item()
    return stats


def network_health(net: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """{"health/conv1/mean": ..., ...} for every conv block of `net` on the batch `x`."""
    blocks = conv_blocks(net)
    return {
        f"health/{name}/{key}": value
        for name, acts in block_outputs(net, x).items()
        for key, value in activation_health(acts, block_activation(blocks[name])).items()
    }


def grad_norms(net: nn.Module) -> dict[str, float]:
    """{"health/conv1/grad_norm": ...}: L2 norm of each conv block's parameter gradients."""
    norms = {}
    for name, block in conv_blocks(net).items():
        grads = [p.grad.detach().flatten() for p in block.parameters() if p.grad is not None]
        if grads:
            norms[f"health/{name}/grad_norm"] = torch.cat(grads).norm().item()
    return norms
