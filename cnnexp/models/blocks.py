"""The built-in block kinds of the YAML model language, one class each (see cnnexp/models/graph.py):
their fields are the YAML keys, their methods parse, plan, build and describe them."""

from __future__ import annotations

import dataclasses
import inspect
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cnnexp.errors import ConfigError
from cnnexp.limits import check_mapping, from_mapping, setting
from cnnexp.models.graph import (
    Block,
    Context,
    Node,
    Shape,
    block_kind,
    count_blocks,
    hw,
    parse_blocks,
    plan_list,
    sequence,
)
from cnnexp.schema import ACTIVATIONS, NO_ACTIVATION

POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}
BLOCK_ACTIVATIONS = (*ACTIVATIONS, NO_ACTIVATION)  # a block's own activation; none: identity


@block_kind
@dataclass(frozen=True)
class Conv(Block):  # {conv: 3, channels: 32}
    conv: int = setting(ge=1)  # kernel size
    channels: int = setting(ge=1)  # output channels
    stride: int = setting(1, ge=1)
    padding: Any = "same"  # same (odd kernel, stride 1) or an integer >= 0
    dilation: int = setting(1, ge=1)
    groups: int = setting(1, ge=1)  # channels and input channels divisible; = channels: depthwise
    batch_norm: bool | None = None  # None: the model's batch_norm
    bias: bool = True
    activation: str | None = setting(None, choices=BLOCK_ACTIVATIONS)  # None: the model's

    prefix = "conv"
    convolves = True

    @property
    def colour(self) -> str:
        return "#dbe9f8" if self.conv > 1 else "#e6f4e6"  # a 1×1 conv mixes channels only

    @classmethod
    def parse(cls, raw: Mapping, where: str, depth: int) -> Conv:
        block = from_mapping(cls, raw, where)
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
        elif not _count(block.padding):
            raise ConfigError(
                f"{where}.padding: {block.padding!r} is not allowed ('same' or an integer >= 0)"
            )
        return block

    def plan(self, where: str, shape: Shape, ctx: Context) -> list[Node]:
        block = self.scaled(ctx.width)
        for what, n in (("channels", block.channels), ("input channels", shape[0])):
            if n % block.groups:
                raise ConfigError(
                    f"{where}.groups: {block.groups} does not divide the {n} {what} "
                    f"(groups must divide both {shape[0]} in and {block.channels} out)"
                )
        out = (block.channels, *spatial(block.side, shape, where))
        node = Node(where, ctx.name(self), block, shape, out)
        node.activation = block.activation or ctx.activation
        node.batch_norm = ctx.batch_norm if block.batch_norm is None else block.batch_norm
        return [node]

    def scaled(self, width: float) -> Conv:
        """The conv with `model.width` applied to its channels (a depthwise conv stays so)."""
        if width == 1:
            return self
        channels = max(1, round(self.channels * width))
        groups = channels if self.groups == self.channels else self.groups
        return dataclasses.replace(self, channels=channels, groups=groups)

    def side(self, size: int) -> int:
        reach = self.dilation * (self.conv - 1)
        return (size + 2 * self.pad - reach - 1) // self.stride + 1

    @property
    def pad(self) -> int:
        return self.dilation * (self.conv - 1) // 2 if self.padding == "same" else self.padding

    def module(self, node: Node, args: Mapping | None) -> nn.Module:
        return conv_block(
            self, node.in_shape[0], node.batch_norm, activation(node.activation, args)
        )

    def describe(self, node: Node) -> str:
        extras = [f"/{self.stride}" if self.stride > 1 else ""]
        extras.append("depthwise" if self.groups == self.channels > 1 else "")
        extras.append(f"groups {self.groups}" if 1 < self.groups < self.channels else "")
        extras.append(f"dil {self.dilation}" if self.dilation > 1 else "")
        extras.append("no activation" if node.activation == NO_ACTIVATION else "")
        text = f"{node.name}  {self.conv}×{self.conv} conv, {self.channels} ch"
        return text + "".join(f", {e}" if not e.startswith("/") else f" {e}" for e in extras if e)


