"""Effective receptive fields (Luo, Li, Urtasun & Zemel, NeurIPS 2016).

The theoretical field says which input pixels a unit *can* see; the effective field says how much
each one actually moves it: |∂ centre unit / ∂ input|, averaged over random inputs. In deep nets
it is Gaussian-like and much smaller than the theoretical field.
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import nn

from cnnexp.analysis.images import card_figure
from cnnexp.models.modules import eval_mode, module_device


def effective_receptive_field(
    module: nn.Module,
    input_shape: tuple[int, int, int],
    n_samples: int = 32,
    layer: str | None = None,
    seed: int = 0,
    batch_size: int = 16,
) -> np.ndarray:
    """H×W map, non-negative and summing to 1, of how much each input pixel moves the centre unit.

    The centre unit is the middle position of `layer`'s output (a qualified module name, "" for
    the whole module; default: `last_spatial_layer`), summed over its channels. Its gradient is
    taken with respect to `n_samples` standard-normal inputs (seeded by `seed`) in eval mode, so
    batch items stay independent; |gradient| is summed over input channels, averaged over the
    samples and normalised. Only the input gets a gradient: parameters' `.grad` stay untouched.
    Safe to call under no_grad or inference_mode (e.g. from a Lightning callback).
    For a module called more than once, its last call's output is used.
    """
    name = layer if layer is not None else last_spatial_layer(module, input_shape)
    target, device = _submodule(module, name), module_device(module)
    generator = torch.Generator().manual_seed(seed)
    with eval_mode(module), torch.inference_mode(False), torch.enable_grad():  # as in callbacks
        total = torch.zeros(input_shape[1:], dtype=torch.float64)
        for start in range(0, n_samples, batch_size):
            x = torch.randn(min(batch_size, n_samples - start), *input_shape, generator=generator)
            x = x.to(device).requires_grad_()
            out = _output_of(module, target, x)
            centre = out[:, :, out.shape[-2] // 2, out.shape[-1] // 2]
            (grad,) = torch.autograd.grad(centre.sum(), x)  # sum over batch: items independent
            total += grad.abs().sum(dim=(0, 1)).double().cpu()
    if total.sum() == 0:
        raise ValueError(f"the centre unit of {name!r} does not depend on the input (all zero)")
    return (total / total.sum()).numpy()


def last_spatial_layer(module: nn.Module, input_shape: tuple[int, int, int]) -> str:
    """Qualified name of the last module, in call order, whose output is a map larger than 1×1."""
    called: list[str] = []

    def record(name: str):
        def hook(_module: nn.Module, _inputs: tuple, output: object) -> None:
            if _is_map(output) and output.shape[-2] * output.shape[-1] > 1:
                called.append(name)

        return hook

    handles = [m.register_forward_hook(record(name)) for name, m in module.named_modules()]
    try:
        with eval_mode(module), torch.no_grad():
            module(torch.zeros(1, *input_shape, device=module_device(module)))
    finally:
        for handle in handles:
            handle.remove()
    if not called:
        raise ValueError(f"{type(module).__name__} has no layer with a spatial output")
    return called[-1]


def erf_size(erf: np.ndarray, mass: float = 0.95) -> int:
    """Side of the smallest square holding at least `mass` of the ERF.

    The square is centred on the ERF's centre of mass, rounded to a pixel (where the centre unit
    sits in the input for symmetric nets) and clipped at the borders, so the side is odd.
    """
    cy, cx = _centre_of_mass(erf)
    needed = mass * erf.sum() * (1 - 1e-9)  # tolerate float rounding at mass=1
    for half in range(max(erf.shape)):
        if (
            erf[max(cy - half, 0) : cy + half + 1, max(cx - half, 0) : cx + half + 1].sum()
            >= needed
        ):
            return 2 * half + 1
    raise ValueError(f"mass must be at most 1, got {mass}")


def erf_figure(
    erf: np.ndarray, rf_size: int | None = None, title: str = "Effective receptive field"
) -> Figure:
    """Heatmap of the ERF with its `erf_size` square and, if given, the theoretical RF square."""
    fig = card_figure(0.9)  # legible on an MLflow card (cnnexp/analysis/images.py)
    ax = fig.add_subplot()
    image = ax.imshow(erf, cmap="magma", interpolation="nearest")  # one square per input pixel
    bar = fig.colorbar(image, ax=ax)
    bar.set_label("share of |gradient|", fontsize=6)
    bar.ax.tick_params(labelsize=5)
    squares = [(erf_size(erf), "white", "-", "ERF (95% of mass)")]
    if rf_size is not None:
        squares.append((rf_size, "tab:cyan", "--", "theoretical RF"))
    cy, cx = _centre_of_mass(erf)
    for side, colour, style, label in squares:
        corner = (cx - side / 2, cy - side / 2)  # pixel centres sit on integers
        ax.add_patch(
            Rectangle(corner, side, side, fill=False, ec=colour, ls=style, label=f"{label}: {side}")
        )
    ax.set(xlim=(-0.5, erf.shape[1] - 0.5), ylim=(erf.shape[0] - 0.5, -0.5))
    ax.set_title(title, fontsize=7)
    ax.tick_params(labelsize=5)
    ax.legend(loc="lower left", fontsize=5)
    return fig


def _output_of(module: nn.Module, target: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run `module` on `x` and return `target`'s output (from its last call)."""
    outputs = []
    handle = target.register_forward_hook(lambda _m, _i, output: outputs.append(output))
    try:
        module(x)
    finally:
        handle.remove()
    if not outputs or not _is_map(outputs[-1]):
        raise ValueError("the chosen layer must be called and return an N×C×H×W tensor")
    return outputs[-1]


def _submodule(module: nn.Module, name: str) -> nn.Module:
    try:
        return module.get_submodule(name)
    except AttributeError as err:
        raise ValueError(f"no layer named {name!r} in {type(module).__name__}") from err


def _is_map(output: object) -> bool:
    return isinstance(output, torch.Tensor) and output.dim() == 4


def _centre_of_mass(erf: np.ndarray) -> tuple[int, int]:
    rows, cols = np.indices(erf.shape)
    total = erf.sum()
    return round((rows * erf).sum() / total), round((cols * erf).sum() / total)
