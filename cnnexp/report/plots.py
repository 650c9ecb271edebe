"""Report figures: every run's validation curves overlaid; accuracy against parameter count."""

from __future__ import annotations

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cnnexp.report.select import CURVES, RunRecord
from cnnexp.report.table import best_val_acc


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def curves_figure(runs: list[RunRecord], labels: dict[str, str]) -> Figure:
    """val_acc and val_loss per epoch, a line per run (a run with one epoch: a point)."""
    fig = _figure(11, 4)
    for ax, key in zip(fig.subplots(1, 2), CURVES, strict=True):
        for run in runs:
            if run.curves.get(key):
                epochs, values = zip(*run.curves[key], strict=True)
                ax.plot(epochs, values, marker="o", ms=3, label=labels[run.run_id])
        ax.set(xlabel="epoch", ylabel=key, title=key)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, names = fig.axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="outside right upper", fontsize="small")
    return fig


def placed_runs(runs: list[RunRecord]) -> list[RunRecord]:
    """The runs the accuracy plot can place: a parameter count and a val_acc curve."""
    return [run for run in runs if "n_params" in run.metrics and best_val_acc(run)]


def accuracy_vs_params_figure(runs: list[RunRecord], labels: dict[str, str]) -> Figure:
    """Best val_acc (and test_acc) against trainable parameters, log x, each point labelled."""
    fig = _figure(7, 4.5)
    ax = fig.subplots()
    placed = placed_runs(runs)
    xs = [run.metrics["n_params"] for run in placed]
    ax.scatter(xs, [best_val_acc(run)[0] for run in placed], label="best val_acc", zorder=3)
    tested = [run for run in placed if "test_acc" in run.metrics]
    ax.scatter(
        [run.metrics["n_params"] for run in tested],
        [run.metrics["test_acc"] for run in tested],
        marker="s",
        facecolors="none",
        edgecolors="tab:orange",
        label="test_acc",
        zorder=3,
    )
    for run, x in zip(placed, xs, strict=True):
        ax.annotate(
            labels[run.run_id],
            (x, best_val_acc(run)[0]),
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
