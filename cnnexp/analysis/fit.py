"""Under- or overfitting, per run: a rule on the learning curves and a callback that logs it.

The rule (`diagnose`), on per-epoch mean losses at the epochs that have a validation point
(all of them unless trainer.check_val_every_n_epoch > 1), epochs counted from 0:
- `not learning` when the best validation accuracy closes less than `min_gain` (10 %) of the gap
  between chance (the share of the most common class) and 100 %; the others read curve shapes:
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
    label: str  # "not learning" | "underfit" | "good fit" | "overfit"
    best_epoch: int
    generalization_gap: float
    gl: float  # GL at the last epoch, percent
    overfit_epochs: list[int] = field(default_factory=list)


def generalization_loss(val_loss: list[float]) -> np.ndarray:
    """Prechelt's GL(t) in percent for every epoch t."""
    val = np.asarray(val_loss, dtype=float)
    return 100 * (val / np.minimum.accumulate(val) - 1)


def diagnose(
    history: dict[str, dict[int, float]],
    chance: float = 0.0,
    gl_threshold: float = 5.0,
    min_drop: float = 0.01,
    min_gain: float = 0.1,
) -> Diagnosis:
    """Label the learning curves ({metric: {epoch: value}}) by the rule in the module docstring;
    only epochs with both a train and a val loss take part."""
    epochs = sorted(set(history["val_loss"]) & set(history["train_loss"]))
    if not epochs:
        raise ValueError("diagnose needs at least one epoch with train and val loss")
    val = [history["val_loss"][e] for e in epochs]
    gl = generalization_loss(val)
    best_i, last = int(np.argmin(val)), len(val) - 1
    best = epochs[best_i]
    stretch = [epochs[i] for i in range(best_i + 1, last + 1) if gl[i] > gl_threshold]
    still_falling = last == 0 or (val[-2] - val[-1]) > min_drop * val[-2]
    best_acc = max(history.get("val_acc", {}).values(), default=1.0)
    if best_acc - chance < min_gain * (1 - chance):
        label = "not learning"
    elif gl[last] > gl_threshold:  # implies best < last
        label = "overfit"
    elif best_i == last and still_falling:
        label = "underfit"
    else:
        label = "good fit"
    gap = float(history["val_loss"][best] - history["train_loss"][best])
    return Diagnosis(label, best, gap, float(gl[last]), stretch)


def learning_curve_figure(history: dict[str, list[float]], diagnosis: Diagnosis) -> Figure:
    """Loss and accuracy per epoch; the best epoch a dashed line, the overfitting stretch shaded."""
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(f"{diagnosis.label}: best epoch {diagnosis.best_epoch}, GL {diagnosis.gl:.1f} %")
    for ax, kind in zip(fig.subplots(1, 2), ("loss", "acc"), strict=True):
        for stage in ("train", "val"):
            points = sorted(history.get(f"{stage}_{kind}", {}).items())
            ax.plot(
                [e for e, _ in points],
                [v for _, v in points],
                marker="o",
                ms=3,
                label=f"{stage}_{kind}",
            )
        ax.axvline(diagnosis.best_epoch, color="grey", ls="--", label="best epoch")
        for t in diagnosis.overfit_epochs:
            ax.axvspan(t - 0.5, t + 0.5, color="tab:red", alpha=0.12, lw=0)
        ax.set(xlabel="epoch", ylabel=kind)
        ax.legend(fontsize="small")
    return fig


def stored_history(client, run_id: str) -> dict[str, dict[int, float]]:
    """The run's per-epoch curves as stored ({metric: {epoch: value}}), so a resumed run is
    diagnosed on all its epochs."""
    return {
        name: {m.step: m.value for m in client.get_metric_history(run_id, name)} for name in CURVES
    }


class FitDiagnosis(L.Callback):
    """At fit end: tag `fit_diagnosis`, metrics `best_epoch` and `generalization_gap`, the
    learning curves (read back from the run) as artifact `learning_curve.png`. `chance`: the
    accuracy of always answering the most common validation class."""

    def __init__(self, chance: float = 0.0) -> None:
        self.chance = chance

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        client, run_id = trainer.logger.experiment, trainer.logger.run_id
        history = stored_history(client, run_id)
        if not set(history["val_loss"]) & set(history["train_loss"]):
            return  # no epoch with both (e.g. interrupted in the first one, or no validation)
        diagnosis = diagnose(history, self.chance)
        client.set_tag(run_id, "fit_diagnosis", diagnosis.label)
        metrics = {
            "best_epoch": diagnosis.best_epoch,
            "generalization_gap": diagnosis.generalization_gap,
        }
        trainer.logger.log_metrics(metrics, step=trainer.current_epoch)
        client.log_figure(run_id, learning_curve_figure(history, diagnosis), "learning_curve.png")
