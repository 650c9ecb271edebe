"""The architecture picture: the net as boxes, one per block, with output shape, parameters and
receptive field; residual and parallel blocks put their paths side by side.

A cnnexp net is drawn from its plan (the YAML graph, with each block's path); any other net (a
torchvision reference) as its top-level modules, Sequential stages opened one level.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch, Rectangle
from torch import nn

from cnnexp.analysis.receptive_field import (
    eval_mode,
    field_cells,
    field_of,
    module_device,
    receptive_fields,
)
from cnnexp.models.graph import Node, Plan

BOX_W, BOX_H, GAP, PAD, HEADER = 3.4, 0.78, 0.32, 0.18, 0.34  # layout units (inches)


@dataclass
class Box:
    """A block: `title` on top, `detail` (shape · params · RF) below. A group (residual,
    parallel) holds `columns` of boxes drawn side by side and joined by `merge`."""

    title: str
    detail: str = ""
    columns: list[list[Box]] = field(default_factory=list)
    merge: Box | None = None
    colour: str = "#e8eef7"


def architecture_figure(
    net: nn.Module, input_shape: tuple[int, int, int], plan: Plan | None = None, title: str = ""
) -> Figure:
    """The picture of `net` for a C×H×W input (from `plan` when it is a cnnexp net)."""
    facts = _Facts(net, input_shape)
    body = _plan_boxes(plan.nodes, facts) if plan else _module_boxes(net, facts)
    shape = "×".join(map(str, input_shape))
    boxes = [Box("input", shape, colour="#f2f2f2"), *body]
    if plan:
        boxes.append(_head_box(net, facts))
    width, height = _measure_column(boxes)
    fig = Figure(figsize=(width + 2 * PAD, height + 2 * PAD + 0.4), layout=None)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set(xlim=(0, width + 2 * PAD), ylim=(height + 2 * PAD + 0.4, 0))
    ax.axis("off")
    ax.text(PAD, 0.3, title, fontsize=10, weight="bold", va="center")
    _draw_column(ax, boxes, PAD + width / 2, PAD + 0.4)
    return fig


class _Facts:
    """Parameters and receptive field (r at the module's last op) per qualified module name."""

    def __init__(self, net: nn.Module, input_shape: tuple[int, int, int]) -> None:
        self.input_shape = input_shape
        self.modules = dict(net.named_modules())
        self.by_short = {name.rpartition(".")[2]: name for name in self.modules if name}
        self.rows = receptive_fields(net, input_shape)

    def params(self, name: str) -> int:
        return sum(p.numel() for p in self.modules[name].parameters())

    def rf(self, name: str) -> str:
        row = field_of(self.rows, name)
        if row is None:
            return ""
        return "whole input" if row.covers_input else f"RF {field_cells(row)[0]}"


def _plan_boxes(nodes: list[Node], facts: _Facts) -> list[Box]:
    return [_node_box(node, facts) for node in nodes]


def _node_box(node: Node, facts: _Facts) -> Box:
    """A block's box: its kind says its title and colour; a block holding branches (residual,
    parallel) draws them side by side (a residual's shortcut beside its body)."""
    module = facts.by_short[node.name]
    detail = _detail(node.out_shape, facts.params(module), facts.rf(module))
    block = node.block
    if not node.branches:
        return Box(block.describe(node), detail, colour=block.colour)
    columns = [_plan_boxes(branch, facts) for branch in node.branches]
    shortcut = block.shortcut(node)
    if shortcut:
        params = facts.params(f"{module}.shortcut")
        columns.append([Box(shortcut, f"{params:,} params" if params else "", colour="#f2f2f2")])
    merge = Box(block.merge(node), detail, colour=block.colour)
    return Box(block.describe(node), columns=columns, merge=merge)


def _head_box(net: nn.Module, facts: _Facts) -> Box:
    head = net.head
    kinds = " → ".join(type(m).__name__ for m in head.children())
    return Box(f"head  {kinds}", f"{facts.params('head'):,} params", colour="#f2f2f2")


def _module_boxes(net: nn.Module, facts: _Facts) -> list[Box]:
    """Top-level modules (Sequential stages opened one level) with their output shapes."""
    shown = []
    for name, child in net.named_children():
        parts = list(child.named_children()) if isinstance(child, nn.Sequential) else []
        if parts and len(parts) <= 24:
            shown += [(f"{name}.{sub}", m) for sub, m in parts]
        else:
            shown.append((name, child))
    shapes = _output_shapes(net, [m for _, m in shown], facts)
    return [
        Box(
            f"{name}  {type(m).__name__}",
            _detail(shapes.get(id(m)), facts.params(name), facts.rf(name)),
        )
        for name, m in shown
    ]


def _output_shapes(net: nn.Module, modules: list[nn.Module], facts: _Facts) -> dict:
    shapes: dict[int, tuple] = {}
    handles = [
        m.register_forward_hook(
            lambda mod, _i, out: (
                shapes.__setitem__(id(mod), tuple(out.shape[1:]))
                if isinstance(out, torch.Tensor)
                else None
            )
        )
        for m in modules
    ]
    try:
        with eval_mode(net), torch.no_grad():
            net(torch.zeros(1, *facts.input_shape, device=module_device(net)))
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def _detail(shape: tuple | None, params: int, rf: str) -> str:
    parts = ["×".join(map(str, shape)) if shape else "", f"{params:,} params" if params else "", rf]
    return "  ·  ".join(p for p in parts if p)


# ---- layout: a column is boxes top to bottom; a group puts columns side by side ----
def _measure(box: Box) -> tuple[float, float]:
    if not box.columns:
        return BOX_W, BOX_H
    sizes = [_measure_column(c) for c in box.columns]
    width = sum(w for w, _ in sizes) + GAP * (len(sizes) - 1) + 2 * PAD
    height = HEADER + max(h for _, h in sizes) + GAP + BOX_H + PAD
    return max(width, BOX_W + 2 * PAD), height


def _measure_column(boxes: list[Box]) -> tuple[float, float]:
    sizes = [_measure(b) for b in boxes]
    return max(w for w, _ in sizes), sum(h for _, h in sizes) + GAP * (len(sizes) - 1)


def _draw_column(ax, boxes: list[Box], x: float, y: float) -> tuple[float, float]:
    """Draw `boxes` centred on x from y down; returns the y of the first top and last bottom."""
    top, previous = y, None
    for box in boxes:
        if previous is not None:
            _arrow(ax, x, previous, x, y)
        previous = _draw(ax, box, x, y)
        y = previous + GAP
    return top, previous


def _draw(ax, box: Box, x: float, y: float) -> float:
    """Draw one box (or group) with its top centre at (x, y); returns its bottom y."""
    width, height = _measure(box)
    if not box.columns:
        ax.add_patch(
            FancyBboxPatch(
                (x - BOX_W / 2, y),
                BOX_W,
                BOX_H,
                boxstyle="round,pad=0,rounding_size=0.08",
                fc=box.colour,
                ec="#555555",
                lw=0.8,
            )
        )
        ax.text(x, y + 0.27, box.title, ha="center", va="center", fontsize=7.5, weight="bold")
        ax.text(x, y + 0.56, box.detail, ha="center", va="center", fontsize=7, color="#333333")
        return y + BOX_H
    ax.add_patch(
        Rectangle((x - width / 2, y), width, height, fill=False, ec="#888888", ls="--", lw=0.8)
    )
    ax.text(x - width / 2 + 0.08, y + HEADER / 2, box.title, fontsize=7.5, va="center")
    sizes = [_measure_column(c) for c in box.columns]
    left = x - (sum(w for w, _ in sizes) + GAP * (len(sizes) - 1)) / 2
    merge_y = y + HEADER + max(h for _, h in sizes) + GAP
    for column, (w, _) in zip(box.columns, sizes, strict=True):
        cx = left + w / 2
        _arrow(ax, x, y, cx, y + HEADER)
        _, bottom = _draw_column(ax, column, cx, y + HEADER)
        join = merge_y - GAP / 2  # short columns run straight down first: no line crosses a box
        ax.plot([cx, cx], [bottom, join], color="#555555", lw=0.8)
        _arrow(ax, cx, join, x, merge_y)
        left += w + GAP
    _draw(ax, box.merge, x, merge_y)
    return y + height


def _arrow(ax, x0: float, y0: float, x1: float, y1: float) -> None:
    ax.annotate(
        "",
        (x1, y1),
        (x0, y0),
        arrowprops={"arrowstyle": "-|>", "color": "#555555", "lw": 0.8, "shrinkA": 0, "shrinkB": 0},
    )


def model_figure(model_cfg, net: nn.Module, input_shape: tuple[int, int, int]) -> Figure:
    """The picture of the net `model_cfg` (a checked model config) built, titled by its name; a
    block graph's net carries its plan (cnnexp/models/graph.py build_net), other nets have none."""
    plan = getattr(net, "plan", None)
    shape = "×".join(map(str, input_shape))
    return architecture_figure(net, input_shape, plan, f"{model_cfg.name}  (input {shape})")
