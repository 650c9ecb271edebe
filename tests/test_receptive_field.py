"""Receptive fields against hand arithmetic (r = r_prev + (k-1)·S_prev), gradients and Distill."""

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn
from torchvision.models.swin_transformer import ShiftedWindowAttention

from cnnexp.analysis.receptive_field import (
    ReceptiveFieldError,
    field_cells,
    format_table,
    receptive_fields,
    rf_at_last_spatial_layer,
)
from tests.field_reference import gradient_spans

SHAPE = (1, 16, 16)


def conv(k: int = 3, stride: int = 1, dilation: int = 1, channels: int = 1) -> nn.Conv2d:
    """A 'same'-padded conv (padding = d(k-1)/2)."""
    return nn.Conv2d(channels, channels, k, stride, dilation * (k - 1) // 2, dilation)


def last(module: nn.Module, shape: tuple[int, int, int] = SHAPE):
    return receptive_fields(module, shape)[-1]


def by_name(module: nn.Module, shape: tuple[int, int, int]) -> dict:
    return {row.name: row for row in receptive_fields(module, shape)}


def on_meta(name: str, **kwargs) -> nn.Module:
    """A torchvision model on the meta device: no memory, no init, shapes only (fast tests)."""
    with torch.device("meta"):
        return getattr(tvm, name)(weights=None, **kwargs)


class Residual(nn.Module):
    def __init__(self, main: nn.Module, shortcut: nn.Module) -> None:
        super().__init__()
        self.main, self.shortcut = main, shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.shortcut(x)


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        ([conv()], 3),
        ([conv(), conv()], 5),
        ([conv(), conv(), conv()], 7),
        ([conv(), nn.MaxPool2d(2, 2), conv()], 8),  # 3, then 3+1·1=4 (S=2), then 4+2·2=8
        ([conv(dilation=2)], 5),  # effective kernel 2·(3-1)+1
        ([conv(), conv(k=1)], 3),  # 1×1 changes depth only
        ([conv(k=5)], 5),  # one 5×5 sees what two 3×3 see
        ([conv(), nn.ReLU(), nn.BatchNorm2d(1), nn.Dropout()], 3),  # pass-through
    ],
)
def test_sequential_stacks_match_hand_arithmetic(layers: list[nn.Module], expected: int) -> None:
    row = last(nn.Sequential(*layers))
    assert row.size == expected and row.size_hw == (expected, expected)


def test_effective_stride_and_padding_by_hand() -> None:
    # conv3 p1: (r,S,P)=(3,1,1); pool2 s2 p0: (4,2,1); conv3 s2 p1: (4+2·2, 2·2, 1+1·2) = (8,4,3)
    rows = receptive_fields(nn.Sequential(conv(), nn.AvgPool2d(2), conv(stride=2)), SHAPE)
    assert [(r.size, r.stride, r.padding) for r in rows] == [(3, 1, 1), (4, 2, 1), (8, 4, 3)]
    assert rows[2].kernel == (3, 3) and rows[2].layer_stride == (2, 2)


@pytest.mark.parametrize(
    "layers",
    [
        [conv(), nn.AvgPool2d(2), conv(stride=2)],
        [conv(dilation=2), conv(k=5, stride=2), nn.AvgPool2d(3, 2, 1), conv()],
        [nn.Conv2d(1, 1, 4, 3, 0), nn.Conv2d(1, 1, 2, 1, 1)],
    ],
)
def test_field_equals_the_gradient_support(layers: list[nn.Module]) -> None:
    """With positive weights and average pooling, unit f depends on exactly [fS-P, fS-P+r-1]."""
    net = nn.Sequential(*layers)
    for p in net.parameters():
        nn.init.constant_(p, 0.1)
    x = torch.randn(1, 1, 40, 40, requires_grad=True)
    out = net(x)
    f = out.shape[-1] // 2
    (grad,) = torch.autograd.grad(out[0, 0, f, f], x)
    seen = grad[0, 0].abs().sum(0).nonzero().flatten()
    row = last(net, (1, 40, 40))
    first = f * row.stride - row.padding
    assert (seen.min().item(), seen.max().item()) == (first, first + row.size - 1)


