"""Model graphs from YAML: nested block lists -> a checked plan -> nn.Module.

`plan_net` parses every block (the dataclasses below: their fields are the YAML keys) and
propagates the C×H×W shape through the whole graph from the data set's input shape, so a mistake
stops before any data loads, as one ConfigError naming the block's path
(`model.blocks[2].parallel[0][0].stride: …`). `build_net` turns the plan into modules named for
per-layer analysis: each conv block is `convN` (N counts convs depth-first through the graph, so
a plain list keeps conv1, conv2, …), likewise poolN, dropN, resN, parN.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
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
NO_ACTIVATION = "none"  # a block's `activation: none`
POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}
Shape = tuple[int, int, int]  # C, H, W
# Sane bounds, checked before any block is planned: 1000 blocks is ~3x ResNet-152's convs and
# pools, and planning, tracing and drawing a net grow with its blocks (task=inspect of 500 takes
# about a minute here); a YAML that nests deeper than 16 levels is a mistake, not a net.
MAX_BLOCKS = 1000
MAX_NESTING = 16


@dataclass(frozen=True)
class Conv:  # {conv: 3, channels: 32}
    conv: int = setting(ge=1)  # kernel size
    channels: int = setting(ge=1)  # output channels
    stride: int = setting(1, ge=1)
    padding: Any = "same"  # same (odd kernel, stride 1) or an integer >= 0
    dilation: int = setting(1, ge=1)
    groups: int = setting(1, ge=1)  # channels and input channels divisible; = channels: depthwise
    batch_norm: bool | None = None  # None: the model's batch_norm
    bias: bool = True
    activation: str | None = None  # None: the model's activation; "none": no activation


@dataclass(frozen=True)
class Pool:  # {pool: max, size: 3, stride: 1, padding: 1}
    pool: str = setting(choices=tuple(POOLS))
    size: int = setting(2, ge=1)
    stride: int | None = setting(None, ge=1)  # None: same as size
    padding: int = setting(0, ge=0)  # at most size // 2 (torch's rule)


@dataclass(frozen=True)
class Dropout:  # {dropout: 0.3}
    dropout: float = setting(ge=0, lt=1)


@dataclass(frozen=True)
class Residual:  # activation(body(x) + shortcut(x)); shortcut: identity or a (strided) 1×1 conv
    residual: list = setting()  # the body: a block list
    activation: str | None = None  # after the sum; None: the model's activation


@dataclass(frozen=True)
class Parallel:  # branches (block lists) on the same input, concatenated along channels
    parallel: list = setting()


@dataclass(frozen=True)
class Repeat:  # `blocks` `repeat` times in a row, each time with its own weights
    repeat: int = setting(ge=1)
    blocks: list = setting()


Block = Conv | Pool | Dropout | Residual | Parallel | Repeat
BLOCKS = {
    dataclasses.fields(c)[0].name: c for c in (Conv, Pool, Dropout, Residual, Parallel, Repeat)
}
_PREFIX = {Conv: "conv", Pool: "pool", Dropout: "drop", Residual: "res", Parallel: "par"}


@dataclass
class Node:
    """One block of the planned graph: where it is written, its module name and shapes.
    `branches` holds a residual's [body] (and its 1×1 `projection`) or a parallel's branches."""

    path: str  # e.g. model.blocks[2].parallel[0][0]
    name: str  # module name: conv3, pool1, res1, par1, drop1
    block: Block
    in_shape: Shape
    out_shape: Shape
    branches: list[list[Node]] = field(default_factory=list)
    projection: Conv | None = None  # a residual's shortcut when the body changes the shape
    activation: str | None = None  # conv/residual: the resolved activation name or "none"
    batch_norm: bool = False  # conv (and a residual's projection)


@dataclass
class Plan:
    nodes: list[Node]  # top level, in order (repeats expanded)
    input_shape: Shape
    out_shape: Shape  # the features' output, before the head

    def walk(self) -> list[Node]:
        """Every node, depth-first in forward order."""
        return list(_walk(self.nodes))


def _walk(nodes: list[Node]):
    for node in nodes:
        yield node
        for branch in node.branches:
            yield from _walk(branch)


@dataclass
class _Context:
    activation: str
    batch_norm: bool
    width: float
    counts: dict[str, int] = field(default_factory=dict)

    def name(self, kind: type) -> str:
        prefix = _PREFIX[kind]
        self.counts[prefix] = self.counts.get(prefix, 0) + 1
        return f"{prefix}{self.counts[prefix]}"


def plan_net(
    raw_blocks: Any,
    input_shape: Shape,
    activation: str = "relu",
    batch_norm: bool = True,
    width: float = 1.0,
) -> Plan:
    """Parse and check a whole block graph against the C×H×W input; ConfigError names the path."""
    ctx = _Context(activation, batch_norm, width)
    count_blocks(raw_blocks, "model.blocks")
    nodes, shape = _plan_list(raw_blocks, "model.blocks", tuple(input_shape), ctx)
    if not any(isinstance(n.block, Conv) for n in _walk(nodes)):
        raise ConfigError("model.blocks: no conv block (a CNN needs at least one)")
    return Plan(nodes, tuple(input_shape), shape)


def count_blocks(raw: Any, where: str, depth: int = 0) -> int:
    """Blocks the list `raw` expands to (repeats multiplied out, branches included), counted
    without expanding anything; ConfigError past MAX_BLOCKS or MAX_NESTING, naming the key.
    What is not a valid block list counts 0 here: the planner says what is wrong with it."""
    if depth > MAX_NESTING:
        raise ConfigError(
            f"{where}: blocks nested more than {MAX_NESTING} levels deep "
            f"(allowed: at most {MAX_NESTING} levels of residual, parallel and repeat)"
        )
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        return 0
    total = 0
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        total += _count_block(item, at, depth)
        if total > MAX_BLOCKS:
            repeat = isinstance(item, Mapping) and "repeat" in item
            what = f"{at}.repeat: {item['repeat']} makes" if repeat else f"{where}: these make"
            raise ConfigError(
                f"{what} the net at least {total:,} blocks long "
                f"(allowed: at most {MAX_BLOCKS:,} blocks in all, repeats expanded)"
            )
    return total


def _count_block(raw: Any, where: str, depth: int) -> int:
    if not isinstance(raw, Mapping):
        return 1
    if "repeat" in raw:
        times = raw["repeat"]
        inner = count_blocks(raw.get("blocks"), f"{where}.blocks", depth + 1)
        whole = isinstance(times, int) and not isinstance(times, bool) and times > 0
        return inner * times if whole else inner
    if "residual" in raw:
        return 1 + count_blocks(raw["residual"], f"{where}.residual", depth + 1)
    if "parallel" in raw and isinstance(raw["parallel"], Sequence):
        branches = enumerate(raw["parallel"])
        return 1 + sum(count_blocks(b, f"{where}.parallel[{i}]", depth + 1) for i, b in branches)
    return 1


def _plan_list(raw: Any, where: str, shape: Shape, ctx: _Context) -> tuple[list[Node], Shape]:
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise ConfigError(
            f"{where}: {raw!r} is not a list of blocks like [{{conv: 3, channels: 8}}]"
        )
    if not raw:
        raise ConfigError(
            f"{where}: empty (list at least one block, e.g. {{conv: 3, channels: 8}})"
        )
    nodes = []
    for i, item in enumerate(raw):
        planned, shape = _plan_block(item, f"{where}[{i}]", shape, ctx)
        nodes += planned
    return nodes, shape


def _plan_block(raw: Any, where: str, shape: Shape, ctx: _Context) -> tuple[list[Node], Shape]:
    block = parse_block(raw, where)
    if isinstance(block, Repeat):
        nodes = []
        for _ in range(block.repeat):
            planned, shape = _plan_list(block.blocks, f"{where}.blocks", shape, ctx)
            nodes += planned
        return nodes, shape
    name = ctx.name(type(block))
    if isinstance(block, Residual | Parallel):
        plan = _plan_residual if isinstance(block, Residual) else _plan_parallel
        node = plan(block, where, name, shape, ctx)
        return [node], node.out_shape
    node = Node(where, name, block, shape, shape)
    if isinstance(block, Conv):
        block = _scaled(block, ctx.width)
        _check_groups(block, shape[0], where)
        node.block, node.activation = block, _activation(block.activation, ctx, where)
        node.batch_norm = ctx.batch_norm if block.batch_norm is None else block.batch_norm
        node.out_shape = (block.channels, *_spatial(block, shape, where))
    elif isinstance(block, Pool):
        node.out_shape = (shape[0], *_spatial(block, shape, where))
    return [node], node.out_shape


def _plan_residual(block: Residual, where: str, name: str, shape: Shape, ctx: _Context) -> Node:
    body, out = _plan_list(block.residual, f"{where}.residual", shape, ctx)
    node = Node(where, name, block, shape, out, [body])
    node.activation, node.batch_norm = _activation(block.activation, ctx, where), ctx.batch_norm
    if out != shape:
        stride = _shortcut_stride(shape[1:], out[1:])
        if stride is None:
            raise ConfigError(
                f"{where}.residual: the body maps {_hw(shape)} to {_hw(out)}, which no strided "
                "1×1 shortcut can match (let the body keep the size or divide it by a stride)"
            )
        node.projection = Conv(1, out[0], stride, 0, bias=False)
    return node


def _shortcut_stride(hw: tuple[int, int], out: tuple[int, int]) -> int | None:
    """The stride s of a 1×1 conv (no padding) taking `hw` to `out`, if there is one."""
    for s in range(1, max(hw) + 1):
        if all((i - 1) // s + 1 == o for i, o in zip(hw, out, strict=True)):
            return s
    return None


def _plan_parallel(block: Parallel, where: str, name: str, shape: Shape, ctx: _Context) -> Node:
    raw = block.parallel
    if not raw:
        raise ConfigError(f"{where}.parallel: empty (list two or more branches, each a block list)")
    branches, outs = [], []
    for b, branch in enumerate(raw):
        nodes, out = _plan_list(branch, f"{where}.parallel[{b}]", shape, ctx)
        if outs and out[1:] != outs[0][1:]:
            raise ConfigError(
                f"{where}.parallel[{b}]: output {_hw(out)} differs from branch 0's "
                f"{_hw(outs[0])} (branches are concatenated along channels: their sizes must match)"
            )
        branches.append(nodes)
        outs.append(out)
    return Node(where, name, block, shape, (sum(o[0] for o in outs), *outs[0][1:]), branches)


def parse_block(raw: Any, where: str) -> Block:
    """One YAML mapping -> a Block; the key naming the block kind says which."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: {raw!r} is not a mapping like {{conv: 3, channels: 32}}")
    kinds = [k for k in BLOCKS if k in raw]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: {dict(raw)!r} must have exactly one of {', '.join(BLOCKS)}")
    block = from_mapping(BLOCKS[kinds[0]], raw, where)
    if isinstance(block, Conv):
        _check_padding(block, where)
    if isinstance(block, Pool) and block.padding > block.size // 2:
        raise ConfigError(
            f"{where}.padding: {block.padding} is more than half the pool size {block.size} "
            f"(allowed: 0 to {block.size // 2})"
        )
    return block


