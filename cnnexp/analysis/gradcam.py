"""Grad-CAM (Selvaraju et al. 2017) with Captum's LayerGradCam: where the net looks when it decides.

For each fixed validation image: the class score's gradient at the last spatial layer, averaged
over each channel's positions, weights that layer's channels; their ReLU'd sum, upsampled to the
input, is laid over the image, once for the true class and once for the predicted one.
"""

from __future__ import annotations

import matplotlib
import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from cnnexp.analysis.images import card_figure, minmax
from cnnexp.models.modules import eval_mode


def gradcam(
    net: nn.Module, layer: nn.Module, images: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """N×H×W maps in [0, 1] (each image scaled by its own maximum) for class `targets[i]`.
    Only the layer's output gets a gradient: parameters' `.grad` stay untouched."""
    with eval_mode(net), torch.inference_mode(False), torch.enable_grad():
        attribution = LayerGradCam(net, layer).attribute(
            images.clone(), target=targets.tolist(), relu_attributions=True
        )
        maps = LayerAttribution.interpolate(attribution, tuple(images.shape[-2:]), "bilinear")
    maps = maps.detach()[:, 0].float().cpu()
    peak = maps.flatten(1).max(dim=1).values.clamp_min(1e-12)
    return (maps / peak[:, None, None]).clamp(0, 1)


def overlay(image: torch.Tensor, heat: torch.Tensor, alpha: float = 0.5) -> np.ndarray:
    """H×W×3 in [0, 1]: the (min-max scaled) image in grey or colour, the map in 'jet' over it."""
    img = minmax(image.float().cpu())
    base = (
        img.permute(1, 2, 0).numpy()
        if img.shape[0] == 3
        else np.repeat(img[0, ..., None].numpy(), 3, 2)
    )
    colour = matplotlib.colormaps["jet"](heat.numpy())[..., :3]
    return (1 - alpha) * base + alpha * colour


def gradcam_figure(
    net: nn.Module,
    layer: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    names: list[str],
    when: str = "",
):
    """A row per image: the input, Grad-CAM for the true class, Grad-CAM for the predicted one;
    two images a row from four on, so the picture stays near square."""
    with eval_mode(net), torch.no_grad():
        probs = net(images).float().softmax(dim=1).cpu()
    confidence, predicted = probs.max(dim=1)
    true_maps = gradcam(net, layer, images, labels)
    predicted_maps = gradcam(net, layer, images, predicted.to(labels.device))
    per_row = 2 if len(images) >= 4 else 1
    rows = -(-len(images) // per_row)
    fig = card_figure((0.58 * rows + 0.2) / (1.28 * per_row))  # panels 0.43 in + a title
    fig.suptitle(f"Grad-CAM, {when}" if when else "Grad-CAM", fontsize=7)
    axes = fig.subplots(rows, 3 * per_row, squeeze=False).flatten()
    for ax in axes:
        ax.axis("off")
    for i in range(len(images)):
        y, p = int(labels[i]), int(predicted[i])
        panels = [
            (overlay(images[i], torch.zeros_like(true_maps[i]), alpha=0), f"input: {names[y]}"),
            (overlay(images[i], true_maps[i]), f"true {names[y]}"),
            (overlay(images[i], predicted_maps[i]), f"pred. {names[p]} {confidence[i]:.0%}"),
        ]
        for ax, (picture, title) in zip(axes[3 * i : 3 * i + 3], panels, strict=True):
            ax.imshow(picture, interpolation="nearest")
            ax.set_title(
                title, fontsize=5, color="black" if p == y or "input" in title else "tab:red"
            )
    return fig
