"""Receptive fields along one image axis, unit by unit: the arithmetic of receptive_field.py.

Distill's (r, S, P) says that unit f sees pixels [fS - P, fS - P + r - 1]: every unit alike.
Window attention breaks that, since a unit sees the window that holds it, so what it sees depends
on where it sits in its window. An AxisField therefore keeps the fields of one period of units:
unit q·m + i sees spans[i] moved by q·m·S. Convs and pools keep m = 1; a window of w units makes
m = w. As in Distill the axis has no borders: units near them see padding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Span = tuple[int, int]  # first and last pixel (or unit) seen, inclusive


@dataclass(frozen=True)
class AxisField:
    """What every unit along one image axis sees; `whole`: each unit sees the whole axis (then
    stride = the input's size and one span covers it, Distill's convention)."""

    stride: int  # S: how far apart in pixels neighbouring units are
    spans: tuple[Span, ...]  # the fields of units 0 … m-1
    whole: bool = False

    @classmethod
    def pixel(cls) -> AxisField:
        return cls(1, ((0, 0),))

    @classmethod
    def covering(cls, n: int) -> AxisField:
        return cls(n, ((0, n - 1),), whole=True)

    @property
    def size(self) -> int:  # r: the largest field of any unit
        return max(last - first + 1 for first, last in self.spans)

    @property
    def padding(self) -> int:  # P: how far unit 0's field starts before pixel 0
        return -self.spans[0][0]

    def span(self, unit: int) -> Span:
        """First and last pixel that `unit` sees."""
        if self.whole:
            return self.spans[0]
        q, i = divmod(unit, len(self.spans))
        moved = q * len(self.spans) * self.stride
        first, last = self.spans[i]
        return first + moved, last + moved

    def gather(self, step: int, reach: Sequence[Span]) -> AxisField:
        """Unit g of the result sees units g·step + reach[g % len(reach)] (first and last offset)
        of this field: a conv or pool has one reach, a window one per position in the window."""
        if self.whole:
            return self
        m = len(self.spans)
        period = math.lcm(len(reach), m // math.gcd(m, step))  # where the pattern repeats
        spans = []
        for g in range(period):
            low, high = reach[g % len(reach)]
            seen = [self.span(g * step + u) for u in range(low, high + 1)]
            spans.append((min(s[0] for s in seen), max(s[1] for s in seen)))
        return _shortest(self.stride * step, spans)

    def window(self, kernel: int, stride: int, padding: int) -> AxisField:
        """A conv or pool: (r, S, P) -> (r + (k-1)S, sS, P + pS) for every unit."""
        return self.gather(stride, [(-padding, kernel - 1 - padding)])

    def windows(self, size: int, shift: int = 0) -> AxisField:
        """Attention within windows of `size` units whose first starts at unit `shift` (Swin's
        shifted windows): a unit sees every unit of its window."""
        starts = [(r - shift) % size for r in range(size)]  # how far into its window unit r is
        return self.gather(1, [(-into, size - 1 - into) for into in starts])


def union(fields: Sequence[AxisField]) -> tuple[AxisField, bool]:
    """Every unit's field over all paths, and whether the paths are aligned: their fields share
    centres, or one path's position-dependent field holds the others (a residual around window
    attention). Paths with different strides have no common unit grid: the widest is returned."""
    whole = [f for f in fields if f.whole]
    if whole:
        return whole[0], True
    if len({f.stride for f in fields}) > 1:
        return max(fields, key=lambda f: f.size), False
    period = math.lcm(*(len(f.spans) for f in fields))
    per_unit = [[f.span(u) for f in fields] for u in range(period)]
    spans = [(min(s[0] for s in seen), max(s[1] for s in seen)) for seen in per_unit]
    merged = _shortest(fields[0].stride, spans)
    centred = all(len({a + b for a, b in seen}) == 1 for seen in per_unit)
    return merged, centred or any(f == merged and len(f.spans) > 1 for f in fields)


def _shortest(stride: int, spans: list[Span]) -> AxisField:
    """The AxisField of these units' spans with the shortest period that repeats them."""
    n = len(spans)

    def repeats(m: int) -> bool:
        moved = m * stride
        return all(spans[i + m] == (spans[i][0] + moved, spans[i][1] + moved) for i in range(n - m))

    period = next(m for m in range(1, n + 1) if n % m == 0 and repeats(m))  # m = n always does
    return AxisField(stride, tuple(spans[:period]))
