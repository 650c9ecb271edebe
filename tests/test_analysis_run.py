"""Insight callbacks: health on nets forced dead or saturated; a real run's MLflow record."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cnnexp import data
from cnnexp.analysis.callbacks import build_callbacks
from cnnexp.analysis.gradcam import gradcam
from cnnexp.analysis.health import activation_health, network_health
from cnnexp.analysis.images import CARD_PX, TileGrid, render_grid
from cnnexp.analysis.mistakes import confusion_picture, misclassified_picture
from cnnexp.analysis.top_patches import all_top_patches, block_fields
from cnnexp.errors import ConfigError
from cnnexp.models.blocks import ConvBlock
from cnnexp.models.graph import build_net, parse_blocks, plan_net
from cnnexp.report.explorer import logged_images
from tests.conftest import FAST, all_runs, cli_in_process, store, typed_cfg


def one_block_net(activation: nn.Module, weight: float, bias: float) -> nn.Sequential:
    conv = nn.Conv2d(1, 4, 3, padding=1)
    nn.init.constant_(conv.weight, weight)
    nn.init.constant_(conv.bias, bias)
    block = ConvBlock(OrderedDict(conv=conv, act=activation))  # what the analysis calls convN
    return nn.Sequential(OrderedDict(features=nn.Sequential(OrderedDict(conv1=block))))


def test_relu_block_with_large_negative_bias_is_dead() -> None:
    net = one_block_net(nn.ReLU(), weight=0.01, bias=-100.0)
    health = network_health(net, torch.randn(16, 1, 8, 8))
    assert health["health/conv1/dead_fraction"] == pytest.approx(1.0)
    assert health["health/conv1/mean"] == 0 and health["health/conv1/std"] == 0


def test_healthy_relu_block_is_not_dead() -> None:
    net = one_block_net(nn.ReLU(), weight=0.1, bias=0.0)
    nn.init.normal_(net.features.conv1.conv.weight)
    assert network_health(net, torch.randn(16, 1, 8, 8))["health/conv1/dead_fraction"] < 0.2


@pytest.mark.parametrize("activation", [nn.Sigmoid(), nn.Tanh()])
def test_huge_weights_saturate_sigmoid_and_tanh(activation: nn.Module) -> None:
    net = one_block_net(activation, weight=0.0, bias=0.0)
    nn.init.normal_(net.features.conv1.conv.weight, std=1000.0)
    health = network_health(net, torch.randn(16, 1, 8, 8))
    assert health["health/conv1/saturation"] > 0.9
    assert "health/conv1/dead_fraction" not in health


def test_small_tanh_activations_are_not_saturated() -> None:
    assert activation_health(torch.full((2, 3, 4, 4), 0.5), nn.Tanh())["saturation"] == 0


def test_a_long_row_of_maps_is_drawn_near_square_card_wide_by_whole_pixels() -> None:
    """4 images × (input + 16 channels) of 4×4 maps: as one row per image 17 tiles wide; drawn
    as bands of columns, about CARD_PX wide and no taller than wide (so MLflow's 256 px card
    thumbnail is 256 px wide), every map pixel a square of whole pixels."""
    checker = np.indices((4, 4)).sum(0) % 2  # 0/1 chessboard: its squares show the scale
    tile = np.repeat(checker[..., None], 3, axis=2).astype(float)
    small = np.repeat(checker[:2, :2, None], 3, axis=2).astype(float)  # a 2×2 map, scaled up too
    rows = [[tile] + [tile] * 15 + [small] for _ in range(4)]
    labels = ["input", *map(str, range(16))]
    grid = TileGrid(rows, list("abcd"), labels, "conv1, after epoch 1\nrows: class", lead=1)
    image = render_grid(grid, tile_px=16)
    height, width, _ = image.shape
    assert image.dtype == np.uint8 and height <= width <= 1.3 * CARD_PX
    dark = image[..., 0] < 128  # the chessboard's 0 squares (text is dark too, but thin)
    runs = [len(r) for row in dark for r in "".join("1" if v else "0" for v in row).split("0") if r]
    scale = max(set(runs), key=runs.count)  # the commonest dark run: one map pixel
    assert scale >= 16 // 4 and runs.count(scale) > 100


def test_tiles_too_large_for_the_card_are_shrunk_by_area_not_drawn_thousands_of_pixels_wide():
    """A deep layer's top patches (16 channels × 8 ranks of 300×300, as resnet18's last block
    gives on small images) drew a 5,000 px wide card; now it is about CARD_PX wide, each
    tile at least tile_px, and a shrunk tile keeps its mean (area, not every d-th pixel)."""
    stripes = np.zeros((300, 300, 3))
    stripes[:, ::2] = 1.0  # one-pixel stripes: mean 0.5; every d-th pixel (d even) would be 1
    rows = [[stripes] * 8 for _ in range(16)]
    grid = TileGrid(rows, [f"ch {c}" for c in range(16)], [str(r + 1) for r in range(8)], "x")
    image = render_grid(grid, tile_px=32)
    height, width, _ = image.shape
    assert height <= width <= 1.5 * CARD_PX  # 128 tiles of at least 32 px: two bands of rows
    grey = (np.abs(image[..., 0].astype(int) - 128) < 8).sum()  # the shrunk stripes' mean
    assert grey >= 16 * 8 * 32 * 32


@pytest.mark.parametrize(
    ("names", "image"),
    [
        ([str(d) for d in range(10)], (1, 8, 8)),  # digits
        (["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
         (3, 32, 32)),  # CIFAR-10's long names
        ([f"class {c}" for c in range(100)], (3, 224, 224)),  # many classes, large images
        (["no", "yes"], (1, 28, 28)),
    ],
)  # fmt: skip
def test_mistake_pictures_are_card_wide_no_taller_and_show_each_image_by_whole_pixels(
    names, image
) -> None:
    """The confusion matrix and the surest mistakes are drawn CARD_PX wide and no taller (the
    card's 256 px thumbnail is then 256 px wide); a small image is enlarged by whole pixels."""
    n = len(names)
    counts = np.full((n, n), 3) + np.diag(np.full(n, 900))
    wrong = [(0.9 - k / 100, torch.rand(image), k % n, (k + 1) % n) for k in range(12)]
    for picture in (
        confusion_picture(counts, names, "test set"),
        misclassified_picture(wrong, names, "test set, the weights test_acc measures"),
    ):
        height, width, _ = picture.shape
        assert picture.dtype == np.uint8 and width == CARD_PX and height <= width
    checker = (np.indices(image[1:]).sum(0) % 2).astype(np.float32)  # its squares show the scale
    board = torch.from_numpy(checker).expand(image).clone()
    picture = misclassified_picture([(0.9, board, 0, 1)], names, "x")
    dark = picture[..., 0] < 60
    runs = [len(r) for row in dark for r in "".join("1" if v else "0" for v in row).split("0") if r]
    if image[1] < 32:  # room to enlarge: every board square the same whole number of pixels
        scale = max(set(runs), key=runs.count)
        assert scale >= 2 and scale * runs.count(scale) > 0.8 * sum(runs)  # text: the rest


def test_analysis_none_builds_no_callback_and_bad_keys_are_config_errors(tmp_path) -> None:
    cfg = typed_cfg("data=digits", "analysis=none", f"paths.output_dir={tmp_path}")
    dm = data.build(cfg.data)
    assert build_callbacks(cfg.analysis, dm) == []  # the fit diagnosis is the recording's
    with pytest.raises(ConfigError, match="analysis.normalize: 'global' is not allowed"):
        typed_cfg("data=digits", "analysis.normalize=global", f"paths.output_dir={tmp_path}")


@pytest.mark.slow
def test_two_epoch_run_logs_images_rf_and_health(out) -> None:
    args = ("model=tiny", *FAST, "trainer.max_epochs=2", "data.train_size=300")
    result = cli_in_process(*args, out=out)
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = all_runs(out)
    client, run_id = store(out), run.info.run_id
    folder = Path(client.download_artifacts(run_id, "images", str(out)))
    images = {(key, step) for key, steps in logged_images(folder).items() for step in steps}
    keys = ["erf", "gradcam", "kernels/conv1", "feature_maps/conv1", "feature_maps/conv2"]
    keys += ["top_patches/conv1", "top_patches/conv2"]
    keys += ["confusion_matrix", "misclassified"]  # validation at 0, the test set at 2
    assert images == {(key, step) for key in keys for step in (0, 2)}  # every key, every step
    metrics = run.data.metrics
    per_class = {k: v for k, v in metrics.items() if k.startswith("test_class_acc/")}
    assert sorted(per_class) == [f"test_class_acc/{d}" for d in range(10)]
    assert all(0 <= v <= 1 for v in per_class.values())
    # MNIST-5k's test split is stratified (100 per digit): test_acc is the per-class mean
    assert sum(per_class.values()) / 10 == pytest.approx(metrics["test_acc"])
    assert metrics["receptive_field"] == 8  # conv3 (3), pool2 (4, jump 2), conv3 (4 + 2*2)
    assert [m.step for m in client.get_metric_history(run_id, "erf_size")] == [0, 2]
    for layer in ("conv1", "conv2"):
        for stat in ("dead_fraction", "mean", "std", "grad_norm"):
            history = client.get_metric_history(run_id, f"health/{layer}/{stat}")
            assert [m.step for m in history] == [0, 1], (layer, stat)
        assert 0 <= metrics[f"health/{layer}/dead_fraction"] <= 1
    text = client.download_artifacts(run_id, "receptive_field.txt", str(out))
    assert "features.conv2.conv" in Path(text).read_text()


def test_gradcam_lights_the_region_that_raises_the_class_score() -> None:
    """A 1×1 conv, global average pool, linear head [+1, -1]: class 0's score rises with the
    activation everywhere, so its map follows the bright left half; class 1's falls: all zero."""
    conv = nn.Conv2d(1, 1, 1)
    nn.init.constant_(conv.weight, 1.0), nn.init.constant_(conv.bias, 0.0)
    fc = nn.Linear(1, 2, bias=False)
    fc.weight.data = torch.tensor([[1.0], [-1.0]])
    net = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc)
    image = torch.zeros(1, 1, 8, 8)
    image[..., :4] = 1.0
    maps = gradcam(net, conv, image, torch.tensor([0]))
    assert maps[0, :, :4].min() > 0.9 and maps[0, :, 4:].max() < 0.1
    assert gradcam(net, conv, image, torch.tensor([1])).abs().max() == 0
    assert conv.weight.grad is None and fc.weight.grad is None  # the net's own grads untouched