@block_kind
@dataclass(frozen=True)
class Pool(Block):  # {pool: max, size: 3, stride: 1, padding: 1}
    pool: str = setting(choices=tuple(POOLS))
    size: int = setting(2, ge=1)
    stride: int | None = setting(None, ge=1)  # None: same as size
    padding: int = setting(0, ge=0)  # at most size // 2 (torch's rule)

    prefix, colour = "pool", "#fbefd9"

    @classmethod
    def parse(cls, raw: Mapping, where: str, depth: int) -> Pool:
        block = from_mapping(cls, raw, where)
        if block.padding > block.size // 2:
            raise ConfigError(
                f"{where}.padding: {block.padding} is more than half the pool size {block.size} "
                f"(allowed: 0 to {block.size // 2})"
            )
        return block

    def plan(self, where: str, shape: Shape, ctx: Context) -> list[Node]:
        out = (shape[0], *spatial(self.side, shape, where))
        return [Node(where, ctx.name(self), self, shape, out)]

    def side(self, size: int) -> int:
        return (size + 2 * self.padding - self.size) // (self.stride or self.size) + 1

    def module(self, node: Node, args: Mapping | None) -> nn.Module:
        return POOLS[self.pool](self.size, self.stride, self.padding)

    def describe(self, node: Node) -> str:
        pool = f"{node.name}  {self.pool} pool {self.size}×{self.size}"
        return pool + (f" /{self.stride}" if self.stride else "")


@block_kind
@dataclass(frozen=True)
class Dropout(Block):  # {dropout: 0.3}
    dropout: float = setting(ge=0, lt=1)

    prefix = "drop"

    def module(self, node: Node, args: Mapping | None) -> nn.Module:
        return nn.Dropout(self.dropout)

    def describe(self, node: Node) -> str:
        return f"{node.name}  dropout {self.dropout}"


@block_kind
@dataclass(frozen=True)
class Residual(Block):  # activation(body(x) + shortcut(x)); shortcut: identity or a 1×1 conv
    residual: list = setting()  # the body: a block list
    activation: str | None = setting(None, choices=BLOCK_ACTIVATIONS)  # after the sum

    prefix, colour = "res", "#efe3f7"

    @classmethod
    def parse(cls, raw: Mapping, where: str, depth: int) -> Residual:
        block = from_mapping(cls, raw, where)
        body = parse_blocks(block.residual, f"{where}.residual", depth + 1)
        return dataclasses.replace(block, residual=body)

    def count(self, where: str) -> int:
        return 1 + count_blocks(self.residual, f"{where}.residual")

    def plan(self, where: str, shape: Shape, ctx: Context) -> list[Node]:
        name = ctx.name(self)
        body, out = plan_list(self.residual, f"{where}.residual", shape, ctx)
        node = Node(where, name, self, shape, out, [body])
        node.activation, node.batch_norm = self.activation or ctx.activation, ctx.batch_norm
        if out != shape:
            stride = _shortcut_stride(shape[1:], out[1:])
            if stride is None:
                raise ConfigError(
                    f"{where}.residual: the body maps {hw(shape)} to {hw(out)}, which no "
                    "strided 1×1 shortcut can match (let the body keep the size or divide it "
                    "by a stride)"
                )
            node.projection = Conv(1, out[0], stride, 0, bias=False)
        return [node]

    def module(self, node: Node, args: Mapping | None) -> nn.Module:
        shortcut = nn.Identity()
        if node.projection is not None:  # a plain Sequential: not a `convN` of the analysis
            projection = conv_block(
                node.projection, node.in_shape[0], node.batch_norm, nn.Identity()
            )
            shortcut = nn.Sequential(OrderedDict(projection.named_children()))
        act = activation(node.activation, args)
        return ResidualBlock(sequence(node.branches[0], args), shortcut, act)

    def describe(self, node: Node) -> str:
        return f"{node.name}  residual ({node.path})"

    def merge(self, node: Node) -> str:
        return f"+ then {node.activation}"

    def shortcut(self, node: Node) -> str:
        projection = node.projection
        return "identity" if projection is None else f"1×1 projection /{projection.stride}"


