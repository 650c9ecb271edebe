"""Hand-crafted features: ORB keypoints and the bag-of-visual-words baseline."""

from cnnexp.features.bovw import BovwClassifier
from cnnexp.features.orb import (
    OrbSettings,
    detect_and_describe,
    keypoints_figure,
    match_descriptors,
    matches_figure,
    rotated_scaled_copy,
    to_uint8_images,
)

__all__ = [
    "BovwClassifier",
    "OrbSettings",
    "detect_and_describe",
    "keypoints_figure",
    "match_descriptors",
    "matches_figure",
    "rotated_scaled_copy",
    "to_uint8_images",
]
