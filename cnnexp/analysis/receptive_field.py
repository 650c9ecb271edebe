"""Receptive fields of any traceable nn.Module, layer by layer.

After Araujo, Norris & Sim, "Computing Receptive Fields of Convolutional Neural Networks"
(Distill, 2019). Every quantity is relative to the network input, per axis as (height, width):

- size r: how many input pixels a unit of the layer sees: the largest field of any unit;
- stride S: how far apart (in input pixels) neighbouring units' fields start (the "jump");
- padding P: how far unit 0's field starts before the input's first pixel.

As in Distill the input has no borders (units near them see padding, so r may exceed the image).
Where every unit sees alike, unit f sees pixels [f*S - P, f*S - P + r - 1], and a layer with kernel
k (dilation folded in: d(k-1)+1), stride s and padding p maps (r, S, P) to (r + (k-1)S, sS, P + pS).
Where what a unit sees depends on its position (window attention: a unit sees the window that
holds it), r is the largest field, P is unit 0's, and `RFRow.span` gives every unit's field;
clipped to the image, it is what a gradient from that unit reaches (tests/field_reference.py).

Element-wise ops pass fields through; adds and concatenations take the union of their inputs'
fields. Channel gates (squeeze-excitation) and normalisation statistics are not counted. The
image's rows and columns are followed through permute, reshape, flatten and the like, also when
they are merged into one token axis (ViT) or split into windows (MaxViT), with class tokens put
in front (see rf_layout). An op that sums over an axis holding positions (attention, a Linear
over it, matrix products) makes each position see the positions it sums over. Swin's shifted
windows follow from the window size and shift.

A field "covers the input" (`covers_input`; `whole` in the tables; r = S = input size, P = 0)
when the positions a unit sums over span the map rather than a fixed window: global pooling, a
Linear over the flattened map, global attention, MaxViT's grid attention (its 7 tokens per axis
are spread over the whole map, so its units see all or nearly all of the input). Where the
image's rows and columns can no longer be followed, the field is reported as covering the input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from cnnexp.analysis.rf.axis import AxisField, Span
from cnnexp.analysis.rf.layout import has_map, image_layout
from cnnexp.analysis.rf.node import (
    Field,
    ReceptiveFieldError,
    Step,
    op_name,
    shape_of,
    show_pair,
)
from cnnexp.analysis.rf.rules import step
from cnnexp.models.modules import eval_mode, module_device

Pair = tuple[int, int]


@dataclass(frozen=True)
class RFRow:
    """One layer's receptive field. Pairs are (height, width); `.size`, `.stride` and `.padding`
    are the height-axis values (the same as width for square inputs and kernels)."""

    name: str  # qualified module name, or the fx node name for functional ops
    op: str  # module class or function name, e.g. "Conv2d", "add"
    kind: str  # conv, pool, adaptive_pool, patch_merge, add, cat, merge, pointwise, layout,
    # flatten, linear, matmul, attention, global
    kernel: Pair | None  # effective kernel d(k-1)+1 of conv/pool rows, else None
    layer_stride: Pair | None  # the layer's own stride for conv/pool rows, else None
    output_shape: tuple[int, ...]
    fields: tuple[AxisField, AxisField]  # every unit's field along height and width
    has_map: bool = True  # the output still holds more than one image position
    aligned: bool = True  # False when merged paths have different S or field centres
    note: str = ""

    @property
    def size_hw(self) -> Pair:  # r
        return self.fields[0].size, self.fields[1].size

    @property
    def stride_hw(self) -> Pair:  # S
        return self.fields[0].stride, self.fields[1].stride

    @property
    def padding_hw(self) -> Pair:  # P
        return self.fields[0].padding, self.fields[1].padding

    @property
    def covers_input(self) -> bool:  # every unit sees the whole input: r = S = input size, P = 0
        return all(f.whole for f in self.fields)

    @property
    def varies(self) -> bool:  # what a unit sees depends on its position (window attention)
        return any(len(f.spans) > 1 and not f.whole for f in self.fields)

    @property
    def size(self) -> int:
        return self.size_hw[0]

    @property
    def stride(self) -> int:
        return self.stride_hw[0]

    @property
    def padding(self) -> int:
        return self.padding_hw[0]

    def span(self, unit: int, axis: int = 0) -> Span:
        """First and last input pixel that `unit` sees along `axis` (0: height, 1: width)."""
        return self.fields[axis].span(unit)


def receptive_fields(module: nn.Module, input_shape: tuple[int, int, int]) -> list[RFRow]:
    """One row per tensor-producing op of `module` (traced with torch.fx) for a C×H×W input.

    Only shapes are computed (one probe pass in eval mode, no_grad), so a model built on the
    meta device works too and costs nothing.
    """
    graph = _traced(module, input_shape)
    image_hw = (input_shape[1], input_shape[2])
    fields: dict[fx.Node, Field] = {}
    rows = []
    for node in graph.graph.nodes:
        if node.op == "placeholder" and not fields:  # the first argument is the image
            pixel = (AxisField.pixel(), AxisField.pixel())
            fields[node] = Field(pixel, image_layout((1, *input_shape)))
            continue
        meta = node.meta.get("tensor_meta")
        sources = [a for a in node.all_input_nodes if a in fields]
        if node.op == "output" or not sources or meta is None:
            continue
        done = step(node, graph, sources, fields, image_hw)
        fields[node] = done.field
        if isinstance(meta, TensorMetadata) or (done.kind == "attention" and shape_of(node)):
            rows.append(_row(node, graph, done))  # MultiheadAttention: a tuple
    return rows


def field_of(rows: list[RFRow], module: str) -> RFRow | None:
    """The field at the output of `module` (a qualified module name): the last row inside it."""
    inside = [r for r in rows if r.name == module or str(r.name).startswith(module + ".")]
    return inside[-1] if inside else None


def rf_at_last_spatial_layer(rows: list[RFRow]) -> int:
    """RF size (height axis) of the last row whose output still holds more than one image
    position (the `receptive_field` metric). Where that field covers the input (a ViT after its
    first attention), r is the input's height: every unit sees every pixel."""
    spatial = [row for row in rows if row.has_map]
    if not spatial:
        raise ValueError("no layer with spatial layout: nothing has a receptive field")
    return spatial[-1].size