def _check_padding(block: Conv, where: str) -> None:
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


def _scaled(block: Conv, width: float) -> Conv:
    """The conv with `model.width` applied to its channels (a depthwise conv stays depthwise)."""
    if width == 1:
        return block
    channels = max(1, round(block.channels * width))
    groups = channels if block.groups == block.channels else block.groups
    return dataclasses.replace(block, channels=channels, groups=groups)


def _check_groups(block: Conv, in_channels: int, where: str) -> None:
    for what, n in (("channels", block.channels), ("input channels", in_channels)):
        if n % block.groups:
            raise ConfigError(
                f"{where}.groups: {block.groups} does not divide the {n} {what} "
                f"(groups must divide both {in_channels} in and {block.channels} out)"
            )


def _activation(name: str | None, ctx: _Context, where: str) -> str:
    if name is None:
        return ctx.activation
    return one_of(name, f"{where}.activation", [*ACTIVATIONS, NO_ACTIVATION])


def _spatial(block: Conv | Pool, shape: Shape, where: str) -> tuple[int, int]:
    out = tuple(out_size(block, side) for side in shape[1:])
    if min(out) < 1:
        raise ConfigError(
            f"{where}: shrinks its {_hw(shape)} input below 1x1 "
            "(remove a pooling/stride or use a larger input)"
        )
    return out


