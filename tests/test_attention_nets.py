"""ViT, Swin and MaxViT (torchvision, weights=None, 3×224×224): FLOPs against torchvision's
published counts, receptive fields against the gradient (tests/field_reference.py)."""

from __future__ import annotations

import pytest
import torch
import torchvision.models as tvm
from torch import nn
from torchvision.ops import SqueezeExcitation

from cnnexp.analysis.receptive_field import RFRow, field_of, receptive_fields
from cnnexp.analysis.receptive_field import rf_at_last_spatial_layer as last_spatial_rf
from cnnexp.models.facts import flops_per_image
from tests.field_reference import gradient_spans

IMAGE = (3, 224, 224)
WHOLE = ((0, 223), (0, 223))
# GMACs from torchvision's weights enums (meta["_ops"]): multiply-accumulates, so FLOPs / 2.
# resnet18, whose count was already exact, shows that both sides count alike.
PUBLISHED = {
    "vit_b_16": (tvm.ViT_B_16_Weights, 17.564),
    "swin_t": (tvm.Swin_T_Weights, 4.491),
    "maxvit_t": (tvm.MaxVit_T_Weights, 5.558),
    "resnet18": (tvm.ResNet18_Weights, 1.814),
}


@pytest.fixture(scope="module")
def net(request: pytest.FixtureRequest) -> nn.Module:
    """The named net (float32, eval mode), built once for all its tests: pytest runs the tests
    of a module-scoped fixture value by value, so one net is held at a time (vit_b_16: 350 MB)."""
    torch.manual_seed(0)
    built = getattr(tvm, request.param)(weights=None).eval()
    # The receptive field leaves channel gates out (squeeze-excitation sees the whole image);
    # a zero second layer makes MaxViT's gates constant, so the gradient leaves them out too.
    for m in built.modules():
        if isinstance(m, SqueezeExcitation):
            nn.init.zeros_(m.fc2.weight)
    return built


@pytest.mark.parametrize("net", PUBLISHED, indirect=True)
def test_flops_match_torchvision(net: nn.Module, request: pytest.FixtureRequest) -> None:
    weights, gmacs = PUBLISHED[request.node.callspec.params["net"]]
    assert weights.IMAGENET1K_V1.meta["_ops"] == gmacs  # the pinned figure is torchvision's
    net.train()
    flops = flops_per_image(net, IMAGE)
    assert flops / 2e9 == pytest.approx(gmacs, rel=0.01)
    assert net.training and all(m.training for m in net.modules())  # restored
    assert all(p.grad is None for p in net.parameters())
    assert torch.backends.mha.get_fastpath_enabled()  # switched back on
    net.eval()


def rows_of(net: nn.Module) -> list[RFRow]:
    return receptive_fields(net, IMAGE)


def diagonal(first: int, n: int = 7) -> list[tuple[int, int]]:
    """n units (h, w) whose rows and columns run through n consecutive positions: one period of
    a 7-unit window along both axes, with one backward pass for all (one image each)."""
    return [(first + i, first + n - 1 - i) for i in range(n)]


def expected(row: RFRow, units: list[tuple[int, int]]) -> list[tuple]:
    """Each unit's field by `row.span`, clipped to the image as a gradient is."""

    def clip(span: tuple[int, int], n: int = 224) -> tuple[int, int]:
        return max(span[0], 0), min(span[1], n - 1)

    return [(clip(row.span(h, 0)), clip(row.span(w, 1))) for h, w in units]


def by_gradient(net: nn.Module, layer: str, units: list, layout: str) -> list[tuple]:
    """Every unit's gradient spans; `layout` says where unit (h, w) sits in the layer's output.
    Three units (images) per pass keep a pass under 1 GB."""
    spans = []
    for start in range(0, len(units), 3):
        part = units[start : start + 3]
        pick = {
            "nchw": lambda out, b, part=part: out[b, :, part[b][0], part[b][1]],
            "nhwc": lambda out, b, part=part: out[b, part[b][0], part[b][1]],
            "tokens": lambda out, b, part=part: out[b, 1 + 14 * part[b][0] + part[b][1]],
        }[layout]  # tokens: the class token, then the 14×14 patches row by row
        x = torch.randn(len(part), *IMAGE, generator=torch.Generator().manual_seed(start))
        spans += gradient_spans(net, layer, x, pick)
    return spans