def format_table(rows: list[RFRow]) -> str:
    """Plain-text table: name, op, kind, kernel, layer stride, output shape, r, S, P, notes."""
    header = ("name", "op", "kind", "k", "s", "output", "r", "S", "P", "notes")
    lines = [header] + [_table_cells(row) for row in rows]
    widths = [max(map(len, column)) for column in zip(*lines, strict=True)]
    return "\n".join("  ".join(map(str.ljust, line, widths)).rstrip() for line in lines)


def field_cells(row: RFRow) -> tuple[str, str, str]:
    """r, S and P as tables show them: one number where height and width agree, else HxW
    (`351x255`); `whole` where the field covers the input along that axis, S and P then `-`."""

    def show(values: Pair, whole_text: str) -> str:
        cells = [whole_text if f.whole else str(v) for f, v in zip(row.fields, values, strict=True)]
        return cells[0] if cells[0] == cells[1] else "x".join(cells)

    return show(row.size_hw, "whole"), show(row.stride_hw, "-"), show(row.padding_hw, "-")


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


def _row(node: fx.Node, graph: fx.GraphModule, done: Step) -> RFRow:
    w = done.window
    return RFRow(
        name=node.target if node.op == "call_module" else node.name,
        op=op_name(node, graph),
        kind=done.kind,
        kernel=w.kernel if w else None,
        layer_stride=w.stride if w else None,
        output_shape=shape_of(node),
        fields=done.field.axes,
        has_map=has_map(done.field.layout),
        aligned=done.aligned,
        note=done.note,
    )


def _table_cells(row: RFRow) -> tuple[str, ...]:
    varies = "r: the largest field (it varies by position)" if row.varies else ""
    notes = "; ".join(filter(None, ["covers input" if row.covers_input else "", row.note, varies]))
    shape = "×".join(map(str, row.output_shape))
    layer = tuple(show_pair(p) if p else "-" for p in (row.kernel, row.layer_stride))
    return (row.name, row.op, row.kind, *layer, shape, *field_cells(row), notes)
