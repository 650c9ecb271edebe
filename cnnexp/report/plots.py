"""Report figures, a line or point per seed group (cnnexp/report/table.py SeedGroup): validation
curves as the mean over the group's seeds with a ±1 standard deviation band; accuracy against
parameter count, the mean with a ±1 standard deviation bar. A group has one colour and number in
both figures; the legends sit outside the axes, so no label covers a curve or a point."""

from __future__ import annotations

import math
import statistics

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter, LogLocator, MaxNLocator, NullFormatter

from cnnexp.report.select import CURVES
from cnnexp.report.table import SeedGroup, mean_std

NUMBER_OFFSETS = sorted(  # points from a marker to its number's centre, nearest first
    ((dx, dy) for dx in (13, -13, 26, -26) for dy in (0, 10, -10, 20, -20)),
    key=lambda offset: math.hypot(*offset),
)
NUMBER_BOX = (12, 9)  # points a number's label (two digits at most) takes: width, height
MARKER = 4.5  # points from a marker's centre to its edge (and to an error bar's cap's end)


def _figure(width: float, legend_entries: int) -> Figure:
    """A figure 4 inches high, or higher where a legend of this many lines needs it."""
    fig = Figure(figsize=(width, max(4.0, 1.0 + 0.2 * legend_entries)), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def colour(number: int) -> str:
    """The colour of group `number` (from 1) in both figures."""
    return f"C{(number - 1) % 10}"


def keyed_labels(groups: list[SeedGroup], labels: dict[str, str]) -> dict[str, str]:
    """The first run's id -> `<number>  <label>`, the number the group's point carries."""
    return {g.first.run_id: f"{n}  {labels[g.first.run_id]}" for n, g in enumerate(groups, 1)}


def mean_curve(group: SeedGroup, key: str) -> tuple[list[int], list[float], list[float]]:
    """(epochs, mean, std) of curve `key` over the group's runs, at every epoch any run has
    (std 0 where one run has the epoch)."""
    at: dict[int, list[float]] = {}
    for run in group.runs:
        for epoch, value in run.curves.get(key) or []:
            at.setdefault(epoch, []).append(value)
    epochs = sorted(at)
    stats = [mean_std(at[e]) for e in epochs]
    return epochs, [m for m, _ in stats], [s for _, s in stats]


def curves_figure(groups: list[SeedGroup], labels: dict[str, str]) -> Figure:
    """val_acc and val_loss per epoch, a line per group (one epoch: a point); several seeds: the
    mean, and a band of ±1 standard deviation."""
    fig, keyed = _figure(11, len(groups)), keyed_labels(groups, labels)
    for ax, key in zip(fig.subplots(1, 2), CURVES, strict=True):
        for n, group in enumerate(groups, 1):
            epochs, mean, std = mean_curve(group, key)
            if not epochs:
                continue
            label = keyed[group.first.run_id]
            ax.plot(epochs, mean, marker="o", ms=3, color=colour(n), label=label)
            if len(group.runs) > 1:
                low = [m - s for m, s in zip(mean, std, strict=True)]
                high = [m + s for m, s in zip(mean, std, strict=True)]
                ax.fill_between(epochs, low, high, color=colour(n), alpha=0.2, lw=0)
        ax.set(xlabel="epoch", ylabel=key, title=key)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, names = fig.axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="outside right upper", fontsize="small")
    return fig


def placed_groups(groups: list[SeedGroup]) -> list[SeedGroup]:
    """The groups the accuracy plot can place: a parameter count and a val_acc curve."""
    return [g for g in groups if g.values("n_params") and g.best_val()]


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Whether boxes (x0, y0, x1, y1) overlap."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def number_box(x: float, y: float) -> tuple[float, float, float, float]:
    """The box (x0, y0, x1, y1) of a number's label centred at (x, y)."""
    width, height = NUMBER_BOX
    return x - width / 2, y - height / 2, x + width / 2, y + height / 2


