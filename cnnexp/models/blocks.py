"""Block lists from YAML -> checked specs -> nn.Module; one parser validates and builds."""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from cnnexp.config import ConfigError, check_keys, one_of

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "rrelu": nn.RReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
}
POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}
HEADS = ("gap", "flatten")
BLOCK_KEYS = {
    "conv": {"conv", "channels", "stride", "padding", "dilation", "batch_norm", "bias"},
    "pool": {"pool", "size", "stride"},
    "dropout": {"dropout"},
}


@dataclass(frozen=True)
class Conv:
    kernel: int
    channels: int
    stride: int = 1
    padding: int | str = "same"
    dilation: int = 1
    batch_norm: bool = True
    bias: bool = True


@dataclass(frozen=True)
class Pool:
    kind: str
    size: int = 2
    stride: int | None = None  # None: same as size


@dataclass(frozen=True)
class Dropout:
    p: float


Block = Conv | Pool | Dropout


def _positive_int(value: object, where: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: {value!r} is not allowed (an integer >= {minimum})")
    return value


def parse_block(raw: Mapping, where: str, batch_norm: bool) -> Block:
    """One YAML mapping -> a Block; the first key names the block type."""
    kinds = [k for k in BLOCK_KEYS if k in raw]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: {dict(raw)!r} must have exactly one of conv, pool, dropout")
    kind = kinds[0]
    check_keys(raw, where, BLOCK_KEYS[kind])
    if kind == "dropout":
        p = raw["dropout"]
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p < 1:
            raise ConfigError(f"{where}.dropout: {p!r} is not allowed (a probability in [0, 1))")
        return Dropout(float(p))
    if kind == "pool":
        size = _positive_int(raw.get("size", 2), f"{where}.size")
        stride = raw.get("stride")
        stride = None if stride is None else _positive_int(stride, f"{where}.stride")
        return Pool(one_of(raw["pool"], f"{where}.pool", POOLS), size, stride)
    kernel = _positive_int(raw["conv"], f"{where}.conv")
    if "channels" not in raw:
        raise ConfigError(f"{where}.channels: missing (the number of output channels, >= 1)")
    conv = Conv(
        kernel=kernel,
        channels=_positive_int(raw["channels"], f"{where}.channels"),
        stride=_positive_int(raw.get("stride", 1), f"{where}.stride"),
        padding=raw.get("padding", "same"),
        dilation=_positive_int(raw.get("dilation", 1), f"{where}.dilation"),
        batch_norm=bool(raw.get("batch_norm", batch_norm)),
        bias=bool(raw.get("bias", True)),
    )
    if conv.padding == "same":
        if kernel % 2 == 0:
            raise ConfigError(
                f"{where}.conv: kernel {kernel} is even, so padding 'same' cannot "
                "centre it (use an odd kernel or an integer padding)"
            )
        if conv.stride != 1:
            raise ConfigError(
                f"{where}.padding: 'same' needs stride 1, got stride {conv.stride} "
                "(use an integer padding)"
            )
    elif isinstance(conv.padding, bool) or not isinstance(conv.padding, int) or conv.padding < 0:
        raise ConfigError(
            f"{where}.padding: {conv.padding!r} is not allowed ('same' or an integer >= 0)"
        )
    return conv


def out_size(block: Block, size: int) -> int:
    """Spatial side after `block` (square inputs; each axis follows the same rule)."""
    if isinstance(block, Conv):
        reach = block.dilation * (block.kernel - 1)
        pad = reach // 2 if block.padding == "same" else block.padding
        return (size + 2 * pad - reach - 1) // block.stride + 1
    if isinstance(block, Pool):
        return (size - block.size) // (block.stride or block.size) + 1
    return size


def parse_blocks(raw_blocks: Sequence, hw: tuple[int, int], batch_norm: bool = True) -> list[Block]:
    """Parse and check a whole block list against the input's height and width."""
    if not raw_blocks:
        raise ConfigError("model.blocks: empty (list at least one {conv: k, channels: c} block)")
    blocks, (h, w) = [], hw
    for i, raw in enumerate(raw_blocks):
        where = f"model.blocks[{i}]"
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: {raw!r} is not a mapping like {{conv: 3, channels: 32}}")
        block = parse_block(raw, where, batch_norm)
        h, w = out_size(block, h), out_size(block, w)
        if h < 1 or w < 1:
            raise ConfigError(
                f"{where}: {dict(raw)} shrinks the {hw[0]}x{hw[1]} input below 1x1 "
                "(remove a pooling/stride or use a larger input)"
            )
        blocks.append(block)
    if not any(isinstance(b, Conv) for b in blocks):
        raise ConfigError("model.blocks: no conv block (a CNN needs at least one)")
    return blocks


def activation_factory(name: str, args: Mapping | None) -> type[nn.Module] | None:
    """Check `name` and its keyword arguments against torch.nn's real signature."""
    cls = ACTIVATIONS[one_of(name, "model.activation", ACTIVATIONS)]
    allowed = set(inspect.signature(cls).parameters) - {"inplace"}
    check_keys(args or {}, f"model.activation_args.{name}", allowed)
    return cls


def make_activation(name: str, args: Mapping | None) -> nn.Module:
    cls = activation_factory(name, args)
    try:
        return cls(**dict(args or {}))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model.activation_args.{name}: {err}") from None


def build_net(
    blocks: list[Block],
    in_channels: int,
    num_classes: int,
    activation: str,
    activation_args: Mapping | None,
    head: str,
    hw: tuple[int, int],
) -> nn.Sequential:
    """features (conv1, pool1, ...) + head (gap|flatten + linear), named for per-layer analysis."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    channels, counts, (h, w) = in_channels, {"conv": 0, "pool": 0, "drop": 0}, hw
    for block in blocks:
        if isinstance(block, Conv):
            counts["conv"] += 1
            layers[f"conv{counts['conv']}"] = conv_block(
                block, channels, activation, activation_args
            )
            channels = block.channels
        elif isinstance(block, Pool):
            counts["pool"] += 1
            layers[f"pool{counts['pool']}"] = POOLS[block.kind](block.size, block.stride)
        else:
            counts["drop"] += 1
            layers[f"drop{counts['drop']}"] = nn.Dropout(block.p)
        h, w = out_size(block, h), out_size(block, w)
    one_of(head, "model.head", HEADS)
    if head == "gap":
        head_layers = [
            ("pool", nn.AdaptiveAvgPool2d(1)),
            ("flatten", nn.Flatten()),
            ("fc", nn.Linear(channels, num_classes)),
        ]
    else:
        head_layers = [("flatten", nn.Flatten()), ("fc", nn.Linear(channels * h * w, num_classes))]
    return nn.Sequential(
        OrderedDict(features=nn.Sequential(layers), head=nn.Sequential(OrderedDict(head_layers)))
    )


def conv_block(
    block: Conv, in_channels: int, activation: str, activation_args: Mapping | None
) -> nn.Sequential:
    reach = block.dilation * (block.kernel - 1)
    padding = reach // 2 if block.padding == "same" else block.padding
    parts: OrderedDict[str, nn.Module] = OrderedDict(
        conv=nn.Conv2d(
            in_channels,
            block.channels,
            block.kernel,
            block.stride,
            padding,
            block.dilation,
            bias=block.bias and not block.batch_norm,
        )
    )
    if block.batch_norm:
        parts["bn"] = nn.BatchNorm2d(block.channels)
    parts["act"] = make_activation(activation, activation_args)
    return nn.Sequential(parts)
