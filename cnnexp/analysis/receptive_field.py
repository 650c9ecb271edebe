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

H and W are followed through permute, transpose, flatten, reshape and view, so channels-last code
(ConvNeXt, Swin) works: a Linear, LayerNorm or GELU on the channel axis acts per position and
passes the field through; where H and W can no longer be followed, the field covers the input.
Attention covers the whole input, except Swin's window attention, which grows the field by its
window, (w-1)S. Which window a unit sees depends on its position, so once windows are stacked on
windows (Swin's shifted blocks, a conv or patch merging after them) the field is reported as
covering the input.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

Pair = tuple[int, int]
_AXES = (0, 1)  # height, width
_NCHW, _NHWC = (-2, -1), (-3, -2)  # where H and W are, counted from the last axis

_PERMUTES = {"permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis"}
_VIEWS = {"reshape", "view", "flatten", "unflatten", "squeeze", "unsqueeze"}
_WINDOW_KINDS = {"conv2d": "conv", "maxpool2d": "pool", "avgpool2d": "pool", "lppool2d": "pool"}
_KINDS = {  # key: op name, lower case, no "_"; others: pointwise, merge or global by shapes
    **_WINDOW_KINDS,
    "add": "add", "iadd": "add", "cat": "cat", "concat": "cat", "concatenate": "cat",
    "linear": "linear", "flatten": "flatten",
    "adaptiveavgpool2d": "adaptive_pool", "adaptivemaxpool2d": "adaptive_pool",
    "patchmergingpad": "patch_merge",
    **dict.fromkeys(_PERMUTES | _VIEWS - {"flatten"}, "layout"),
}  # fmt: skip
_ATTENTION = {
    "multiheadattention", "scaleddotproductattention",
    "shiftedwindowattention", "shiftedwindowattentionv2",
}  # fmt: skip


class ReceptiveFieldError(ValueError):
    """The module cannot be traced, or uses an op whose pixel mapping is unknown."""


@dataclass(frozen=True)
class RFRow:
    """One layer's receptive field. Pairs are (height, width); `.size`, `.stride` and `.padding`
    are the height-axis values (the same as width for square inputs and kernels)."""

    name: str  # qualified module name, or the fx node name for functional ops
    op: str  # module class or function name, e.g. "Conv2d", "add"
    kind: str  # conv, pool, adaptive_pool, patch_merge, add, cat, merge, pointwise, layout,
    # flatten, linear, attention, global
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
    """(r, S, P) per axis, and where H and W are in the tensor. `base` is set after window
    attention: the field before it, which every unit's window contains."""

    size: Pair
    stride: Pair
    padding: Pair
    covers_input: bool = False
    axes: Pair = _NCHW
    base: _Field | None = None

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
            axes=f.axes,
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
        if isinstance(meta, TensorMetadata) or (step.kind == "attention" and _shape(node)):
            rows.append(_row(node, graph, step, _shape(node)))  # MultiheadAttention: a tuple
    return rows


def field_of(rows: list[RFRow], module: str) -> RFRow | None:
    """The field at the output of `module` (a qualified module name): the last row inside it."""
    inside = [r for r in rows if r.name == module or str(r.name).startswith(module + ".")]
    return inside[-1] if inside else None


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
    default_kind = "merge" if len(sources) > 1 else "pointwise"
    if name in _ATTENTION:
        return _attention(node, graph, name, fields, whole)
    if not local:  # e.g. the convs of a squeeze-excitation gate
        return _Step(whole, _KINDS.get(name, default_kind))
    f = fields[local[0]]
    if len({fields[a].axes for a in local}) > 1:
        return _Step(whole, default_kind, note="inputs disagree on where H and W are")
    if name in _PERMUTES | _VIEWS:
        in_shape, out_shape = _shape(local[0]), _shape(node)
        if name in _PERMUTES:
            axes = _permuted(node, graph, len(in_shape), f.axes)
        else:
            axes = _viewed(in_shape, out_shape, f.axes)
        if axes is None:
            return _Step(whole, _KINDS[name], note="H and W no longer separate axes")
        return _Step(replace(f, axes=axes), _KINDS[name])
    out_hw = _hw(node, f.axes)
    if out_hw is None or len(_shape(node)) < max(len(_shape(a) or ()) for a in local):
        return _Step(whole, _KINDS.get(name, "global"))
    if name == "linear":  # mixes the last axis: the channels, or W of an N×C×H×W tensor
        return _Step(whole, "linear") if -1 in f.axes else _Step(f, "linear", note="per position")
    in_hw = _hw(local[0], f.axes)
    if name in _WINDOW_KINDS or _KINDS.get(name) in ("patch_merge", "adaptive_pool"):
        kind = _KINDS[name]
        wanted = _NHWC if kind == "patch_merge" else _NCHW
        if f.axes != wanted:
            raise ReceptiveFieldError(
                f"{node.format_node()} works on axes {wanted}, but H and W are at {f.axes}"
            )
        if kind == "adaptive_pool" and in_hw == out_hw:
            return _Step(f, kind)
        if kind == "adaptive_pool" and f.base is None:
            return _adaptive_pool(f, in_hw, out_hw, whole)
        window = None if kind == "adaptive_pool" else _window(node, graph, name)
        if window == _Window((1, 1), (1, 1), (0, 0)):  # a 1×1 conv: per position
            return _Step(f, kind, window)
        if f.base is not None:
            return _Step(whole, kind, window, note=_WINDOWED)
        return _Step(window.apply(f), kind, window)
    if any(_hw(a, f.axes) != out_hw for a in local):
        if out_hw == (1, 1):  # e.g. mean over H and W with keepdim
            return _Step(whole, "global")
        raise ReceptiveFieldError(
            f"no receptive-field rule for {node.format_node()}: spatial size {in_hw} -> {out_hw}"
        )
    kind = _KINDS.get(name, default_kind)
    if out_hw != (1, 1) and any(_hw(a, f.axes) == out_hw for a in sources if a not in local):
        return _Step(whole, kind, note="an input map covers the whole input")
    note = "global inputs (e.g. channel gates) not counted" if len(local) < len(sources) else ""
    merged = [fields[a] for a in local]
    windowed = {g for g in merged if g.base is not None}
    if windowed:
        w = windowed.pop()
        if windowed or not all(g == w or _inside(g, w.base) for g in merged):
            return _Step(whole, kind, note=_WINDOWED)
        return _Step(w, kind, note=note)
    field, aligned, union_note = _union(merged)
    return _Step(field, kind, aligned=aligned, note="; ".join(filter(None, [union_note, note])))


_WINDOWED = (
    "after window attention the field depends on the position: treated as covering the input"
)


def _attention(
    node: fx.Node, graph: fx.GraphModule, name: str, fields: dict[fx.Node, _Field], whole: _Field
) -> _Step:
    """Attention sees every position it attends to: Swin's windows, else the whole input.

    A unit sees the w×w window that holds it: r grows by (w-1)S for every full window, and P is
    that of the unit at a window's centre. The field of windows on windows depends on the
    position, so it is reported as covering the input.
    """
    everything = _Step(whole, "attention", note="attention: covers the whole input")
    f = fields.get(node.args[0]) if node.args else None
    if not name.startswith("shiftedwindow") or f is None or f.covers_input or f.axes != _NHWC:
        return everything
    if node.op == "call_module":
        size = graph.get_submodule(node.target).window_size
    else:  # shifted_window_attention(input, qkv_weight, proj_weight, bias, window_size, …)
        size = _arg(node, 4, "window_size", None)
    hw = _hw(node.args[0], f.axes)
    window = tuple(min(k, n) for k, n in zip(_pair(size), hw, strict=True))
    if window == hw:
        note = f"attention: one window covers the map ({_show(hw)} positions), so the whole input"
        return _Step(whole, "attention", note=note)
    if f.base is not None:
        note = "attention: windows on windows: the field depends on the position"
        return _Step(whole, "attention", note=f"{note}; treated as covering the input")
    centred = _Window(window, (1, 1), tuple((k - 1) // 2 for k in window))
    note = f"attention: covers its window ({window[0]}×{window[1]} positions)"
    return _Step(replace(centred.apply(f), base=f), "attention", note=note)


def _inside(g: _Field, base: _Field) -> bool:
    """Whether unit 0's field `g` lies within `base` (then so does every unit's)."""
    spans = [(g.span(i), base.span(i)) for i in _AXES]
    return g.stride == base.stride and all(b[0] <= a[0] and a[1] <= b[1] for a, b in spans)


def _permuted(node: fx.Node, graph: fx.GraphModule, ndim: int, axes: Pair) -> Pair | None:
    """Where a permute, transpose or movedim puts H and W: it is run on a meta tensor whose
    sizes name its axes. None when its dims come from other nodes."""
    if len(node.all_input_nodes) != 1:
        return None
    probe = torch.empty(tuple(range(2, ndim + 2)), device="meta")
    rest = node.args[1:]
    try:
        if node.op == "call_method":
            out = getattr(probe, node.target)(*rest, **node.kwargs)
        elif node.op == "call_function":
            out = node.target(probe, *rest, **node.kwargs)
        else:
            out = graph.get_submodule(node.target)(probe)
    except (TypeError, ValueError, RuntimeError, IndexError):
        return None
    return tuple(out.shape.index(probe.shape[a]) - ndim for a in axes)


def _viewed(in_shape: tuple[int, ...], out_shape: tuple[int, ...], axes: Pair) -> Pair | None:
    """Where a reshape puts H and W. In row-major order an output axis of the same size with the
    same product of sizes before it holds the same index; None once H or W is merged or split."""
    found: list[int] = []
    for a in axes:
        d = len(in_shape) + a
        outer = math.prod(in_shape[:d])
        match = [
            e
            for e, n in enumerate(out_shape)
            if n == in_shape[d] and math.prod(out_shape[:e]) == outer and e not in found
        ]
        if not match:
            return None
        found.append(match[0])
    return tuple(e - len(out_shape) for e in found)


def _union(fields: list[_Field]) -> tuple[_Field, bool, str]:
    """Union of unit 0's fields over paths sharing S; else the widest path, flagged."""
    if len({f.stride for f in fields}) > 1:
        strides = sorted({f.stride for f in fields})
        widest = max(fields, key=lambda f: f.size)
        return widest, False, f"misaligned: paths with strides {strides}; widest path reported"
    first = tuple(min(f.span(i)[0] for f in fields) for i in _AXES)
    last = tuple(max(f.span(i)[1] for f in fields) for i in _AXES)
    size = tuple(last[i] - first[i] + 1 for i in _AXES)
    field = _Field(size, fields[0].stride, tuple(-first[i] for i in _AXES), axes=fields[0].axes)
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
    if name == "patchmergingpad":  # Swin: the 2×2 neighbours stacked on the channel axis
        return _Window((2, 2), (2, 2), (0, 0))
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


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    """Output shape (of the first tensor for a tuple output), None for non-tensors."""
    meta = node.meta.get("tensor_meta")
    if isinstance(meta, tuple | list) and not isinstance(meta, TensorMetadata):
        meta = meta[0] if meta else None
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


def _hw(node: fx.Node, axes: Pair) -> Pair | None:
    """Output sizes at `axes`, None if it has too few dims."""
    shape = _shape(node)
    if shape is None or len(shape) < -min(axes):
        return None
    return (shape[axes[0]], shape[axes[1]])


def _arg(node: fx.Node, index: int, name: str, default: object) -> object:
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)


def _pair(value: int | tuple[int, ...] | list[int]) -> Pair:
    return (value, value) if isinstance(value, int) else (value[0], value[-1])


def _show(pair: Pair) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"