def test_residual_block_is_aligned() -> None:
    block = Residual(nn.Sequential(conv(), nn.ReLU(), conv()), nn.Identity())
    row = last(block)
    assert (row.kind, row.size, row.padding, row.aligned) == ("add", 5, 2, True)


def test_add_of_shifted_paths_is_flagged() -> None:
    # conv3 s2 p1 sees [-1, 1] for unit 0, pool2 s2 sees [0, 1]: same S, centres 0 and 0.5
    row = last(Residual(conv(stride=2), nn.MaxPool2d(2)))
    assert not row.aligned and "centres" in row.note
    assert (row.size, row.stride, row.padding) == (3, 2, 1)  # union [-1, 1]


def test_add_of_paths_with_different_strides_is_flagged() -> None:
    row = last(Residual(conv(stride=2), nn.Conv2d(1, 1, 5, 1, 0)), (1, 8, 8))  # both 4×4
    assert not row.aligned and "strides" in row.note


class Functional(nn.Module):
    """Functional conv, pools and a channel concatenation of paths with different fields."""

    def __init__(self) -> None:
        super().__init__()
        self.w1, self.w2 = (
            nn.Parameter(torch.ones(2, 1, 3, 3)),
            nn.Parameter(torch.ones(2, 2, 3, 3)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.conv2d(x, self.w1, padding=1)  # r 3
        b = F.max_pool2d(F.conv2d(a, self.w2, padding=2, dilation=2), 3, 1, 1)  # r 7, then 9
        y = torch.cat([a, F.avg_pool2d(b, 1)], dim=1)
        return torch.flatten(y.mean((2, 3)), 1)


def test_functional_ops_and_concatenation() -> None:
    rows = receptive_fields(Functional(), SHAPE)
    kinds = [row.kind for row in rows]
    assert kinds[:3] == ["conv", "conv", "pool"] and "cat" in kinds
    cat = next(row for row in rows if row.kind == "cat")
    assert (cat.size, cat.aligned) == (9, True)  # the wider of two centred paths
    assert rows[-1].covers_input and rf_at_last_spatial_layer(rows) == 9


def test_global_pool_flatten_and_linear_cover_the_input() -> None:
    net = nn.Sequential(conv(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 2))
    rows = receptive_fields(net, (1, 12, 10))
    assert [r.covers_input for r in rows] == [False, True, True, True]
    assert rows[-1].kind == "linear" and rows[-1].size_hw == (12, 10)
    assert rf_at_last_spatial_layer(rows) == 3
    assert "covers input" in format_table(rows).splitlines()[-1]


def test_mode_is_restored() -> None:
    net = nn.Sequential(conv(), nn.BatchNorm2d(1), nn.Dropout())
    net.train()
    net[2].eval()
    receptive_fields(net, SHAPE)
    assert [m.training for m in net] == [True, True, False]
    assert net[1].num_batches_tracked.item() == 0


class DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.sum() > 0 else -x


def test_untraceable_module_gets_one_clear_error() -> None:
    with pytest.raises(ReceptiveFieldError, match="cannot trace DataDependent"):
        receptive_fields(DataDependent(), SHAPE)


def test_unknown_resampling_op_is_refused() -> None:
    with pytest.raises(ReceptiveFieldError, match="no receptive-field rule"):
        receptive_fields(nn.Sequential(conv(), nn.Upsample(scale_factor=2)), SHAPE)


def test_alexnet_matches_arithmetic() -> None:
    rows = by_name(tvm.alexnet(weights=None), (3, 224, 224))  # a real CPU model this time
    assert rows["features.10"].size == 163  # conv5: 67 + 3 convs · 2·16
    pool5 = rows["features.12"]
    assert (pool5.size, pool5.stride) == (195, 32)  # Distill's table: AlexNet 195


def test_vgg16_matches_distill() -> None:
    rows = by_name(on_meta("vgg16"), (3, 224, 224))
    assert rows["features.28"].size == 196  # conv5_3
    pool5 = rows["features.30"]
    assert (pool5.size, pool5.stride, pool5.padding) == (212, 32, 90)  # Distill: 212, 32, 90


def test_resnet50_final_field() -> None:
    # torchvision's v1.5 strides the first unit's 3×3 of each stage: 427. (Distill's 483 is
    # TF-slim resnet_v1_50, which strides the last unit instead.)
    rows = receptive_fields(on_meta("resnet50"), (3, 224, 224))
    assert rf_at_last_spatial_layer(rows) == 427
    assert all(row.aligned for row in rows)


def test_inception_v3_matches_distill() -> None:
    net = on_meta("inception_v3", init_weights=False)
    assert rf_at_last_spatial_layer(receptive_fields(net, (3, 299, 299))) == 1311


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("vgg11", 150),  # pools at 4, 10, 30, 70, 150
        ("resnet18", 435),  # 11 after the stem, then 8 convs at S=4, 8, 16, 32 (stride 2 first)
        ("mobilenet_v2", 491),  # one depthwise 3×3 per block: 3 + 2·(2+2·4+3·8+7·16+4·32)
        ("densenet121", 2071),  # 6/12/24/16 3×3 layers, transitions' 2×2 pools in between
        ("googlenet", 379),  # torchvision's "5×5" branch is a 3×3
    ],
)
def test_torchvision_models(name: str, expected: int) -> None:
    extra = {"init_weights": False} if name == "googlenet" else {}
    rows = receptive_fields(on_meta(name, **extra), (3, 224, 224))
    assert rf_at_last_spatial_layer(rows) == expected
    assert all(row.aligned for row in rows) and rows[-1].covers_input
    assert len(format_table(rows).splitlines()) == len(rows) + 1


