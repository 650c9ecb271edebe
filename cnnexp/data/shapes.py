"""Synthetic shapes: one filled shape per image (`draw_shapes`), or two small marks far apart
whose label says whether they are the same shape (`draw_shape_pairs`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch

from cnnexp.errors import ConfigError

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


def draw_shape_pairs(
    n_samples: int,
    image_size: int,
    marks: Sequence[str],
    mark_size: int,
    distance: int,
    seed: int,
    noise: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images N×1×S×S holding two marks `distance` px apart, centre to centre, along a
    random axis (horizontal or vertical), at a random place; label 1 if both marks are the same
    shape, else 0 (half each). No unit whose receptive field misses one mark can tell them."""
    check_pair_layout(marks, mark_size, distance, image_size)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n_samples) % 2)
    images = np.zeros((n_samples, image_size, image_size), np.uint8)
    radius = (mark_size - 1) / 2  # pixels c - r .. c + r
    for img, same in zip(images, labels, strict=True):
        first = int(rng.integers(len(marks)))
        others = [k for k in range(len(marks)) if k != first]
        second = first if same else int(rng.choice(others))
        step = np.roll([distance * rng.choice([-1, 1]), 0], rng.integers(2))  # axis, direction
        low = radius + np.maximum(0, -step)
        start = rng.uniform(low, image_size - 1 - radius - np.maximum(0, step))
        for kind, centre in ((first, start), (second, start + step)):
            value = int(rng.integers(128, 256))  # brightness says nothing about the shape
            SHAPES[marks[kind]](img, centre, radius, 0.0, value)
    noisy = images + rng.normal(0, noise * 255, images.shape)
    x = torch.from_numpy(np.clip(noisy, 0, 255).astype(np.uint8)).unsqueeze(1)
    return x, torch.from_numpy(labels).long()


def check_pair_layout(marks: Sequence[str], mark_size: int, distance: int, size: int) -> None:
    """ConfigError unless marks are 2+ known shapes and two fit `distance` apart in the image."""
    if not (isinstance(marks, list | tuple) and len(marks) >= 2 and len(set(marks)) == len(marks)):
        raise ConfigError(f"data.marks: {marks!r} is not allowed (allowed: 2+ distinct shapes)")
    unknown = [m for m in marks if m not in SHAPES]
    if unknown:
        raise ConfigError(
            f"data.marks: unknown shape {unknown[0]!r} (allowed: {', '.join(sorted(SHAPES))})"
        )
    if isinstance(mark_size, bool) or not isinstance(mark_size, int) or mark_size < 3:
        raise ConfigError(
            f"data.mark_size: {mark_size!r} is not allowed (allowed: an integer >= 3)"
        )
    most = size - mark_size  # both marks inside the image
    if (
        isinstance(distance, bool)
        or not isinstance(distance, int)
        or not mark_size < distance <= most
    ):
        raise ConfigError(
            f"data.distance: {distance!r} is not allowed (allowed: an integer in "
            f"({mark_size}, {most}]: more than data.mark_size apart, both inside the image)"
        )
