"""How each traced op maps its inputs' receptive fields to its output's (for receptive_field.py)."""

from __future__ import annotations

import torch
from torch import fx
from torch.fx.passes.shape_prop import TensorMetadata

from cnnexp.analysis.rf.layout import (
    Dim,
    Layout,
    aligned_right,
    fitted,
    has_map,
    indexed,
    plain,
    plain_hw,
    spatial_digits,
    viewed,
)
from cnnexp.analysis.rf.node import (
    AXES,
    KINDS,
    LOST,
    NCHW,
    NHWC,
    PERMUTES,
    PRODUCTS,
    SPLITS,
    VIEWS,
    WINDOW_KINDS,
    Field,
    Op,
    Pair,
    ReceptiveFieldError,
    Step,
    Window,
    arg,
    op_name,
    pair,
    shape_of,
    sums_note,
    union_fields,
)
from cnnexp.analysis.rf.sums import ATTENTION_RULES, product


def step(
    node: fx.Node,
    graph: fx.GraphModule,
    sources: list[fx.Node],
    fields: dict[fx.Node, Field],
    image_hw: Pair,
) -> Step:
    """How `node` maps its data inputs' fields to its output field."""
    op = Op(node, graph, op_name(node, graph).lower().replace("_", ""), fields, image_hw)
    followed = [a for a in sources if fields[a].layout is not None]
    if op.name in ATTENTION_RULES:
        return ATTENTION_RULES[op.name](op)
    if not followed:  # e.g. the convs of a squeeze-excitation gate
        return Step(op.whole(), op.kind("merge" if len(sources) > 1 else "pointwise"))
    f = fields[followed[0]]
    if op.name in PERMUTES | VIEWS | SPLITS or op.name == "getitem":
        return _relaid(op, followed[0])
    if op.name == "linear":
        return _linear(op, f)
    if op.name in ("softmax", "logsoftmax"):
        return _softmax(op, f)
    if op.name in PRODUCTS:
        return product(op)
    if op.name in WINDOW_KINDS or op.kind("") in ("patch_merge", "adaptive_pool"):
        return _windowed(op, f)
    if op.kind("") == "cat":
        return _cat(op, sources)
    return _merge(op, sources)


def _relaid(op: Op, source: fx.Node) -> Step:
    """Permutes, reshapes, splits and indexing move positions between axes."""
    f, node, kind = op.fields[source], op.node, op.kind("pointwise")
    if op.name in PERMUTES:
        order = _permutation(op, len(f.layout))
        layout = None if order is None else fitted(tuple(f.layout[i] for i in order), op.shape)
    elif op.name in VIEWS:
        layout = viewed(f.layout, op.shape)
    elif op.name in SPLITS:
        dim = arg(node, 2, "dim", 0)
        layout = None if f.layout[dim].tracked else fitted(f.layout, op.shape)
    elif not isinstance(source.meta.get("tensor_meta"), TensorMetadata):  # a part of a tuple
        layout = fitted(f.layout, op.shape)
    else:
        kept = indexed(f.layout, node.args[1])
        layout = None if kept is None else fitted(kept[0], op.shape)
        f = f if kept is None else Field(op.mixed(f, kept[1]), f.layout)
    if layout is None:
        return Step(op.whole(), kind, note=LOST)
    return Step(Field(f.axes, layout), kind)


def _linear(op: Op, f: Field) -> Step:
    """A Linear mixes its last axis: the channels (per position), or positions."""
    if not f.layout[-1].tracked:
        note = "per position" if has_map(f.layout) else ""
        return Step(Field(f.axes, fitted(f.layout, op.shape)), "linear", note=note)
    summed = list(f.layout[-1].spatial)
    layout, axes = fitted((*f.layout[:-1], Dim()), op.shape), op.mixed(f, summed)
    return Step(Field(axes, layout), "linear", note=sums_note(summed, axes))


def _softmax(op: Op, f: Field) -> Step:
    """A softmax over an axis holding positions makes each see all of them (spatial softmax)."""
    module = op.graph.get_submodule(op.node.target) if op.node.op == "call_module" else None
    dim = module.dim if module is not None else arg(op.node, 1, "dim", None)
    summed = list(f.layout[dim].spatial) if dim is not None else []
    axes = op.mixed(f, summed)
    return Step(Field(axes, fitted(f.layout, op.shape)), "pointwise", note=sums_note(summed, axes))


