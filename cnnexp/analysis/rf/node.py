"""What the rules of receptive_field.py share: a field, one op's step, the node being mapped."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import fx
from torch.fx.passes.shape_prop import TensorMetadata

from cnnexp.analysis.rf.axis import AxisField, union
from cnnexp.analysis.rf.layout import Digit, Layout, reach, spatial_digits

Pair = tuple[int, int]
AXES = (0, 1)  # height, width
NCHW, NHWC = (-2, -1), (-3, -2)  # where H and W are, counted from the last axis

PERMUTES = {"permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis"}
VIEWS = {"reshape", "view", "flatten", "unflatten", "squeeze", "unsqueeze"}
SPLITS = {"chunk", "split", "tensorsplit"}
PRODUCTS = {"einsum", "matmul", "bmm", "mm"}
WINDOW_KINDS = {"conv2d": "conv", "maxpool2d": "pool", "avgpool2d": "pool", "lppool2d": "pool"}
KINDS = {  # key: op name, lower case, no "_"; others: pointwise, merge or global by shapes
    **WINDOW_KINDS,
    "add": "add", "iadd": "add", "cat": "cat", "concat": "cat", "concatenate": "cat",
    "linear": "linear", "flatten": "flatten",
    "adaptiveavgpool2d": "adaptive_pool", "adaptivemaxpool2d": "adaptive_pool",
    "patchmergingpad": "patch_merge",
    **dict.fromkeys(PERMUTES | VIEWS - {"flatten"}, "layout"),
    **dict.fromkeys(PRODUCTS, "matmul"),
}  # fmt: skip
LOST = "H and W no longer separate axes"


class ReceptiveFieldError(ValueError):
    """The module cannot be traced, or uses an op whose pixel mapping is unknown."""


@dataclass(frozen=True)
class Field:
    """Every unit's field per image axis, and where the image's rows and columns are in the
    tensor (None once they cannot be followed: then the field covers the input)."""

    axes: tuple[AxisField, AxisField]
    layout: Layout | None

    @property
    def covers_input(self) -> bool:
        return all(a.whole for a in self.axes)


@dataclass(frozen=True)
class Window:
    kernel: Pair
    stride: Pair
    padding: Pair


@dataclass(frozen=True)
class Step:
    field: Field
    kind: str
    window: Window | None = None
    aligned: bool = True
    note: str = ""


@dataclass(frozen=True)
class Op:
    """The node being mapped, with what every rule needs."""

    node: fx.Node
    graph: fx.GraphModule
    name: str  # lower case, no "_": MaxPool2d and max_pool2d are both maxpool2d
    fields: dict[fx.Node, Field]
    image_hw: Pair

    @property
    def shape(self) -> tuple[int, ...]:
        return shape_of(self.node)

    def kind(self, default: str) -> str:
        return KINDS.get(self.name, default)

    def whole(self, layout: Layout | None = None) -> Field:
        return Field(tuple(AxisField.covering(n) for n in self.image_hw), layout)

    def mixed(self, f: Field, digits: list[Digit]) -> tuple[AxisField, AxisField]:
        """`f` once each position sees every position whose digits differ only in `digits`."""
        axes = list(f.axes)
        for i in AXES:
            mine = list(dict.fromkeys(d for d in digits if d.axis == i))
            if mine:
                seen = reach(mine, [d for d in spatial_digits(f.layout) if d.axis == i])
                axes[i] = (
                    AxisField.covering(self.image_hw[i])
                    if seen is None
                    else axes[i].gather(1, seen)
                )
        return tuple(axes)


def union_fields(fields: list[Field]) -> tuple[tuple[AxisField, AxisField], bool, str]:
    """Union of the paths' fields, per axis; a note when they are not aligned."""
    if len(fields) == 1:
        return fields[0].axes, True, ""
    merged = [union([f.axes[i] for f in fields]) for i in AXES]
    axes, aligned = tuple(m[0] for m in merged), all(m[1] for m in merged)
    strides = sorted({tuple(a.stride for a in f.axes) for f in fields})
    if aligned:
        return axes, True, ""
    if len(strides) > 1:
        return axes, False, f"misaligned: paths with strides {strides}; widest path reported"
    centres = sorted({tuple(sum(a.span(0)) / 2 for a in f.axes) for f in fields})
    return axes, False, f"misaligned: field centres {centres}; union of fields reported"


def sums_note(summed: list[Digit], axes: tuple[AxisField, ...], attention: bool = False) -> str:
    """E.g. "attention: covers its window (7×7 positions)": what summing over `summed` gave."""
    if not summed:
        return ""
    prefix = "attention: " if attention else "sums over positions: "
    if all(a.whole for a in axes):
        return f"{prefix}covers the whole input"
    sizes = [
        "all" if axes[i].whole else str(math.prod(d.size for d in set(summed) if d.axis == i))
        for i in AXES
    ]
    return f"{prefix}covers its window ({sizes[0]}×{sizes[1]} positions)"


def op_name(node: fx.Node, graph: fx.GraphModule) -> str:
    if node.op == "call_module":
        return type(graph.get_submodule(node.target)).__name__
    return node.target if isinstance(node.target, str) else node.target.__name__


def shape_of(node: fx.Node) -> tuple[int, ...] | None:
    """Output shape (of the first tensor for a tuple output), None for non-tensors."""
    meta = node.meta.get("tensor_meta")
    if isinstance(meta, tuple | list) and not isinstance(meta, TensorMetadata):
        meta = meta[0] if meta else None
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


def arg(node: fx.Node, index: int, name: str, default: object) -> object:
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)


def pair(value: int | tuple[int, ...] | list[int]) -> Pair:
    return (value, value) if isinstance(value, int) else (value[0], value[-1])


def show_pair(pair: Pair) -> str:
    """`7` for (7, 7), `351x255` for (351, 255)."""
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"
