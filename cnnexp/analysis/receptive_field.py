"""Receptive fields of any traceable nn.Module, layer by layer.

After Araujo, Norris & Sim, "Computing Receptive Fields of Convolutional Neural Networks"
(Distill, 2019). Every quantity is relative to the network input, per axis as (height, width):

- size r: how many input pixels one unit of the layer sees;
- stride S: how far apart (in input pixels) neighbouring units' fields start (the "jump");
- padding P: how far unit 0's field starts before the input's first pixel.

Unit f sees input pixels [f*S - P, f*S - P + r - 1]. A layer with kernel k (dilation folded in:
d(k-1)+1), stride s and padding p maps (r, S, P) to (r + (k-1)S, sS, P + pS). Element-wise ops
pass fields through; adds and concatenations take the union of their inputs' fields; once the
spatial layout is gone (global pooling, flatten, linear) a row covers the whole input.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

Pair = tuple[int, int]
_AXES = (0, 1)  # height, width

_WINDOW_KINDS = {"conv2d": "conv", "maxpool2d": "pool", "avgpool2d": "pool", "lppool2d": "pool"}
_KINDS = {  # key: op name, lower case, no "_"; others: pointwise, merge or global by shapes
    **_WINDOW_KINDS,
    "add": "add", "iadd": "add", "cat": "cat", "concat": "cat", "concatenate": "cat",
    "linear": "linear", "flatten": "flatten",
    "adaptiveavgpool2d": "adaptive_pool", "adaptivemaxpool2d": "adaptive_pool",
}  # fmt: skip


class ReceptiveFieldError(ValueError):
    """The module cannot be traced, or uses an op whose pixel mapping is unknown."""


@dataclass(frozen=True)
class RFRow:
    """One layer's receptive field. Pairs are (height, width); `.size`, `.stride` and `.padding`
    are the height-axis values (the same as width for square inputs and kernels)."""

    name: str  # qualified module name, or the fx node name for functional ops
    op: str  # module class or function name, e.g. "Conv2d", "add"
    kind: str  # conv, pool, adaptive_pool, add, cat, merge, pointwise, flatten, linear, global
    kernel: Pair | None  # effective kernel d(k-1)+1 of conv/pool rows, else None
    layer_stride: Pair | None  # the layer's own stride for conv/pool rows, else None
    output_shape: tuple[int, ...]
    size_hw: Pair  # r
    stride_hw: Pair  # S
    padding_hw: Pair  # P
    covers_input: bool = False  # spatial layout gone: r = S = input size, P = 0
    aligned: bool = True  # False when merged paths have different S or field centres
    note: str = ""

    @property
    def size(self) -> int:
        return self.size_hw[0]

    @property
    def stride(self) -> int:
        return self.stride_hw[0]

    @property
    def padding(self) -> int:
        return self.padding_hw[0]


@dataclass(frozen=True)
class _Field:
    size: Pair
    stride: Pair
    padding: Pair
    covers_input: bool = False

    def span(self, axis: int) -> tuple[int, int]:  # first and last input pixel seen by unit 0
        return -self.padding[axis], self.size[axis] - 1 - self.padding[axis]


@dataclass(frozen=True)
class _Window:
    kernel: Pair
    stride: Pair
    padding: Pair

    def apply(self, f: _Field) -> _Field:
        return _Field(
            tuple(f.size[i] + (self.kernel[i] - 1) * f.stride[i] for i in _AXES),
            tuple(f.stride[i] * self.stride[i] for i in _AXES),
            tuple(f.padding[i] + self.padding[i] * f.stride[i] for i in _AXES),
        )


@dataclass(frozen=True)
class _Step:
    field: _Field
    kind: str
    window: _Window | None = None
    aligned: bool = True
    note: str = ""


def receptive_fields(module: nn.Module, input_shape: tuple[int, int, int]) -> list[RFRow]:
    """One row per tensor-producing op of `module` (traced with torch.fx) for a C×H×W input.

    Only shapes are computed (one probe pass in eval mode, no_grad), so a model built on the
    meta device works too and costs nothing.
    """
    graph = _traced(module, input_shape)
    image_hw = (input_shape[1], input_shape[2])
    fields: dict[fx.Node, _Field] = {}
    rows = []
    for node in graph.graph.nodes:
        if node.op == "placeholder" and not fields:  # the first argument is the image
            fields[node] = _Field((1, 1), (1, 1), (0, 0))
            continue
        meta = node.meta.get("tensor_meta")
        sources = [a for a in node.all_input_nodes if a in fields]
        if node.op == "output" or not sources or meta is None:
            continue
        step = _step(node, graph, sources, fields, image_hw)
        fields[node] = step.field
        if isinstance(meta, TensorMetadata):
            rows.append(_row(node, graph, step, tuple(meta.shape)))
    return rows


def rf_at_last_spatial_layer(rows: list[RFRow]) -> int:
    """RF size (height axis) of the last row that still has spatial layout."""
    spatial = [row for row in rows if not row.covers_input]
    if not spatial:
        raise ValueError("no layer with spatial layout: nothing has a receptive field")
    return spatial[-1].size


def format_table(rows: list[RFRow]) -> str:
    """Plain-text table: name, op, kind, kernel, layer stride, output shape, r, S, P, notes."""
    header = ("name", "op", "kind", "k", "s", "output", "r", "S", "P", "notes")
    lines = [header] + [_table_cells(row) for row in rows]
    widths = [max(map(len, column)) for column in zip(*lines, strict=True)]
    return "\n".join("  ".join(map(str.ljust, line, widths)).rstrip() for line in lines)


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put `module` in eval mode for the block, then restore each submodule's own flag."""
    flags = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags.items():
            m.training = flag