@pytest.mark.parametrize("net", ["vit_b_16"], indirect=True)
def test_vit_tokens_see_their_patch_until_the_first_attention(net: nn.Module) -> None:
    rows = rows_of(net)
    block = "encoder.layers.encoder_layer_0"
    local = {"conv_proj": "nchw", f"{block}.ln_1": "tokens"}  # flattened, class token, positions
    units = diagonal(3)
    for layer, layout in local.items():
        row = field_of(rows, layer)
        assert (row.size, row.stride, row.padding, row.covers_input) == (16, 16, 0, False)
        assert by_gradient(net, layer, units, layout) == expected(row, units)
    for layer in (f"{block}.self_attention", block):
        assert field_of(rows, layer).covers_input
        assert by_gradient(net, layer, units, "tokens") == [WHOLE] * len(units)
    assert field_of(rows, "encoder").covers_input
    assert last_spatial_rf(rows) == 224  # the tokens' field covers the input: r = its height


# r at each Swin block's output (and patch merging's): a window of 7 adds 6 units, a shifted
# window holds parts of two: 28, 56; merging 2×2: 84; 112, 168; 224; 280 … 840; then one window
# covers the 7×7 map.
SWIN = {
    "features.1.0": 28, "features.1.1": 56, "features.2": 84, "features.3.0": 112,
    "features.3.1": 168, "features.4": 224, "features.5.0": 280, "features.5.1": 392,
    "features.5.2": 504, "features.5.3": 616, "features.5.4": 728, "features.5.5": 840,
    "features.6": 952,
}  # fmt: skip


@pytest.mark.parametrize("net", ["swin_t"], indirect=True)
def test_swin_t_fields_grow_by_window_and_shift(net: nn.Module) -> None:
    rows = rows_of(net)
    assert {layer: field_of(rows, layer).size for layer in SWIN} == SWIN
    assert all(field_of(rows, layer).varies for layer in SWIN)  # where its window sits
    assert field_of(rows, "features.7.0").covers_input and last_spatial_rf(rows) == 224
    for layer, first in [("features.1.1", 25), ("features.2", 11), ("features.3.1", 11)]:
        row, units = field_of(rows, layer), diagonal(first)
        assert by_gradient(net, layer, units, "nhwc") == expected(row, units)
        assert max(b - a + 1 for a, b in (row.span(h, 0) for h, _ in units)) == row.size


@pytest.mark.parametrize("net", ["maxvit_t"], indirect=True)
def test_maxvit_t_window_then_grid_attention(net: nn.Module) -> None:
    rows = rows_of(net)
    layer = "blocks.0.layers.0.layers"
    window, grid = (
        field_of(rows, f"{layer}.window_attention"),
        field_of(rows, f"{layer}.grid_attention"),
    )
    # stem 3×3 s2, 3×3: 7 (S 2); depthwise 3×3 s2: 11 (S 4); a 7×7 window: 11 + 6·4
    assert (window.size, window.stride, window.covers_input) == (35, 4, False)
    units = diagonal(25)
    assert by_gradient(net, f"{layer}.window_attention", units, "nchw") == expected(window, units)
    # Grid attention: a unit sees the 7 units 8 apart per axis, spread over the whole map; those
    # 1 to 6 past a multiple of 8 see every pixel (0 and 7 miss a strip at one border).
    assert grid.covers_input and last_spatial_rf(rows) == 224
    units = diagonal(25, 6)
    assert by_gradient(net, f"{layer}.grid_attention", units, "nchw") == [WHOLE] * len(units)