class ChannelsLast(nn.Module):
    """ConvNeXt-style block: 3×3 conv, per-position LayerNorm/MLP in N×H×W×C, 3×3 conv."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.conv1, self.conv2 = conv(channels=channels), conv(channels=channels)
        self.norm = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(
            nn.Linear(channels, 4 * channels), nn.GELU(), nn.Linear(4 * channels, channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x).permute(0, 2, 3, 1)
        y = self.mlp(self.norm(y))
        return self.conv2(torch.permute(y, (0, 3, 1, 2)))


def test_channels_last_block_acts_per_position() -> None:
    rows = receptive_fields(ChannelsLast(), (4, 16, 16))
    assert not any(row.covers_input for row in rows)
    assert [row.size for row in rows] == [3] * (len(rows) - 1) + [5]  # 3×3 then 3×3: 5
    linears = [row for row in rows if row.op == "Linear"]
    assert len(linears) == 2 and all(row.kind == "linear" for row in linears)
    assert rows[1].kind == "layout" and rows[1].output_shape == (1, 16, 16, 4)


class Relayout(nn.Module):
    """A 3×3 conv, `layout` (which must bring back N×C×H×W or lose H and W), a 3×3 conv."""

    def __init__(self, layout) -> None:
        super().__init__()
        self.conv1, self.conv2, self.layout = conv(channels=4), conv(channels=4), layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.layout(self.conv1(x)))


@pytest.mark.parametrize(
    "layout",
    [
        lambda x: x.transpose(1, 3).transpose(-1, 1),
        lambda x: torch.movedim(x, 1, -1).swapaxes(1, 3).swapdims(2, 3),
        lambda x: x.unsqueeze(1).flatten(1, 2),  # flatten keeping H and W
        lambda x: x.permute(0, 2, 3, 1).reshape(1, 16, 16, 2, 2).view(1, 16, 16, 4).movedim(3, 1),
        lambda x: x.reshape(1, 2, 2, 16, 16).flatten(1, 2),
        lambda x: x.flatten(2).reshape(1, 4, 16, 16),  # H and W merged, then split again
        lambda x: x.reshape(1, 4, 2, 8, 2, 8).permute(0, 1, 2, 4, 3, 5).reshape(1, 4, 4, 64)
        .reshape(1, 4, 2, 2, 8, 8).permute(0, 1, 2, 4, 3, 5).reshape(1, 4, 16, 16),  # windows
    ],
)  # fmt: skip
def test_layout_ops_are_followed(layout) -> None:
    assert last(Relayout(layout), (4, 16, 16)).size == 5


def test_scrambled_spatial_axes_cover_the_input() -> None:
    # 6×4 -> 8×3: the first row of 8 takes a row of 4 and half the next: no longer followed
    lost = receptive_fields(Relayout(lambda x: x.reshape(1, 4, 8, 3)), (4, 6, 4))
    assert [row.covers_input for row in lost] == [False, True, True]
    assert "no longer separate" in lost[1].note
    # 16×16 -> 8×32 is followed (each element is still one position), but a 3×3 conv on it
    # no longer slides over image neighbours
    split = receptive_fields(Relayout(lambda x: x.reshape(1, 4, 8, 32)), (4, 16, 16))
    assert [(row.size, row.covers_input) for row in split] == [(3, False), (3, False), (16, True)]
    assert "where it works" in split[2].note


def test_linear_sums_over_the_positions_of_its_last_axis() -> None:
    flat = receptive_fields(nn.Sequential(conv(), nn.Flatten(), nn.Linear(256, 2)), SHAPE)
    # a flattened element is still one unit of the map; the Linear sums over all of them
    assert [(r.kind, r.size, r.covers_input) for r in flat[1:]] == [
        ("flatten", 3, False),
        ("linear", 16, True),
    ]
    assert rf_at_last_spatial_layer(flat) == 3
    over_width = last(nn.Sequential(conv(), nn.Linear(16, 16)))  # N×C×H×W: sums along W only
    assert over_width.kind == "linear" and not over_width.covers_input
    assert over_width.size_hw == (3, 16) and [f.whole for f in over_width.fields] == [False, True]
    assert field_cells(over_width) == ("3xwhole", "1x-", "1x-")


def test_conv_on_channels_last_tensor_is_refused() -> None:
    with pytest.raises(ReceptiveFieldError, match="works on axes"):
        receptive_fields(Relayout(lambda x: x.permute(0, 2, 3, 1)), (4, 4, 16))


def test_full_size_global_input_covers_but_channel_gate_does_not() -> None:
    spread = Relayout(lambda x: x + x.mean((2, 3), keepdim=True).expand(1, 4, 16, 16))
    add = next(row for row in receptive_fields(spread, (4, 16, 16)) if row.kind == "add")
    assert add.covers_input and "covers the whole input" in add.note
    gated = last(Relayout(lambda x: x * x.mean((2, 3), keepdim=True).sigmoid()), (4, 16, 16))
    assert gated.size == 5 and not gated.covers_input


class Windows(nn.Module):
    """4×4 patches, one residual Swin window attention (window `size`) per shift, a k×k conv."""

    def __init__(self, shifts: list[int], size: int = 4, k: int = 1) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, 8, 4, 4)
        self.attn = nn.ModuleList(
            ShiftedWindowAttention(8, [size, size], [s, s], num_heads=2) for s in shifts
        )
        self.head = nn.Conv2d(8, 8, k, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.patch(x).permute(0, 2, 3, 1)
        for attn in self.attn:
            y = y + attn(y)
        return self.head(y.permute(0, 3, 1, 2))


def unit_spans(net: nn.Module, shape: tuple[int, int, int], units: list[int]) -> list[tuple]:
    """Gradient spans of the output units (u, u) of an N×C×H×W net, one image per unit."""
    x = torch.randn(len(units), *shape)
    return gradient_spans(net.eval(), "", x, lambda out, b: out[b, :, units[b], units[b]])


def test_window_attention_covers_its_window() -> None:
    """Patches r=S=4 on an 8×8 grid; a 4×4 window: r = 4 + 3·4, each unit sees its window."""
    net = Windows([0])
    rows = receptive_fields(net, (1, 32, 32))
    attn = next(row for row in rows if row.kind == "attention")
    assert (attn.size, attn.stride, attn.padding) == (16, 4, 0)  # P: unit 0's, first window
    assert attn.varies and "covers its window (4×4 positions)" in attn.note
    assert rows[-2].size == 16 and rows[-2].aligned  # the residual lies inside the window
    assert rows[-1].size == 16  # the 1×1 conv acts per position
    fields = [((a, b), (a, b)) for a, b in map(attn.span, range(8))]
    assert fields == [((0, 15), (0, 15))] * 4 + [((16, 31), (16, 31))] * 4
    assert unit_spans(net, (1, 32, 32), list(range(8))) == fields


def test_stacked_windows_follow_the_shift() -> None:
    """Windows of 4 units, then windows shifted by 2: each shifted window holds halves of two
    windows, so every unit sees 8 units (32 pixels), which 8 depending on its position. A 3×3
    conv after windows joins neighbouring windows likewise."""
    shifted = receptive_fields(Windows([0, 2]), (1, 32, 32))
    attn = [row for row in shifted if row.kind == "attention"]
    assert not attn[1].covers_input and "shifted by 2×2" in attn[1].note
    assert (attn[1].size, attn[1].stride, attn[1].padding) == (32, 4, 16)
    assert [attn[1].span(u) for u in range(8)] == [(-16, 15)] * 2 + [(0, 31)] * 4 + [(16, 47)] * 2
    for net in (Windows([0, 2]), Windows([0], k=3)):
        row = receptive_fields(net, (1, 32, 32))[-1]
        fields = [(max(a, 0), min(b, 31)) for a, b in map(row.span, range(8))]
        assert row.size == 32 and unit_spans(net, (1, 32, 32), list(range(8))) == [
            (f, f) for f in fields
        ]
    (whole,) = [r for r in receptive_fields(Windows([0], 8), (1, 32, 32)) if r.kind == "attention"]
    assert whole.covers_input and "one window covers the map" in whole.note


class Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, 8, 4, 4)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = self.mha(t, t, t)[0]
        return F.scaled_dot_product_attention(t, t, t)


def test_attention_over_tokens_covers_the_input() -> None:
    rows = receptive_fields(Tokens(), (1, 16, 16))
    attention = [row for row in rows if row.kind == "attention"]
    assert [row.op for row in attention] == ["MultiheadAttention", "scaled_dot_product_attention"]
    assert all(r.covers_input and r.note == "attention: covers the whole input" for r in attention)
    assert attention[0].output_shape == (1, 16, 8)  # the first of MultiheadAttention's outputs


def test_convnext_tiny_is_channels_last() -> None:
    rows = receptive_fields(on_meta("convnext_tiny"), (3, 224, 224))
    stem = rows[0]
    assert (stem.name, stem.size, stem.stride) == ("features.0.0", 4, 4)
    # 7×7 depthwise convs: 4 + 3·6·4, +4, +3·6·8, +8, +9·6·16, +16, +3·6·32
    assert rf_at_last_spatial_layer(rows) == 1688
    linears = [row for row in rows if row.op == "Linear"]
    assert not any(row.covers_input for row in linears[:-1]) and linears[-1].covers_input
    assert all(row.aligned for row in rows)


def test_swin_t_windows_on_meta() -> None:
    rows = receptive_fields(on_meta("swin_t"), (3, 224, 224))
    attention = [row for row in rows if row.kind == "attention"]
    assert len(attention) == 2 + 2 + 6 + 2 and all("attention:" in r.note for r in attention)
    assert [r.size for r in attention[:4]] == [28, 56, 112, 168]  # tests/test_attention_nets.py
    assert all(row.covers_input for row in attention[-2:])  # stage 4: one window, the whole map
    assert rf_at_last_spatial_layer(rows) == 224
    assert [row.kind for row in rows].count("patch_merge") == 3


def test_table_shows_height_by_width_and_whole_fields() -> None:
    rows = receptive_fields(on_meta("inception_v3", init_weights=False), (3, 299, 299))
    asymmetric = next(row for row in rows if row.name == "Mixed_6b.branch7x7dbl_4.conv")
    assert field_cells(asymmetric) == ("351x255", "16", "154x106")  # 1×7 and 7×1 convs
    table = format_table(rows).splitlines()
    assert "351x255" in next(line for line in table if line.startswith("Mixed_6b.branch7x7dbl_4."))
    assert table[-1].split()[-5:-2] == ["whole", "-", "-"] and "covers input" in table[-1]