def module_device(module: nn.Module) -> torch.device:
    """Where `module`'s parameters live (CPU for a module without any)."""
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _traced(module: nn.Module, input_shape: tuple[int, int, int]) -> fx.GraphModule:
    probe = torch.zeros(1, *input_shape, device=module_device(module))
    with eval_mode(module), torch.no_grad():
        try:
            graph = module if isinstance(module, fx.GraphModule) else fx.symbolic_trace(module)
        except Exception as err:  # fx fails in many ways: TraceError, TypeError, NotImplemented…
            raise ReceptiveFieldError(
                f"cannot trace {type(module).__name__} with torch.fx, which receptive fields "
                f"need ({type(err).__name__}: {err})"
            ) from err
        ShapeProp(graph).propagate(probe)
    return graph


def _step(
    node: fx.Node,
    graph: fx.GraphModule,
    sources: list[fx.Node],
    fields: dict[fx.Node, _Field],
    image_hw: Pair,
) -> _Step:
    """How `node` maps its data inputs' fields to its output field."""
    name = _op_name(node, graph).lower().replace("_", "")  # MaxPool2d, max_pool2d: maxpool2d
    whole = _Field(image_hw, image_hw, (0, 0), covers_input=True)
    local = [a for a in sources if not fields[a].covers_input]
    out_hw = _spatial_hw(node)
    default_kind = "merge" if len(sources) > 1 else "pointwise"
    if not local:  # e.g. the convs of a squeeze-excitation gate
        return _Step(whole, _KINDS.get(name, default_kind))
    if out_hw is None or name == "linear":
        return _Step(whole, _KINDS.get(name, "global"))
    if name in _WINDOW_KINDS:
        window = _window(node, graph, name)
        return _Step(window.apply(fields[local[0]]), _WINDOW_KINDS[name], window)
    in_hw = _spatial_hw(local[0])
    if name.startswith("adaptive") and in_hw != out_hw:
        return _adaptive_pool(fields[local[0]], in_hw, out_hw, whole)
    if any(_spatial_hw(a) != out_hw for a in local):
        if out_hw == (1, 1):  # e.g. mean over H and W with keepdim
            return _Step(whole, "global")
        raise ReceptiveFieldError(
            f"no receptive-field rule for {node.format_node()}: spatial size {in_hw} -> {out_hw}"
        )
    field, aligned, note = _union([fields[a] for a in local])
    if len(local) < len(sources):
        note = "; ".join(filter(None, [note, "global inputs (e.g. channel gates) not counted"]))
    return _Step(field, _KINDS.get(name, default_kind), aligned=aligned, note=note)


def _union(fields: list[_Field]) -> tuple[_Field, bool, str]:
    """Union of unit 0's fields over paths sharing S; else the widest path, flagged."""
    if len({f.stride for f in fields}) > 1:
        strides = sorted({f.stride for f in fields})
        widest = max(fields, key=lambda f: f.size)
        return widest, False, f"misaligned: paths with strides {strides}; widest path reported"
    first = tuple(min(f.span(i)[0] for f in fields) for i in _AXES)
    last = tuple(max(f.span(i)[1] for f in fields) for i in _AXES)
    size = tuple(last[i] - first[i] + 1 for i in _AXES)
    field = _Field(size, fields[0].stride, tuple(-first[i] for i in _AXES))
    centres = sorted({tuple(sum(f.span(i)) / 2 for i in _AXES) for f in fields})
    if len(centres) == 1:
        return field, True, ""
    return field, False, f"misaligned: field centres {centres}; union of fields reported"


