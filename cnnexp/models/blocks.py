"""Block lists from YAML -> checked specs -> nn.Module; one parser validates and builds."""

from __future__ import annotations

import dataclasses
import inspect
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from cnnexp.config import ConfigError, check_mapping, from_mapping, one_of, setting
from cnnexp.schema import HEADS

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


@dataclass(frozen=True)
class Conv:  # the YAML keys of a conv block, e.g. {conv: 3, channels: 32}
    conv: int = setting(ge=1)  # kernel size
    channels: int = setting(ge=1)  # output channels
    stride: int = setting(1, ge=1)
    padding: Any = "same"  # same (odd kernel, stride 1) or an integer >= 0
    dilation: int = setting(1, ge=1)
    batch_norm: bool | None = None  # None: the model's batch_norm
    bias: bool = True


@dataclass(frozen=True)
class Pool:
    pool: str = setting(choices=tuple(POOLS))
    size: int = setting(2, ge=1)
    stride: int | None = setting(None, ge=1)  # None: same as size


@dataclass(frozen=True)
class Dropout:
    dropout: float = setting(ge=0, lt=1)


Block = Conv | Pool | Dropout
BLOCKS = {dataclasses.fields(c)[0].name: c for c in (Conv, Pool, Dropout)}  # first key: kind


def parse_block(raw: Mapping, where: str, batch_norm: bool) -> Block:
    """One YAML mapping -> a Block; the key naming the block type says which."""
    kinds = [k for k in BLOCKS if k in raw]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: {dict(raw)!r} must have exactly one of {', '.join(BLOCKS)}")
    block = from_mapping(BLOCKS[kinds[0]], raw, where)
    if not isinstance(block, Conv):
        return block
    if block.batch_norm is None:
        block = dataclasses.replace(block, batch_norm=batch_norm)
    if block.padding == "same":
        if block.conv % 2 == 0:
            raise ConfigError(
                f"{where}.conv: kernel {block.conv} is even, so padding 'same' cannot "
                "centre it (use an odd kernel or an integer padding)"
            )
        if block.stride != 1:
            raise ConfigError(
                f"{where}.padding: 'same' needs stride 1, got stride {block.stride} "
                "(use an integer padding)"
            )
    elif isinstance(block.padding, bool) or not isinstance(block.padding, int) or block.padding < 0:
        raise ConfigError(
            f"{where}.padding: {block.padding!r} is not allowed ('same' or an integer >= 0)"
        )
    return block


def out_size(block: Block, size: int) -> int:
    """Spatial side after `block` (square inputs; each axis follows the same rule)."""
    if isinstance(block, Conv):
        reach = block.dilation * (block.conv - 1)
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


def check_activations(name: str, args_by_name: Mapping) -> None:
    """`name` is a registered activation, and every entry of `activation_args` names one and
    passes only keyword arguments of its torch.nn class (the chosen one and the others)."""
    one_of(name, "model.activation", ACTIVATIONS)
    check_mapping(args_by_name, "model.activation_args", ACTIVATIONS)
    for act, args in args_by_name.items():
        allowed = set(inspect.signature(ACTIVATIONS[act]).parameters) - {"inplace"}
        check_mapping(args or {}, f"model.activation_args.{act}", allowed)


def make_activation(name: str, args: Mapping | None) -> nn.Module:
    try:
        return ACTIVATIONS[name](**dict(args or {}))
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
            layers[f"pool{counts['pool']}"] = POOLS[block.pool](block.size, block.stride)
        else:
            counts["drop"] += 1
            layers[f"drop{counts['drop']}"] = nn.Dropout(block.dropout)
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
    reach = block.dilation * (block.conv - 1)
    padding = reach // 2 if block.padding == "same" else block.padding
    parts: OrderedDict[str, nn.Module] = OrderedDict(
        conv=nn.Conv2d(
            in_channels,
            block.channels,
            block.conv,
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
