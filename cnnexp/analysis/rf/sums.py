"""Ops that sum over positions: matrix products, attention, Swin's shifted windows."""

from __future__ import annotations

from torch import fx

from cnnexp.analysis.rf.axis import AxisField
from cnnexp.analysis.rf.layout import contracted, fitted, plain_hw
from cnnexp.analysis.rf.node import (
    AXES,
    LOST,
    NHWC,
    Field,
    Op,
    Step,
    arg,
    pair,
    shape_of,
    show_pair,
    sums_note,
    union_fields,
)


def product(op: Op) -> Step:
    """einsum, matmul, bmm, mm: an output element sees what its summed-over inputs see."""
    args = op.node.args
    if op.name == "einsum":
        operands = (
            list(args[1]) if len(args) == 2 and isinstance(args[1], list | tuple) else args[1:]
        )
        labels = _einsum_labels(args[0], [len(shape_of(a)) for a in operands])
    else:
        operands = list(args[:2])
        labels = _matmul_labels(*(len(shape_of(a)) for a in operands))
    return _contracted(op, operands, labels)


def _contracted(
    op: Op,
    operands: list[fx.Node],
    labels: tuple[list[list[str]], list[str]] | None,
    attention: bool = False,
) -> Step:
    """The union of every operand's field, each widened over the positions it is summed over."""
    fields = [op.fields.get(a) for a in operands]
    result = None
    if labels is not None and all(f is None or f.layout is not None for f in fields):
        result = contracted([f.layout if f else None for f in fields], *labels)
    if result is None:
        return Step(op.whole(), "attention" if attention else "matmul", note=LOST)
    layout, summed = result
    parts = [Field(op.mixed(f, s), f.layout) for f, s in zip(fields, summed, strict=True) if f]
    axes, aligned, note = union_fields(parts)
    everything = [d for s in summed for d in s]
    note = "; ".join(filter(None, [sums_note(everything, axes, attention), note]))
    kind = "attention" if attention else "matmul"
    return Step(Field(axes, fitted(layout, op.shape)), kind, aligned=aligned, note=note)


def _multihead(op: Op) -> Step:
    """nn.MultiheadAttention(query, key, value): tokens on axis 1 (batch_first) or 0."""
    node, module = op.node, op.graph.get_submodule(op.node.target)
    operands = [arg(node, i, name, None) for i, name in enumerate(("query", "key", "value"))]
    ndim = len(shape_of(operands[0]))
    batch = ["n"] if ndim == 3 else []

    def axes(tokens: str, features: str) -> list[str]:
        return batch + [tokens, features] if module.batch_first else [tokens, *batch, features]

    labels = ([axes("l", "e"), axes("s", "e"), axes("s", "v")], axes("l", "v"))
    return _contracted(op, operands, labels, attention=True)


def _dot_product(op: Op) -> Step:
    """F.scaled_dot_product_attention(query, key, value): tokens on axis -2."""
    operands = [arg(op.node, i, name, None) for i, name in enumerate(("query", "key", "value"))]
    batch = [f"b{i}" for i in range(len(shape_of(operands[0])) - 2)]
    labels = ([[*batch, "l", "e"], [*batch, "s", "e"], [*batch, "s", "v"]], [*batch, "l", "v"])
    return _contracted(op, operands, labels, attention=True)


def _shifted_windows(op: Op) -> Step:
    """torchvision's shifted_window_attention(input N×H×W×C, …, window_size, num_heads,
    shift_size, …): a unit sees its (shifted) window; a window as large as the map sees it all."""
    f = op.fields.get(op.node.args[0])
    hw = plain_hw(f.layout, NHWC) if f is not None and f.layout is not None else None
    if hw is None or f.covers_input:
        layout = fitted(f.layout, op.shape) if f is not None and f.layout is not None else None
        return Step(op.whole(layout), "attention", note="attention: covers the whole input")
    size = pair(arg(op.node, 4, "window_size", None))
    shift = pair(arg(op.node, 6, "shift_size", 0))
    axes = tuple(
        AxisField.covering(op.image_hw[i])
        if size[i] >= hw[i]
        else f.axes[i].windows(size[i], shift[i])
        for i in AXES
    )
    note = f"attention: covers its window ({size[0]}×{size[1]} positions)"
    if all(a.whole for a in axes):
        note = (
            f"attention: one window covers the map ({show_pair(hw)} positions), so the whole input"
        )
    elif any(shift):
        note += f" shifted by {shift[0]}×{shift[1]}"
    return Step(Field(axes, f.layout), "attention", note=note)


ATTENTION_RULES = {
    "multiheadattention": _multihead,
    "scaleddotproductattention": _dot_product,
    "shiftedwindowattention": _shifted_windows,
}


def _einsum_labels(equation: str, ndims: list[int]) -> tuple[list[list[str]], list[str]] | None:
    """Per-operand axis labels and the output's; "..." becomes ...0, ...1, … aligned at the
    right. None when the equation does not fit the operands."""
    spec = equation.replace(" ", "")
    inputs, _, output = spec.partition("->")
    terms = inputs.split(",")
    if len(terms) != len(ndims):
        return None
    broad = max(
        (n - len(t.replace("...", "")) for t, n in zip(terms, ndims, strict=True)), default=0
    )
    ellipsis = [f"...{i}" for i in range(broad)]

    def expand(term: str, ndim: int) -> list[str]:
        head, dots, tail = term.partition("...")
        middle = ellipsis[len(ellipsis) - (ndim - len(head) - len(tail)) :] if dots else []
        return [*head, *middle, *tail]

    labels = [expand(t, n) for t, n in zip(terms, ndims, strict=True)]
    if not output and "->" not in spec:  # implicit: the labels used once, sorted
        flat = [label for term in labels for label in term if not label.startswith("...")]
        output = "..." + "".join(sorted(x for x in set(flat) if flat.count(x) == 1))
    return labels, expand(output, len(ellipsis) + len(output.replace("...", "")))


def _matmul_labels(a: int, b: int) -> tuple[list[list[str]], list[str]] | None:
    if a < 2 or b < 2:
        return None
    batch = [f"b{i}" for i in range(max(a, b) - 2)]
    left, right = batch[len(batch) - (a - 2) :], batch[len(batch) - (b - 2) :]
    return [[*left, "i", "j"], [*right, "j", "k"]], [*batch, "i", "k"]