def _windowed(op: Op, f: Field) -> Step:
    """Convs, pools, adaptive pools and Swin's patch merging slide a window over H and W."""
    kind = KINDS[op.name]
    wanted = NHWC if kind == "patch_merge" else NCHW
    in_hw = plain_hw(f.layout, wanted)
    if in_hw is None:
        scattered = [d for dim in f.layout for d in dim.spatial[1:]] + [
            d for d in spatial_digits(f.layout) if d.weight != 1
        ]
        if scattered or any(dim.lead for dim in f.layout):
            return Step(op.whole(), kind, note=f"{LOST} where it works")
        raise ReceptiveFieldError(  # H and W are whole axes, just not these: a bug in the net
            f"{op.node.format_node()} works on axes {wanted}, but H and W are elsewhere"
        )
    out_hw = (op.shape[wanted[0]], op.shape[wanted[1]])
    layout = list(f.layout)
    layout[wanted[0]], layout[wanted[1]] = plain(*out_hw)
    layout = fitted(tuple(layout), op.shape)
    if kind == "adaptive_pool":
        if out_hw == (1, 1) or any(i % o for i, o in zip(in_hw, out_hw, strict=True)):
            return Step(op.whole(layout), kind)  # uneven bins: treated as global
        ratio = tuple(in_hw[i] // out_hw[i] for i in AXES)
        window = Window(ratio, ratio, (0, 0))
    else:
        window = _window(op)
    axes = tuple(
        f.axes[i].window(window.kernel[i], window.stride[i], window.padding[i]) for i in AXES
    )
    return Step(Field(axes, layout), kind, window)


def _cat(op: Op, sources: list[fx.Node]) -> Step:
    """Concatenating channels merges paths; tokens without a field (a class token) put in front
    of the positions' axis shift them."""
    tensors, dim = list(arg(op.node, 0, "tensors", ())), arg(op.node, 1, "dim", 0)
    with_field = [t for t in tensors if t in op.fields]
    tracked = [t for t in with_field if op.fields[t].layout is not None]
    if not any(op.fields[t].layout[dim].tracked for t in tracked):
        return _merge(op, sources)
    if len(with_field) > 1 or tensors[-1] not in with_field:
        return Step(op.whole(), "cat", note=LOST)
    f = op.fields[with_field[0]]
    lead = sum(shape_of(t)[dim] for t in tensors[:-1])
    layout = list(f.layout)
    layout[dim] = Dim(layout[dim].digits, layout[dim].lead + lead)
    note = f"{lead} token(s) without a field put in front"
    return Step(Field(f.axes, fitted(tuple(layout), op.shape)), "cat", note=note)


def _merge(op: Op, sources: list[fx.Node]) -> Step:
    """Element-wise ops: the union of the inputs' fields. Inputs that are 1 unit wide over the
    positions and see the whole input (channel gates) are not counted."""
    kind, ndim = op.kind("merge" if len(sources) > 1 else "pointwise"), len(op.shape)
    layouts = [aligned_right(op.fields[a].layout, ndim) for a in sources if op.fields[a].layout]
    placed = {
        tuple((i, d) for i, d in enumerate(lay) if d.tracked and d.size > 1) for lay in layouts
    }
    if len(placed - {()}) > 1:  # () broadcasts: a gate
        return Step(op.whole(), kind, note="inputs disagree on where H and W are")
    layout = next(filter(None, (fitted(lay, op.shape) for lay in layouts)), None)  # not a gate's
    if layout is None:
        return _resized(op, layouts[0])
    spots = [i for i, d in enumerate(layout) if d.tracked]

    def gate(a: fx.Node) -> bool:
        sizes = (1,) * (ndim - len(shape_of(a))) + shape_of(a)
        return op.fields[a].covers_input and all(sizes[i] == 1 for i in spots)

    counted = [a for a in sources if not gate(a)]
    notes = (
        ["global inputs (e.g. channel gates) not counted"] if len(counted) < len(sources) else []
    )
    if not counted:  # e.g. the activations of a squeeze-excitation gate
        return Step(op.whole(layout), kind)
    merged = [op.fields[a] for a in counted]
    if any(f.covers_input for f in merged) and not all(f.covers_input for f in merged):
        notes.insert(0, "an input map covers the whole input")
    axes, aligned, note = union_fields(merged)
    return Step(
        Field(axes, layout), kind, aligned=aligned, note="; ".join(filter(None, [note, *notes]))
    )


def _resized(op: Op, layout: Layout) -> Step:
    """A reduction over the positions covers the input; other resampling has no rule."""
    spots = [i - len(layout) for i, d in enumerate(layout) if d.tracked]
    before = [layout[i].size for i in spots]
    after = [op.shape[i] for i in spots] if len(op.shape) >= len(layout) else []
    if not after or all(n == 1 for n in after):
        return Step(op.whole(), op.kind("global"))
    raise ReceptiveFieldError(
        f"no receptive-field rule for {op.node.format_node()}: spatial size {tuple(before)} -> "
        f"{tuple(after)}"
    )


def _permutation(op: Op, ndim: int) -> list[int] | None:
    """Which input axis each output axis of a permute, transpose or movedim is: the op is run on
    a meta tensor whose sizes name its axes. None when its dims come from other nodes."""
    node = op.node
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
            out = op.graph.get_submodule(node.target)(probe)
    except (TypeError, ValueError, RuntimeError, IndexError):
        return None
    return [n - 2 for n in out.shape]


def _window(op: Op) -> Window:
    """Kernel, stride, padding, dilation of a conv or pool module or function."""
    node, name = op.node, op.name
    if name == "patchmergingpad":  # Swin: the 2×2 neighbours stacked on the channel axis
        return Window((2, 2), (2, 2), (0, 0))
    if node.op == "call_module":
        m = op.graph.get_submodule(node.target)
        kernel, padding = m.kernel_size, getattr(m, "padding", 0)
        stride = m.stride or kernel  # LPPool2d keeps stride=None
        dilation = getattr(m, "dilation", 1)
    elif name == "conv2d":  # conv2d(input, weight, bias, stride, padding, dilation, groups)
        kernel = tuple(node.args[1].meta["tensor_meta"].shape[-2:])
        stride, padding = arg(node, 3, "stride", 1), arg(node, 4, "padding", 0)
        dilation = arg(node, 5, "dilation", 1)
    else:  # max_pool2d(input, kernel_size, stride, padding, dilation, …); avg_pool2d: no dilation
        kernel, padding = arg(node, 1, "kernel_size", 1), arg(node, 3, "padding", 0)
        stride = arg(node, 2, "stride", None) or kernel
        dilation = arg(node, 4, "dilation", 1) if name == "maxpool2d" else 1
    kernel, dilation = pair(kernel), pair(dilation)
    effective = tuple(dilation[i] * (kernel[i] - 1) + 1 for i in AXES)
    if isinstance(padding, str):  # "valid" or (stride-1 only) "same"
        padding = (0, 0) if padding == "valid" else tuple((k - 1) // 2 for k in effective)
    return Window(effective, pair(stride), pair(padding))