@block_kind
@dataclass(frozen=True)
class Parallel(Block):  # branches (block lists) on the same input, concatenated along channels
    parallel: list = setting()

    prefix, colour = "par", "#efe3f7"

    @classmethod
    def parse(cls, raw: Mapping, where: str, depth: int) -> Parallel:
        block = from_mapping(cls, raw, where)
        if not block.parallel:
            raise ConfigError(
                f"{where}.parallel: empty (list two or more branches, each a block list)"
            )
        branches = [
            parse_blocks(branch, f"{where}.parallel[{b}]", depth + 1)
            for b, branch in enumerate(block.parallel)
        ]
        return dataclasses.replace(block, parallel=branches)

    def count(self, where: str) -> int:
        branches = enumerate(self.parallel)
        return 1 + sum(count_blocks(b, f"{where}.parallel[{i}]") for i, b in branches)

    def plan(self, where: str, shape: Shape, ctx: Context) -> list[Node]:
        name = ctx.name(self)
        branches, outs = [], []
        for b, branch in enumerate(self.parallel):
            nodes, out = plan_list(branch, f"{where}.parallel[{b}]", shape, ctx)
            if outs and out[1:] != outs[0][1:]:
                raise ConfigError(
                    f"{where}.parallel[{b}]: output {hw(out)} differs from branch 0's "
                    f"{hw(outs[0])} (branches are concatenated along channels: their sizes "
                    "must match)"
                )
            branches.append(nodes)
            outs.append(out)
        out = (sum(o[0] for o in outs), *outs[0][1:])
        return [Node(where, name, self, shape, out, branches)]

    def module(self, node: Node, args: Mapping | None) -> nn.Module:
        return ParallelBlock([sequence(branch, args) for branch in node.branches])

    def describe(self, node: Node) -> str:
        return f"{node.name}  parallel ({node.path})"

    def merge(self, node: Node) -> str:
        return "concatenate channels"


@block_kind
@dataclass(frozen=True)
class Repeat(Block):  # `blocks` `repeat` times in a row, each time with its own weights
    repeat: int = setting(ge=1)
    blocks: list = setting()

    @classmethod
    def parse(cls, raw: Mapping, where: str, depth: int) -> Repeat:
        block = from_mapping(cls, raw, where)
        return dataclasses.replace(
            block, blocks=parse_blocks(block.blocks, f"{where}.blocks", depth + 1)
        )

    def count(self, where: str) -> int:
        return self.repeat * count_blocks(self.blocks, f"{where}.blocks")

    def plan(self, where: str, shape: Shape, ctx: Context) -> list[Node]:
        nodes: list[Node] = []
        for _ in range(self.repeat):
            planned, shape = plan_list(self.blocks, f"{where}.blocks", shape, ctx)
            nodes += planned
        return nodes


def spatial(side: Any, shape: Shape, where: str) -> tuple[int, int]:
    """The H×W a conv or pool (`side`: its rule per axis) makes of `shape`'s."""
    out = (side(shape[1]), side(shape[2]))
    if min(out) < 1:
        raise ConfigError(
            f"{where}: shrinks its {hw(shape)} input below 1x1 "
            "(remove a pooling/stride or use a larger input)"
        )
    return out


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _shortcut_stride(size: tuple[int, int], out: tuple[int, int]) -> int | None:
    """The stride s of a 1×1 conv (no padding) taking `size` to `out`, if there is one."""
    for s in range(1, max(size) + 1):
        if all((i - 1) // s + 1 == o for i, o in zip(size, out, strict=True)):
            return s
    return None


def check_activation_args(args_by_name: Mapping) -> None:
    """Every entry of `model.activation_args` names an activation and passes only keyword
    arguments of its torch.nn class."""
    check_mapping(args_by_name, "model.activation_args", ACTIVATIONS)
    for name, args in args_by_name.items():
        allowed = set(inspect.signature(activation_class(name)).parameters) - {"inplace"}
        check_mapping(args or {}, f"model.activation_args.{name}", allowed)


def activation_class(name: str) -> type[nn.Module]:
    return getattr(nn, ACTIVATIONS[name])


def activation(name: str, args_by_name: Mapping | None) -> nn.Module:
    """The activation module `name` ("none": identity) with its `model.activation_args`."""
    if name == NO_ACTIVATION:
        return nn.Identity()
    try:
        return activation_class(name)(**dict((args_by_name or {}).get(name) or {}))
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


def conv_block(block: Conv, in_channels: int, batch_norm: bool, act: nn.Module) -> ConvBlock:
    parts: OrderedDict[str, nn.Module] = OrderedDict(
        conv=nn.Conv2d(
            in_channels,
            block.channels,
            block.conv,
            block.stride,
            block.pad,
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
