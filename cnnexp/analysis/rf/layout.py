"""Where an image's rows and columns live in a tensor: the bookkeeping of receptive_field.py.

Each tensor axis holds digits of the image position, outermost first, as a row-major reshape
splits an index: N×C×H×W holds row (H) and column (W) digits on its last two axes; ViT's token
axis holds a class token, then row, then column; a MaxViT window partition splits each of H and
W into (window, H/7) and (offset in the window, 7), and puts both window digits on one axis and
both offsets on another. Ops that sum over an axis (attention, a Linear over it) make a position
see every position whose digits differ only in that axis's digits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cnnexp.analysis.rf.axis import Span


@dataclass(frozen=True)
class Digit:
    axis: int | None  # 0: image row, 1: image column, None: anything else (batch, channels)
    weight: int  # image positions one step of the digit moves (1 for an axis's last digit)
    size: int


@dataclass(frozen=True)
class Dim:
    """One tensor axis: its digits, after `lead` entries that see no pixel (a class token)."""

    digits: tuple[Digit, ...] = ()
    lead: int = 0

    @property
    def size(self) -> int:
        return self.lead + math.prod(d.size for d in self.digits)

    @property
    def spatial(self) -> tuple[Digit, ...]:
        return tuple(d for d in self.digits if d.axis is not None)

    @property
    def tracked(self) -> bool:  # holds image positions, so it cannot be resized freely
        return bool(self.spatial or self.lead)


Layout = tuple[Dim, ...]


def image_layout(shape: tuple[int, ...]) -> Layout:
    """N×C×H×W: row and column digits on the last two axes."""
    n, c, h, w = shape
    return (_other(n), _other(c), *plain(h, w))


def plain(height: int, width: int) -> tuple[Dim, Dim]:
    """The H and W axes of an image-like map."""
    return Dim((Digit(0, 1, height),)), Dim((Digit(1, 1, width),))


def plain_hw(layout: Layout, at: tuple[int, int]) -> tuple[int, int] | None:
    """Map size when H and W are whole axes at `at` (counted from the end) and nowhere else."""
    if len(layout) < -min(at):
        return None
    rows, cols = layout[at[0]], layout[at[1]]
    others = [d for i, dim in enumerate(layout) if i - len(layout) not in at for d in dim.spatial]
    if others or rows.lead or cols.lead or len(rows.digits) != 1 or len(cols.digits) != 1:
        return None
    (row,), (col,) = rows.digits, cols.digits
    if (row.axis, row.weight, col.axis, col.weight) != (0, 1, 1, 1):
        return None
    return row.size, col.size


def has_map(layout: Layout | None) -> bool:
    """Whether the tensor still holds more than one image position."""
    return layout is not None and math.prod(d.size for dim in layout for d in dim.spatial) > 1


def spatial_digits(layout: Layout) -> list[Digit]:
    return [d for dim in layout for d in dim.spatial]


def fitted(layout: Layout, shape: tuple[int, ...]) -> Layout | None:
    """`layout` for a tensor of `shape`: axes without image digits take the new sizes (a conv's
    channels); None if an axis holding image positions changed size."""
    if len(layout) != len(shape):
        return None
    if any(dim.tracked and dim.size != n for dim, n in zip(layout, shape, strict=True)):
        return None
    return tuple(dim if dim.tracked else _other(n) for dim, n in zip(layout, shape, strict=True))


def aligned_right(layout: Layout, ndim: int) -> Layout:
    """`layout` broadcast to `ndim` axes (new leading axes of size 1)."""
    return (Dim(),) * (ndim - len(layout)) + layout


def viewed(layout: Layout, shape: tuple[int, ...]) -> Layout | None:
    """The layout after a reshape (view, flatten, unflatten, squeeze…) to `shape`.

    Row-major order: the digits of all axes in a row are regrouped into the new axes, a digit
    split where a new axis ends inside it. An axis with a class token passes only unchanged.
    None when a digit cannot be split there."""
    pending: list[Digit | Dim] = []
    for dim in layout:
        pending.extend([dim] if dim.lead else [d for d in dim.digits if d.size > 1])
    out = []
    for n in shape:
        digits, size = [], 1
        while size < n:
            part = pending.pop(0) if pending else None
            if isinstance(part, Dim) and size == 1 and part.size == n:
                break
            if part is None or isinstance(part, Dim):
                return None
            need = n // size
            if need % part.size == 0:
                digits.append(part)
                size *= part.size
            elif part.size % need == 0:  # its outer part ends this axis, its inner part goes on
                inner = part.size // need
                digits.append(Digit(part.axis, part.weight * inner, need))
                pending.insert(0, Digit(part.axis, part.weight, inner))
                size = n
            else:
                return None
        out.append(part if size < n else Dim(_joined(digits)))
    return None if pending else tuple(out)


def _joined(digits: list[Digit]) -> tuple[Digit, ...]:
    """Neighbouring digits that split one index (H's window and offset in it) joined again."""
    out: list[Digit] = []
    for d in digits:
        last = out[-1] if out else None
        if last and last.axis == d.axis and last.weight == d.weight * d.size:
            out[-1] = Digit(d.axis, d.weight, last.size * d.size)
        else:
            out.append(d)
    return tuple(out)


def indexed(layout: Layout, index: object) -> tuple[Layout, list[Digit]] | None:
    """Layout after x[index] and the image digits of the axes an integer takes away (the result
    sees what every position they held sees). None for slices of image axes or tensor indices."""
    items = list(index) if isinstance(index, tuple) else [index]
    used = sum(item is not None and item is not Ellipsis for item in items)
    out, gone, axis = [], [], 0
    for item in items:
        if item is Ellipsis:
            out.extend(layout[axis : axis + len(layout) - used])
            axis += len(layout) - used
        elif item is None:
            out.append(Dim())
        elif isinstance(item, int):
            gone.extend(layout[axis].spatial)
            axis += 1
        elif isinstance(item, slice) and (item == slice(None) or not layout[axis].tracked):
            out.append(layout[axis] if item == slice(None) else Dim())
            axis += 1
        else:
            return None
    return tuple(out) + layout[axis:], gone


def contracted(
    layouts: list[Layout | None], labels: list[list[str]], out_labels: list[str]
) -> tuple[Layout, list[list[Digit]]] | None:
    """An einsum's output layout and, per operand, the image digits it sums over: those of its
    axes missing from the output, and those repeated on a later output axis (attention logits
    have the same positions as queries and keys: the keys' are summed over by the softmax and
    the next product). None when operands disagree on what one output axis holds."""
    placed: set[Digit] = set()
    out, summed = [], [[] for _ in layouts]
    for label in out_labels:
        holders = [
            (i, layout[labels[i].index(label)])
            for i, layout in enumerate(layouts)
            if layout is not None and label in labels[i]
        ]
        tracked = [(i, dim) for i, dim in holders if dim.tracked]
        if len({dim for _, dim in tracked}) > 1:
            return None
        if tracked and not placed & set(tracked[0][1].spatial):
            placed |= set(tracked[0][1].spatial)
            out.append(tracked[0][1])
            continue
        for i, dim in tracked:
            summed[i].extend(dim.spatial)
        out.append(Dim())
    for i, layout in enumerate(layouts):
        for axis, label in enumerate(labels[i] if layout is not None else []):
            if label not in out_labels:
                summed[i].extend(layout[axis].spatial)
    return tuple(out), summed


def reach(mixed: list[Digit], present: list[Digit]) -> list[Span] | None:
    """The positions along one image axis that a position sees once the `mixed` digits (of that
    axis) vary, as offsets per position in one period. None when a mixed digit is the axis's
    outermost (`present`: all its digits): the positions seen span the map."""
    extent = max(d.weight * d.size for d in [*mixed, *present])
    if any(d.weight * d.size == extent for d in mixed):
        return None
    period = math.lcm(*(d.weight * d.size for d in mixed))
    width = sum((d.size - 1) * d.weight for d in mixed)
    first = [-sum((r // d.weight) % d.size * d.weight for d in mixed) for r in range(period)]
    return [(low, low + width) for low in first]


def _other(n: int) -> Dim:
    return Dim((Digit(None, 1, n),)) if n != 1 else Dim()
