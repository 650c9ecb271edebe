"""Pixels for the images the analysis logs: min-max scaling and a drawn figure as an array."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure


def minmax(t: torch.Tensor) -> torch.Tensor:
    """`t` scaled to [0, 1] by its own minimum and maximum (a constant tensor becomes 0)."""
    low, high = t.min(), t.max()
    return (t - low) / (high - low).clamp_min(1e-12)


def figure_pixels(fig: Figure) -> np.ndarray:
    """A drawn figure as an H×W×3 uint8 array, as MlflowClient.log_image takes it."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