def test_top_patch_is_cut_at_the_units_receptive_field() -> None:
    """conv1 copies each pixel (3×3 kernel, centre 1), conv2 sums 3×3 of it (centre twice): the
    strongest conv2 unit sits on the bright pixel, and its 5×5 patch has that pixel in the
    middle; a pixel in the corner gives a patch whose outside part is grey."""
    plan = plan_net(
        parse_blocks(
            [
                {"conv": 3, "channels": 1, "batch_norm": False},
                {"conv": 3, "channels": 1, "batch_norm": False},
            ]
        ),
        (1, 8, 8),
    )
    net = build_net(plan, 2, "gap", None)
    centre = torch.zeros(1, 1, 3, 3)
    centre[..., 1, 1] = 1.0
    net.features.conv1.conv.weight.data, net.features.conv1.conv.bias.data = centre, torch.zeros(1)
    net.features.conv2.conv.weight.data = torch.ones(1, 1, 3, 3) + centre  # one unit wins
    net.features.conv2.conv.bias.data = torch.zeros(1)
    images = torch.zeros(2, 1, 8, 8)
    images[0, 0, 5, 6] = 1.0  # strongest conv2 unit: (5, 6); field rows 3..7, columns 4..8
    images[1, 0, 0, 0] = 0.5
    fields = block_fields(net, (1, 8, 8))
    assert (fields["conv2"].size, fields["conv2"].stride, fields["conv2"].padding) == (5, 1, 2)
    [first, second] = all_top_patches(net, images, fields, k=2, max_channels=4)["conv2"][0]
    assert first.shape == (1, 5, 5) and first[0, 2, 2] == 1 and first[0, :, :4].sum() == 1
    assert first[0, :, 4].isnan().all()  # column 8 lies past the 8-pixel-wide image
    assert second[0, :2].isnan().all() and second[0, :, :2].isnan().all()
    assert second[0, 2, 2] == 1  # scaled per image: the corner pixel is that image's maximum