def out_size(block: Block, size: int) -> int:
    """Spatial side after a conv or pool block (each axis follows the same rule)."""
    if isinstance(block, Conv):
        reach = block.dilation * (block.conv - 1)
        pad = reach // 2 if block.padding == "same" else block.padding
        return (size + 2 * pad - reach - 1) // block.stride + 1
    if isinstance(block, Pool):
        return (size + 2 * block.padding - block.size) // (block.stride or block.size) + 1
    return size


def _hw(shape: Shape) -> str:
    return f"{shape[1]}x{shape[2]}"


def check_activations(name: str, args_by_name: Mapping) -> None:
    """`name` is a registered activation, and every entry of `activation_args` names one and
    passes only keyword arguments of its torch.nn class (the chosen one and the others)."""
    one_of(name, "model.activation", ACTIVATIONS)
    check_mapping(args_by_name, "model.activation_args", ACTIVATIONS)
    for act, args in args_by_name.items():
        allowed = set(inspect.signature(ACTIVATIONS[act]).parameters) - {"inplace"}
        check_mapping(args or {}, f"model.activation_args.{act}", allowed)


def make_activation(name: str, args_by_name: Mapping | None) -> nn.Module:
    """The activation module `name` ("none": identity) with its `model.activation_args`."""
    if name == NO_ACTIVATION:
        return nn.Identity()
    try:
        return ACTIVATIONS[name](**dict((args_by_name or {}).get(name) or {}))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model.activation_args.{name}: {err}") from None


