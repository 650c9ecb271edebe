"""Synthetic shapes: one filled shape per image at a random place, size, angle and brightness."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch

Painter = Callable[
    [np.ndarray, np.ndarray, float, float, int], None
]  # img, centre, radius, angle, value


def _point(xy: np.ndarray) -> tuple[int, int]:
    return int(round(xy[0])), int(round(xy[1]))


def _circle(img: np.ndarray, centre: np.ndarray, radius: float, angle: float, value: int) -> None:
    cv2.circle(img, _point(centre), max(1, round(radius)), value, -1, cv2.LINE_AA)


def _polygon(n_corners: int) -> Painter:
    def paint(img: np.ndarray, centre: np.ndarray, radius: float, angle: float, value: int) -> None:
        t = angle + np.arange(n_corners) * 2 * np.pi / n_corners
        corners = centre + radius * np.stack([np.cos(t), np.sin(t)], axis=1)
        cv2.fillPoly(img, [np.rint(corners).astype(np.int32)], value, cv2.LINE_AA)

    return paint


def _cross(img: np.ndarray, centre: np.ndarray, radius: float, angle: float, value: int) -> None:
    thickness = max(1, round(radius / 3))
    for t in (angle, angle + np.pi / 2):
        arm = radius * np.array([np.cos(t), np.sin(t)])
        cv2.line(img, _point(centre - arm), _point(centre + arm), value, thickness, cv2.LINE_AA)


SHAPES: dict[str, Painter] = {
    "circle": _circle,
    "square": _polygon(4),
    "triangle": _polygon(3),
    "cross": _cross,
}


def draw_shapes(
    n_samples: int, image_size: int, classes: Sequence[str], seed: int, noise: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images N×1×S×S and int64 labels (index into `classes`), balanced across classes."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n_samples) % len(classes))
    images = np.zeros((n_samples, image_size, image_size), np.uint8)
    for img, label in zip(images, labels, strict=True):
        radius = rng.uniform(0.2, 0.4) * image_size
        centre = rng.uniform(radius, image_size - radius, size=2)
        value = int(rng.integers(128, 256))  # brightness varies, so the shape is what identifies
        SHAPES[classes[label]](img, centre, radius, rng.uniform(0, 2 * np.pi), value)
    noisy = images + rng.normal(0, noise * 255, images.shape)
    x = torch.from_numpy(np.clip(noisy, 0, 255).astype(np.uint8)).unsqueeze(1)
    return x, torch.from_numpy(labels).long()
