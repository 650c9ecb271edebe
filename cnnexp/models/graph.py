"""The block-graph language: YAML block lists -> parsed blocks -> a checked plan -> nn.Module.

Each block kind is one class registered with `@block_kind` (cnnexp/models/blocks.py holds the
built-in ones); its first field is the YAML key naming the kind (`conv: 3`), its fields are the
block's keys. A kind knows how to parse itself, how many blocks it expands to, how to plan itself
(output shape, children) and build its module, and what its box in the architecture picture says.
This module only walks lists of them, so adding a kind touches the file that defines it.

`parse_blocks` turns a YAML list into blocks once (validation does it for `model.blocks`);
`plan_net` propagates the C×H×W shape through the whole graph from the data set's input shape,
so a mistake stops before any data loads, as one ConfigError naming the block's path
(`model.blocks[2].parallel[0][0].stride: …`). `build_net` turns the plan into modules named for
per-layer analysis: conv blocks are `convN` (N counts convs depth-first through the graph, so a
plain list keeps conv1, conv2, …), likewise poolN, dropN, resN, parN.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from cnnexp.errors import ConfigError
from cnnexp.limits import from_mapping

Shape = tuple[int, int, int]  # C, H, W
# Sane bounds, checked before any block is planned: 1000 blocks is ~3x ResNet-152's convs and
# pools, and planning, tracing and drawing a net grow with its blocks (task=inspect of 500 takes
# about a minute here); a YAML that nests deeper than 16 levels is a mistake, not a net.
MAX_BLOCKS = 1000
MAX_NESTING = 16
BLOCKS: dict[str, type[Block]] = {}  # YAML key of the kind -> its class


def block_kind(cls: type[Block]) -> type[Block]:
    """Class decorator: `cls` (a dataclass whose first field names the kind) becomes a kind
    of block the YAML may use."""
    BLOCKS[dataclasses.fields(cls)[0].name] = cls
    return cls


class Block:
    """What every block kind provides; the defaults fit a block that keeps its input's shape
    and holds no other blocks."""

    prefix: ClassVar[str]  # its module's name: prefix + a count (conv3, pool1)
    colour: ClassVar[str] = "#f2f2f2"  # its box in the architecture picture
    convolves: ClassVar[bool] = False  # a CNN needs at least one block that does

    @classmethod
    def parse(cls, raw: Mapping, where: str, depth: int) -> Block:
        """The block from its YAML mapping (keys, types and ranges of its fields checked)."""
        return from_mapping(cls, raw, where)

    def count(self, where: str) -> int:
        """Blocks this one expands to (a repeat multiplies, a group adds its children)."""
        return 1

    def plan(self, where: str, shape: Shape, ctx: Context) -> list[Node]:
        """Its nodes for an input of `shape` (ConfigError names `where` when it cannot take it)."""
        return [Node(where, ctx.name(self), self, shape, shape)]

    def module(self, node: Node, args: Mapping | None) -> nn.Module:
        raise NotImplementedError

    def describe(self, node: Node) -> str:
        """The title of its box in the architecture picture."""
        raise NotImplementedError

    def merge(self, node: Node) -> str:
        """A block holding branches: how the picture says they are joined."""
        raise NotImplementedError

    def shortcut(self, node: Node) -> str | None:
        """A path drawn beside the branches (a residual's identity or projection), if any."""
        return None


@dataclass
class Node:
    """One block of the planned graph: where it is written, its module name and shapes.
    `branches` holds a residual's [body] or a parallel's branches."""

    path: str  # e.g. model.blocks[2].parallel[0][0]
    name: str  # module name: conv3, pool1, res1, par1, drop1
    block: Block
    in_shape: Shape
    out_shape: Shape
    branches: list[list[Node]] = field(default_factory=list)
    activation: str | None = None  # conv/residual: the resolved activation name or "none"
    batch_norm: bool = False  # conv (and a residual's projection)
    projection: Block | None = None  # a residual's 1×1 shortcut when the body changes the shape


@dataclass
class Plan:
    nodes: list[Node]  # top level, in order (repeats expanded)
    input_shape: Shape
    out_shape: Shape  # the features' output, before the head

    def walk(self) -> list[Node]:
        """Every node, depth-first in forward order."""
        return list(walk(self.nodes))


def walk(nodes: list[Node]) -> Iterator[Node]:
    for node in nodes:
        yield node
        for branch in node.branches:
            yield from walk(branch)


@dataclass
class Context:
    """What planning a block needs besides its input: the model's defaults and name counts."""

    activation: str
    batch_norm: bool
    width: float
    counts: dict[str, int] = field(default_factory=dict)

    def name(self, block: Block) -> str:
        self.counts[block.prefix] = self.counts.get(block.prefix, 0) + 1
        return f"{block.prefix}{self.counts[block.prefix]}"


def parse_blocks(raw: Any, where: str = "model.blocks", depth: int = 0) -> list[Block]:
    """A YAML block list -> blocks, nested lists included; ConfigError names the path."""
    if depth > MAX_NESTING:
        raise ConfigError(
            f"{where}: blocks nested more than {MAX_NESTING} levels deep "
            f"(allowed: at most {MAX_NESTING} levels of residual, parallel and repeat)"
        )
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise ConfigError(
            f"{where}: {raw!r} is not a list of blocks like [{{conv: 3, channels: 8}}]"
        )
    if not raw:
        raise ConfigError(
            f"{where}: empty (list at least one block, e.g. {{conv: 3, channels: 8}})"
        )
    return [parse_block(item, f"{where}[{i}]", depth) for i, item in enumerate(raw)]


def parse_block(raw: Any, where: str, depth: int = 0) -> Block:
    """One YAML mapping -> a Block; the key naming the block kind says which."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: {raw!r} is not a mapping like {{conv: 3, channels: 32}}")
    kinds = [k for k in BLOCKS if k in raw]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: {dict(raw)!r} must have exactly one of {', '.join(BLOCKS)}")
    return BLOCKS[kinds[0]].parse(raw, where, depth)


def count_blocks(blocks: list[Block], where: str) -> int:
    """Blocks the list expands to (repeats multiplied out, branches included), counted without
    expanding anything; ConfigError past MAX_BLOCKS, naming the key that makes it so long."""
    total = 0
    for i, block in enumerate(blocks):
        at = f"{where}[{i}]"
        total += block.count(at)
        if total > MAX_BLOCKS:
            repeat = getattr(block, "repeat", None)
            what = f"{at}.repeat: {repeat} makes" if repeat else f"{where}: these make"
            raise ConfigError(
                f"{what} the net at least {total:,} blocks long "
                f"(allowed: at most {MAX_BLOCKS:,} blocks in all, repeats expanded)"
            )
    return total


def plan_net(
    blocks: list[Block],
    input_shape: Shape,
    activation: str = "relu",
    batch_norm: bool = True,
    width: float = 1.0,
) -> Plan:
    """Check a whole parsed block graph against the C×H×W input; ConfigError names the path."""
    count_blocks(blocks, "model.blocks")
    ctx = Context(activation, batch_norm, width)
    nodes, shape = plan_list(blocks, "model.blocks", tuple(input_shape), ctx)
    if not any(n.block.convolves for n in walk(nodes)):
        raise ConfigError("model.blocks: no conv block (a CNN needs at least one)")
    return Plan(nodes, tuple(input_shape), shape)


def plan_list(
    blocks: list[Block], where: str, shape: Shape, ctx: Context
) -> tuple[list[Node], Shape]:
    """The nodes of a block list for an input of `shape`, and the list's output shape."""
    nodes: list[Node] = []
    for i, block in enumerate(blocks):
        planned = block.plan(f"{where}[{i}]", shape, ctx)
        nodes += planned
        shape = planned[-1].out_shape if planned else shape
    return nodes, shape


def build_net(
    plan: Plan, num_classes: int, head: str, activation_args: Mapping | None
) -> nn.Module:
    """features (conv1, pool1, res1, …) + head (gap|flatten + linear), named for analysis."""
    channels, h, w = plan.out_shape
    if head == "gap":
        head_layers = [
            ("pool", nn.AdaptiveAvgPool2d(1)),
            ("flatten", nn.Flatten()),
            ("fc", nn.Linear(channels, num_classes)),
        ]
    else:
        head_layers = [("flatten", nn.Flatten()), ("fc", nn.Linear(channels * h * w, num_classes))]
    net = nn.Sequential(
        OrderedDict(
            features=sequence(plan.nodes, activation_args),
            head=nn.Sequential(OrderedDict(head_layers)),
        )
    )
    net.plan = plan  # what it was built from: the architecture picture draws it, unplanned again
    return net


def sequence(nodes: list[Node], args: Mapping | None) -> nn.Sequential:
    return nn.Sequential(OrderedDict((node.name, node.block.module(node, args)) for node in nodes))


def hw(shape: Shape) -> str:
    return f"{shape[1]}x{shape[2]}"