# ---- modules ----
class ConvBlock(nn.Sequential):
    """conv (+ bn) (+ act): the unit whose output the analysis shows as `convN`."""


class ResidualBlock(nn.Module):
    def __init__(self, body: nn.Module, shortcut: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.body, self.shortcut, self.act = body, shortcut, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class ParallelBlock(nn.Module):
    def __init__(self, branches: list[nn.Module]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.out = nn.Identity()  # a named output: analysis finds the concatenation by it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cat([branch(x) for branch in self.branches], dim=1))


def build_net(
    plan: Plan, num_classes: int, head: str, activation_args: Mapping | None
) -> nn.Module:
    """features (conv1, pool1, res1, …) + head (gap|flatten + linear), named for analysis."""
    one_of(head, "model.head", HEADS)
    channels, h, w = plan.out_shape
    if head == "gap":
        head_layers = [
            ("pool", nn.AdaptiveAvgPool2d(1)),
            ("flatten", nn.Flatten()),
            ("fc", nn.Linear(channels, num_classes)),
        ]
    else:
        head_layers = [("flatten", nn.Flatten()), ("fc", nn.Linear(channels * h * w, num_classes))]
    return nn.Sequential(
        OrderedDict(
            features=_sequence(plan.nodes, activation_args),
            head=nn.Sequential(OrderedDict(head_layers)),
        )
    )


def _sequence(nodes: list[Node], args: Mapping | None) -> nn.Sequential:
    return nn.Sequential(OrderedDict((node.name, _module(node, args)) for node in nodes))


def _module(node: Node, args: Mapping | None) -> nn.Module:
    block = node.block
    if isinstance(block, Conv):
        return conv_block(
            block, node.in_shape[0], node.batch_norm, make_activation(node.activation, args)
        )
    if isinstance(block, Pool):
        return POOLS[block.pool](block.size, block.stride, block.padding)
    if isinstance(block, Dropout):
        return nn.Dropout(block.dropout)
    if isinstance(block, Residual):
        shortcut = nn.Identity()
        if node.projection is not None:  # a plain Sequential: not a `convN` of the analysis
            projection = conv_block(
                node.projection, node.in_shape[0], node.batch_norm, nn.Identity()
            )
            shortcut = nn.Sequential(OrderedDict(projection.named_children()))
        act = make_activation(node.activation, args)
        return ResidualBlock(_sequence(node.branches[0], args), shortcut, act)
    return ParallelBlock([_sequence(branch, args) for branch in node.branches])


def conv_block(block: Conv, in_channels: int, batch_norm: bool, act: nn.Module) -> ConvBlock:
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
            groups=block.groups,
            bias=block.bias and not batch_norm,
        )
    )
    if batch_norm:
        parts["bn"] = nn.BatchNorm2d(block.channels)
    if not isinstance(act, nn.Identity):
        parts["act"] = act
    return ConvBlock(parts)
