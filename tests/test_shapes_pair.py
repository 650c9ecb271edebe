"""data=shapes_pair: two marks a set distance apart, labelled same shape or not, pixels checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from cnnexp import data
from cnnexp.data.shapes import draw_shape_pairs, draw_shapes
from cnnexp.errors import ConfigError
from tests.conftest import typed_cfg


def marks_of(image: torch.Tensor) -> list[tuple[np.ndarray, int]]:
    """(centre, area) of each connected blob of lit pixels, in reading order."""
    lit = image[0].numpy() > 0
    labels, n = ndimage.label(lit, structure=np.ones((3, 3)))
    centres = ndimage.center_of_mass(lit, labels, range(1, n + 1))
    areas = ndimage.sum(lit, labels, range(1, n + 1))
    return [(np.array(c), int(a)) for c, a in zip(centres, areas, strict=True)]


@pytest.mark.parametrize("distance", [10, 16, 25])
def test_two_marks_distance_apart_and_label_says_same_shape(distance: int) -> None:
    x, y = draw_shape_pairs(200, 32, ["circle", "cross"], 7, distance, seed=0, noise=0.0)
    assert x.shape == (200, 1, 32, 32) and x.dtype == torch.uint8
    assert y.tolist().count(1) == y.tolist().count(0) == 100
    for image, same in zip(x, y.tolist(), strict=True):
        (c1, a1), (c2, a2) = marks_of(image)
        offset = np.sort(np.abs(c1 - c2))
        assert offset[0] < 1 and abs(offset[1] - distance) < 1  # along one axis
        assert (abs(a1 - a2) <= 4) == bool(same), (a1, a2)  # a circle has ~3× a cross's area


def test_marks_use_both_axes_and_the_whole_image() -> None:
    x, _ = draw_shape_pairs(300, 32, ["square", "cross"], 5, 12, seed=1, noise=0.0)
    horizontal = [abs(a[0][1] - b[0][1]) > 6 for a, b in map(marks_of, x)]
    assert 0.4 < np.mean(horizontal) < 0.6
    lit = (x[:, 0] > 0).float().mean(dim=0)
    assert lit[:4].sum() > 0 and lit[-4:].sum() > 0 and lit[:, :4].sum() > 0


def test_same_seed_same_images_other_seed_other_images() -> None:
    a = draw_shape_pairs(20, 32, ["circle", "cross"], 7, 16, seed=3, noise=0.05)
    b = draw_shape_pairs(20, 32, ["circle", "cross"], 7, 16, seed=3, noise=0.05)
    c = draw_shape_pairs(20, 32, ["circle", "cross"], 7, 16, seed=4, noise=0.05)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])


def test_shapes_keeps_its_images() -> None:
    x, y = draw_shapes(8, 32, ["circle", "square"], 0, 0.05)  # pinned before shapes_pair came
    assert int(x.sum()) == 568_220 and y.tolist() == [0, 0, 1, 0, 1, 0, 1, 1]


def test_preset_builds_balanced_splits(tmp_path: Path) -> None:
    cfg = typed_cfg("data=shapes_pair", f"paths.output_dir={tmp_path}", "data.n_samples=400")
    dm = data.build(cfg.data)
    assert dm.class_names == ["different", "same"] and dm.input_shape == (1, 32, 32)
    assert [len(s[1]) for s in (dm.train, dm.val, dm.test)] == [280, 40, 80]
    assert torch.bincount(dm.test[1]).tolist() == [40, 40]


MISTAKES = [
    ("data.distance=26", "data.distance: 26 is not allowed (allowed: an integer in (7, 25]"),
    ("data.distance=7", "data.distance: 7 is not allowed"),
    ("data.mark_size=2", "data.mark_size: 2 is not allowed"),
    ("data.marks=[circle]", "data.marks: ['circle'] is not allowed (allowed: 2+ distinct"),
    ("data.marks=[circle,blob]", "data.marks: unknown shape 'blob' (allowed: circle, cross"),
    ("+data.gap=3", "data.gap: unknown key"),
]


@pytest.mark.parametrize(("override", "message"), MISTAKES)
def test_bad_layout_is_one_line_config_error(override: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        cfg = typed_cfg("data=shapes_pair", f"paths.output_dir={tmp_path}", override)
        data.check(cfg.data)
        data.build(cfg.data)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