def _adaptive_pool(f: _Field, in_hw: Pair, out_hw: Pair, whole: _Field) -> _Step:
    """Adaptive pooling is a plain pool when sizes divide evenly, else it is treated as global."""
    if out_hw == (1, 1) or any(i % o for i, o in zip(in_hw, out_hw, strict=True)):
        return _Step(whole, "adaptive_pool")
    ratio = tuple(in_hw[i] // out_hw[i] for i in _AXES)
    window = _Window(ratio, ratio, (0, 0))
    return _Step(window.apply(f), "adaptive_pool", window)


def _window(node: fx.Node, graph: fx.GraphModule, name: str) -> _Window:
    """Kernel, stride, padding, dilation of a conv or pool module or function."""
    if node.op == "call_module":
        m = graph.get_submodule(node.target)
        kernel, padding = m.kernel_size, getattr(m, "padding", 0)
        stride = m.stride or kernel  # LPPool2d keeps stride=None
        dilation = getattr(m, "dilation", 1)
    elif name == "conv2d":  # conv2d(input, weight, bias, stride, padding, dilation, groups)
        kernel = tuple(node.args[1].meta["tensor_meta"].shape[-2:])
        stride, padding = _arg(node, 3, "stride", 1), _arg(node, 4, "padding", 0)
        dilation = _arg(node, 5, "dilation", 1)
    else:  # max_pool2d(input, kernel_size, stride, padding, dilation, …); avg_pool2d: no dilation
        kernel, padding = _arg(node, 1, "kernel_size", 1), _arg(node, 3, "padding", 0)
        stride = _arg(node, 2, "stride", None) or kernel
        dilation = _arg(node, 4, "dilation", 1) if name == "maxpool2d" else 1
    kernel, dilation = _pair(kernel), _pair(dilation)
    effective = tuple(dilation[i] * (kernel[i] - 1) + 1 for i in _AXES)
    if isinstance(padding, str):  # "valid" or (stride-1 only) "same"
        padding = (0, 0) if padding == "valid" else tuple((k - 1) // 2 for k in effective)
    return _Window(effective, _pair(stride), _pair(padding))


def _row(node: fx.Node, graph: fx.GraphModule, step: _Step, shape: tuple[int, ...]) -> RFRow:
    f, w = step.field, step.window
    return RFRow(
        name=node.target if node.op == "call_module" else node.name,
        op=_op_name(node, graph),
        kind=step.kind,
        kernel=w.kernel if w else None,
        layer_stride=w.stride if w else None,
        output_shape=shape,
        size_hw=f.size,
        stride_hw=f.stride,
        padding_hw=f.padding,
        covers_input=f.covers_input,
        aligned=step.aligned,
        note=step.note,
    )


def _table_cells(row: RFRow) -> tuple[str, ...]:
    notes = "; ".join(filter(None, ["covers input" if row.covers_input else "", row.note]))
    shape = "×".join(map(str, row.output_shape))
    layer = tuple(_show(p) if p else "-" for p in (row.kernel, row.layer_stride))
    fields = (_show(row.size_hw), _show(row.stride_hw), _show(row.padding_hw))
    return (row.name, row.op, row.kind, *layer, shape, *fields, notes)


def _op_name(node: fx.Node, graph: fx.GraphModule) -> str:
    if node.op == "call_module":
        return type(graph.get_submodule(node.target)).__name__
    return node.target if isinstance(node.target, str) else node.target.__name__


def _spatial_hw(node: fx.Node) -> Pair | None:
    """Last two dims of a ≥4-D output (first tensor of a tuple output), else None."""
    meta = node.meta.get("tensor_meta")
    if isinstance(meta, tuple | list) and not isinstance(meta, TensorMetadata):
        meta = meta[0] if meta else None
    if not isinstance(meta, TensorMetadata) or len(meta.shape) < 4:
        return None
    return (meta.shape[-2], meta.shape[-1])


def _arg(node: fx.Node, index: int, name: str, default: object) -> object:
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)


def _pair(value: int | tuple[int, ...] | list[int]) -> Pair:
    return (value, value) if isinstance(value, int) else (value[0], value[-1])


def _show(pair: Pair) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"