def number_offsets(
    points: list[tuple[float, float]], bars: list[tuple[float, float, float]]
) -> list[tuple[float, float]]:
    """Per point to number (x, y in points on the figure), its number's offset: the first of
    NUMBER_OFFSETS whose label covers the fewest error bars (x, low, high, with their markers)
    and numbers placed before."""
    taken = [(x - MARKER, low - MARKER, x + MARKER, high + MARKER) for x, low, high in bars]
    offsets = []
    for x, y in points:
        boxes = {(dx, dy): number_box(x + dx, y + dy) for dx, dy in NUMBER_OFFSETS}
        best = min(boxes, key=lambda o: sum(_overlap(boxes[o], other) for other in taken))
        taken.append(boxes[best])
        offsets.append(best)
    return offsets


def _number_points(fig: Figure, ax, numbered: list[tuple[int, float, float]], bars) -> None:
    """Write each group's number next to its marker, where it covers the fewest error bars and
    other numbers."""
    fig.draw_without_rendering()  # lays the axes out: marker positions are final
    scale = 72 / fig.dpi  # display pixels to points

    def at(x: float, y: float) -> tuple[float, float]:
        return tuple(ax.transData.transform((x, y)) * scale)

    points = [at(x, y) for _, x, y in numbered]
    bars = [(at(x, low)[0], at(x, low)[1], at(x, high)[1]) for x, low, high in bars]
    for (n, x, y), offset in zip(numbered, number_offsets(points, bars), strict=True):
        ax.annotate(
            str(n),
            (x, y),
            xytext=offset,
            textcoords="offset points",
            ha="center",
            va="center",
            color=colour(n),
            fontsize="small",
            fontweight="bold",
            zorder=4,
        )


def _axis_style(ax) -> None:
    """Log x ticks at 1, 2, 5 of each decade, written 20k, 100k, 1M."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.15, y=0.1)
    ax.set(xlabel="trainable parameters (log)", ylabel="accuracy (mean ± std over seeds)")
    ax.grid(alpha=0.3, which="both")


def accuracy_vs_params_figure(groups: list[SeedGroup], labels: dict[str, str]) -> Figure:
    """Best val_acc (filled circle) and test_acc (open square) against trainable parameters, log
    x, each group's mean with a ±1 standard deviation bar, numbered as in the legend."""
    placed = {g.first.run_id for g in placed_groups(groups)}
    fig, keyed = _figure(10, len(placed) + 2), keyed_labels(groups, labels)
    ax, numbered, bars = fig.subplots(), [], []
    ax.set_title("accuracy vs parameters")
    for n, group in enumerate(groups, 1):
        if group.first.run_id not in placed:
            continue
        x = statistics.mean(group.values("n_params"))
        val = mean_std([v for v, _ in group.best_val()])
        style = {"color": colour(n), "capsize": 3, "zorder": 3}
        ax.errorbar([x], [val[0]], [val[1]], fmt="o", label=keyed[group.first.run_id], **style)
        if tested := mean_std(group.values("test_acc")):
            ax.errorbar([x], [tested[0]], [tested[1]], fmt="s", mfc="white", **style)
            bars.append((x, tested[0] - tested[1], tested[0] + tested[1]))
        numbered.append((n, x, val[0]))
        bars.append((x, val[0] - val[1], val[0] + val[1]))
    if not numbered:
        ax.text(0.5, 0.5, "no run records n_params", ha="center", transform=ax.transAxes)
        return fig
    _axis_style(ax)
    marks = [
        Line2D([], [], color="k", marker="o", ls="", label="best val_acc"),
        Line2D([], [], color="k", marker="s", mfc="white", ls="", label="test_acc"),
    ]
    handles, names = ax.get_legend_handles_labels()
    names = [m.get_label() for m in marks] + names
    fig.legend(marks + handles, names, loc="outside right upper", fontsize="small")
    _number_points(fig, ax, numbered, bars)
    return fig
