"""Under- or overfitting, per run: a rule on the learning curves and a callback that logs it.

The rule (`diagnose`), on per-epoch mean losses, epochs counted from 0:
- best epoch: the first epoch with the lowest validation loss;
- generalization gap: val_loss - train_loss at the best epoch (the weights one would keep);
- GL(t) = 100 * (val_loss[t] / min over t' <= t of val_loss[t'] - 1), Prechelt's
  generalisation loss in percent (1998, "Early stopping - but when?");
- `overfit` when GL at the last epoch > `gl_threshold` (5 %): validation loss has risen from its
  best; the overfitting stretch is the epochs after the best one with GL > `gl_threshold`;
- `underfit` when the best epoch is the last one and validation loss still fell by more than
  `min_drop` (1 %) of its value over that last epoch (a single epoch counts as still falling):
  more epochs (or a bigger net) would help;
- `good fit` otherwise: validation loss has levelled off without rising.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import lightning as L
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

CURVES = ("train_loss", "val_loss", "train_acc", "val_acc")


@dataclass(frozen=True)
class Diagnosis:
    label: str  # "underfit" | "good fit" | "overfit"
    best_epoch: int
    generalization_gap: float
    gl: float  # GL at the last epoch, percent
    overfit_epochs: list[int] = field(default_factory=list)


def generalization_loss(val_loss: list[float]) -> np.ndarray:
    """Prechelt's GL(t) in percent for every epoch t."""
    val = np.asarray(val_loss, dtype=float)
    return 100 * (val / np.minimum.accumulate(val) - 1)


def diagnose(
    train_loss: list[float],
    val_loss: list[float],
    gl_threshold: float = 5.0,
    min_drop: float = 0.01,
) -> Diagnosis:
    """Label the learning curves underfit, good fit or overfit (rule in the module docstring)."""
    if not val_loss or len(train_loss) != len(val_loss):
        raise ValueError("diagnose needs equally long, non-empty train and val loss curves")
    best, last = int(np.argmin(val_loss)), len(val_loss) - 1
    gl = generalization_loss(val_loss)
    stretch = [t for t in range(best + 1, last + 1) if gl[t] > gl_threshold]
    still_falling = last == 0 or (val_loss[-2] - val_loss[-1]) > min_drop * val_loss[-2]
    if gl[last] > gl_threshold:  # implies best < last
        label = "overfit"
    elif best == last and still_falling:
        label = "underfit"
    else:
        label = "good fit"
    gap = float(val_loss[best] - train_loss[best])
    return Diagnosis(label, best, gap, float(gl[last]), stretch)


def learning_curve_figure(history: dict[str, list[float]], diagnosis: Diagnosis) -> Figure:
    """Loss and accuracy per epoch; the best epoch a dashed line, the overfitting stretch shaded."""
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(f"{diagnosis.label}: best epoch {diagnosis.best_epoch}, GL {diagnosis.gl:.1f} %")
    for ax, kind in zip(fig.subplots(1, 2), ("loss", "acc"), strict=True):
        for stage in ("train", "val"):
            values = history.get(f"{stage}_{kind}", [])
            ax.plot(range(len(values)), values, marker="o", ms=3, label=f"{stage}_{kind}")
        ax.axvline(diagnosis.best_epoch, color="grey", ls="--", label="best epoch")
        for t in diagnosis.overfit_epochs:
            ax.axvspan(t - 0.5, t + 0.5, color="tab:red", alpha=0.12, lw=0)
        ax.set(xlabel="epoch", ylabel=kind)
        ax.legend(fontsize="small")
    return fig


def stored_history(client, run_id: str) -> dict[str, list[float]]:
    """The run's per-epoch curves as logged (one value per step, the last one logged wins),
    so a resumed run is diagnosed on all its epochs."""
    history = {}
    for name in CURVES:
        by_step = {
            m.step: m.value
            for m in sorted(
                client.get_metric_history(run_id, name), key=lambda m: (m.step, m.timestamp)
            )
        }
        history[name] = [by_step[step] for step in sorted(by_step)]
    return history


class FitDiagnosis(L.Callback):
    """At fit end: tag `fit_diagnosis`, metrics `best_epoch` and `generalization_gap`, the
    learning curves (read back from the run) as artifact `learning_curve.png`."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        client, run_id = trainer.logger.experiment, trainer.logger.run_id
        history = stored_history(client, run_id)
        if not history["val_loss"] or len(history["train_loss"]) != len(history["val_loss"]):
            return  # no full epoch (e.g. interrupted in the first one)
        diagnosis = diagnose(history["train_loss"], history["val_loss"])
        client.set_tag(run_id, "fit_diagnosis", diagnosis.label)
        trainer.logger.log_metrics(
            {
                "best_epoch": diagnosis.best_epoch,
                "generalization_gap": diagnosis.generalization_gap,
            },
            step=0,
        )
        client.log_figure(run_id, learning_curve_figure(history, diagnosis), "learning_curve.png")
