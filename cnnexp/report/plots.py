"""Report figures, a line or point per seed group (cnnexp/report/table.py SeedGroup): validation
curves as the mean over the group's seeds with a ±1 standard deviation band; accuracy against
parameter count, the mean with a ±1 standard deviation bar."""

from __future__ import annotations

import statistics

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cnnexp.report.select import CURVES
from cnnexp.report.table import SeedGroup, mean_std


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


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
    fig = _figure(11, 4)
    for ax, key in zip(fig.subplots(1, 2), CURVES, strict=True):
        for group in groups:
            epochs, mean, std = mean_curve(group, key)
            if not epochs:
                continue
            [line] = ax.plot(epochs, mean, marker="o", ms=3, label=labels[group.first.run_id])
            if len(group.runs) > 1:
                low = [m - s for m, s in zip(mean, std, strict=True)]
                high = [m + s for m, s in zip(mean, std, strict=True)]
                ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2, lw=0)
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


def accuracy_vs_params_figure(groups: list[SeedGroup], labels: dict[str, str]) -> Figure:
    """Best val_acc (and test_acc) against trainable parameters, log x, each group's mean with
    a ±1 standard deviation bar, each point labelled."""
    fig = _figure(7, 4.5)
    ax = fig.subplots()
    placed = placed_groups(groups)
    xs = [statistics.mean(g.values("n_params")) for g in placed]
    val = [mean_std([v for v, _ in g.best_val()]) for g in placed]
    if placed:
        means, stds = zip(*val, strict=True)
        ax.errorbar(xs, means, stds, fmt="o", capsize=3, label="best val_acc", zorder=3)
    tested = [(x, mean_std(g.values("test_acc"))) for x, g in zip(xs, placed, strict=True)]
    tested = [(x, ms) for x, ms in tested if ms]
    if tested:
        ax.errorbar(
            [x for x, _ in tested],
            [m for _, (m, _) in tested],
            [s for _, (_, s) in tested],
            fmt="s",
            mfc="none",
            color="tab:orange",
            capsize=3,
            label="test_acc",
            zorder=3,
        )
    for group, x, (y, _) in zip(placed, xs, val, strict=True):
        ax.annotate(
            labels[group.first.run_id],
            (x, y),
            xytext=(4, 4),
            textcoords="offset points",
            fontsize="small",
        )
    if placed:
        ax.set_xscale("log")
        ax.margins(x=0.2)  # room for the labels
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no run records n_params", ha="center", transform=ax.transAxes)
    ax.set(xlabel="trainable parameters (log)", ylabel="accuracy", title="accuracy vs parameters")
    ax.grid(alpha=0.3, which="both")
    return fig
