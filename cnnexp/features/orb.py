"""ORB keypoints on small images: settings, conversion to upscaled uint8, detection, matching."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import cv2
import numpy as np
from matplotlib.figure import Figure

from cnnexp.errors import ConfigError
from cnnexp.limits import from_mapping
from cnnexp.schema import OrbConf

Described = tuple[tuple[cv2.KeyPoint, ...], np.ndarray | None]  # keypoints, (K, 32) uint8 or None


@dataclass
class OrbSettings(OrbConf):
    """cv2.ORB_create parameters plus the upscale factor applied to every image first (keys,
    defaults and OpenCV's limits: cnnexp/schema.py OrbConf).

    The default upscale of 4 matters: ORB drops keypoints closer than `edge_threshold` (31) to the
    border, so a 28×28 digit has no room for any; at 112×112 it does.
    """

    def validate(self, image_hw: tuple[int, int] | None = None) -> None:
        """Raise ConfigError (a ValueError) on the first field OpenCV would reject or misuse
        (n_levels 0 crashes it, scale_factor 1 finds nothing above level 0, < 1 crashes).

        With `image_hw` (height, width before upscaling) also check that an upscaled image has
        room for a keypoint: OpenCV keeps only points at least `edge_threshold` pixels from every
        border, and a patch should fit inside the image.
        """
        from_mapping(OrbConf, dataclasses.asdict(self), "orb")
        if image_hw is not None:
            self._check_room(image_hw)

    def min_side(self) -> int:
        """Smallest upscaled image side on which ORB can keep a keypoint."""
        return max(2 * self.edge_threshold + 1, self.patch_size)

    def _check_room(self, image_hw: tuple[int, int]) -> None:
        side = min(image_hw) * self.upscale
        if side < self.min_side():
            need = math.ceil(self.min_side() / min(image_hw))
            raise ConfigError(
                f"orb.upscale={self.upscale}: {image_hw[0]}×{image_hw[1]} images become "
                f"{side} px on their short side, but ORB needs >= {self.min_side()} "
                f"(2·edge_threshold+1 and >= patch_size); use upscale >= {need} "
                f"or a smaller edge_threshold/patch_size"
            )

    def create(self) -> cv2.ORB:
        """The cv2.ORB detector these settings describe."""
        return cv2.ORB_create(
            nfeatures=self.n_features,
            scaleFactor=self.scale_factor,
            nlevels=self.n_levels,
            edgeThreshold=self.edge_threshold,
            patchSize=self.patch_size,
            fastThreshold=self.fast_threshold,
        )


def orb_settings(orb: OrbConf, image_hw: tuple[int, int]) -> OrbSettings:
    """OrbSettings from `model.orb`, checked against OpenCV's limits for images of `image_hw`;
    ConfigError names the key."""
    settings = OrbSettings(**dataclasses.asdict(orb))
    try:
        settings.validate(image_hw)
    except ConfigError as err:
        raise ConfigError(f"model.{err}") from None
    return settings


def to_uint8_images(x: np.ndarray, upscale: int = 1) -> np.ndarray:
    """N×C×H×W floats → N×(H·upscale)×(W·upscale) uint8 grey: channel mean, per-image min-max."""
    grey = np.asarray(x, dtype=np.float32).mean(axis=1)
    low = grey.min(axis=(1, 2), keepdims=True)
    span = grey.max(axis=(1, 2), keepdims=True) - low
    scaled = np.divide(grey - low, span, out=np.zeros_like(grey), where=span > 0)
    images = np.rint(scaled * 255).astype(np.uint8)
    if upscale == 1:
        return images
    size = (images.shape[2] * upscale, images.shape[1] * upscale)  # cv2 wants (width, height)
    return np.stack([cv2.resize(img, size, interpolation=cv2.INTER_CUBIC) for img in images])


def prepare(x: np.ndarray, settings: OrbSettings) -> np.ndarray:
    """Validate `settings` for images shaped like `x` (N×C×H×W), then convert them for ORB."""
    settings.validate(image_hw=(x.shape[2], x.shape[3]))
    return to_uint8_images(x, settings.upscale)


def describe(grey_images: np.ndarray, settings: OrbSettings) -> list[Described]:
    """ORB keypoints and descriptors of already prepared uint8 images (N×H×W)."""
    orb = settings.create()
    return [orb.detectAndCompute(img, None) for img in grey_images]


def detect_and_describe(images: np.ndarray, settings: OrbSettings) -> list[Described]:
    """ORB keypoints and descriptors (None where no keypoint) for N×C×H×W float images."""
    return describe(prepare(images, settings), settings)


def match_descriptors(
    d1: np.ndarray | None, d2: np.ndarray | None, method: str = "crosscheck", ratio: float = 0.75
) -> list[cv2.DMatch]:
    """Good Hamming matches from d1 to d2: mutual nearest neighbours, or Lowe's ratio test."""
    if d1 is None or d2 is None:
        return []
    if method == "crosscheck":
        return list(cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(d1, d2))
    if method == "ratio":
        pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(d1, d2, k=2)
        return [p[0] for p in pairs if len(p) == 2 and p[0].distance < ratio * p[1].distance]
    raise ValueError(f"method={method!r}: must be 'crosscheck' or 'ratio'")


def rotated_scaled_copy(img: np.ndarray, angle: float, scale: float) -> np.ndarray:
    """`img` rotated by `angle` degrees (counter-clockwise) and scaled about its centre."""
    h, w = img.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    return cv2.warpAffine(img, matrix, (w, h), flags=cv2.INTER_LINEAR)


def keypoints_figure(images: np.ndarray, settings: OrbSettings, n: int = 8) -> Figure:
    """The first `n` N×C×H×W images upscaled, with ORB keypoints drawn at their size and angle."""
    grey = prepare(images[:n], settings)
    fig = Figure(figsize=(2 * len(grey), 2.3), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(grey)))
    flags = cv2.DRAW_MATCHES_FLAGS_DRAW_RICH_KEYPOINTS  # circle = keypoint size, radius = angle
    for ax, img, (keypoints, _) in zip(axes, grey, describe(grey, settings), strict=True):
        ax.imshow(cv2.drawKeypoints(img, keypoints, None, (255, 80, 0), flags))
        ax.set_title(f"{len(keypoints)} keypoints", fontsize=9)
        ax.axis("off")
    return fig


def matches_figure(
    img: np.ndarray, settings: OrbSettings, angle: float = 30, scale: float = 1.2
) -> tuple[Figure, dict[str, int]]:
    """A C×H×W image against its rotated and scaled copy: good matches by cross-check and ratio.

    Returns the figure (one panel per method) and the number of good matches per method.
    """
    original = prepare(img[None], settings)[0]
    moved = rotated_scaled_copy(original, angle, scale)
    (kp1, d1), (kp2, d2) = describe(np.stack([original, moved]), settings)
    fig = Figure(figsize=(9, 3.3), layout="constrained")
    counts: dict[str, int] = {}
    for ax, method in zip(fig.subplots(1, 2), ("crosscheck", "ratio"), strict=True):
        matches = match_descriptors(d1, d2, method)
        counts[method] = len(matches)
        flags = cv2.DRAW_MATCHES_FLAGS_NOT_DRAW_SINGLE_POINTS
        ax.imshow(cv2.drawMatches(original, kp1, moved, kp2, matches, None, flags=flags))
        ax.set_title(f"{method}: {len(matches)} good matches ({len(kp1)} vs {len(kp2)} keypoints)")
        ax.axis("off")
    fig.suptitle(f"ORB matches with a copy rotated {angle:g}° and scaled ×{scale:g}")
    return fig, counts
