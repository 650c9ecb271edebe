"""Under- or overfitting, per run: a rule on the learning curves, and what the run logs of it.

The best epoch, one definition everywhere (report, diagnosis, learning curves, explorer.html,
console), named BEST_EPOCH: the first epoch with the highest val_acc, the weights the default
ModelCheckpoint (monitor val_acc, mode max) keeps and test_acc is measured with.

The rule (`diagnose`), on per-epoch mean losses at the epochs that have a validation point
(all of them unless trainer.check_val_every_n_epoch > 1), epochs counted from 0:
- `not learning` when the best validation accuracy closes less than `min_gain` (10 %) of the gap
  between chance (the share of the most common class) and 100 %; the others read curve shapes:
- generalization gap: val_loss - train_loss at the best epoch (the weights one would keep);
- GL(t) = 100 * (val_loss[t] / min over t' <= t of val_loss[t'] - 1), Prechelt's
  generalisation loss in percent (1998, "Early stopping - but when?");
- `overfit` when GL at the last epoch > `gl_threshold` (5 %): validation loss has risen from its
  lowest; the overfitting stretch is the epochs with GL > `gl_threshold`;
- `underfit` when validation loss is lowest at the last epoch and still fell by more than
  `min_drop` (1 %) of its value over that epoch (a single epoch counts as still falling):
  more epochs (or a bigger net) would help;
- `good fit` otherwise: validation loss has levelled off without rising.
Each label comes with its reason, the numbers that decided it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from lightning.pytorch.loggers import Logger
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cnnexp.metrics import CURVES

BEST_EPOCH = "best epoch (highest val_acc)"  # how every output names the best epoch
FIT_TAG, REASON_TAG = "fit_diagnosis", "fit_reason"  # the run's label and why


@dataclass(frozen=True)
class Diagnosis:
    label: str  # "not learning" | "underfit" | "good fit" | "overfit"
    reason: str  # the numbers that decided the label, in words
    best_epoch: int  # BEST_EPOCH
    generalization_gap: float
    gl: float  # GL at the last epoch, percent
    overfit_epochs: list[int] = field(default_factory=list)


def best_epoch(val_acc: dict[int, float]) -> int | None:
    """BEST_EPOCH of {epoch: val_acc}: the first epoch with the highest value; None if empty."""
    return min(val_acc, key=lambda e: (-val_acc[e], e)) if val_acc else None


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
    lowest, last = int(np.argmin(val)), len(val) - 1
    accuracy = {e: v for e, v in history.get("val_acc", {}).items() if e in epochs}
    best = best_epoch(accuracy)
    best = epochs[lowest] if best is None else best  # no val_acc: the val_loss minimum
    stretch = [epochs[i] for i in range(lowest + 1, last + 1) if gl[i] > gl_threshold]
    drop = 1.0 if last == 0 else (val[-2] - val[-1]) / val[-2]  # share val_loss fell last epoch
    best_acc = max(accuracy.values(), default=1.0)
    if best_acc - chance < min_gain * (1 - chance):
        label = "not learning"
        reason = (
            f"best val_acc {best_acc:.3f} closes less than {min_gain:.0%} of the gap from "
            f"chance {chance:.3f} to 1"
        )
    elif gl[last] > gl_threshold:  # implies lowest < last
        label = "overfit"
        reason = (
            f"val_loss {gl[last]:.1f} % above its lowest, at epoch {epochs[lowest]}: more "
            f"than {gl_threshold:g} %"
        )
    elif lowest == last and drop > min_drop:
        label = "underfit"
        reason = (
            "one epoch only"
            if last == 0
            else f"val_loss still fell {drop:.1%} in the last epoch, more than {min_drop:.0%}"
        )
    else:
        label = "good fit"
        reason = (
            f"val_loss levelled off: {-drop:+.1%} in the last epoch, {gl[last]:.1f} % above its "
            "lowest"
        )
    gap = float(history["val_loss"][best] - history["train_loss"][best])
    return Diagnosis(label, reason, best, gap, float(gl[last]), stretch)


def learning_curve_figure(history: dict[str, list[float]], diagnosis: Diagnosis) -> Figure:
    """Loss and accuracy per epoch; BEST_EPOCH a dashed line, the overfitting stretch shaded."""
    fig = Figure(figsize=(9, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(
        f"{diagnosis.label} ({diagnosis.reason})\n{BEST_EPOCH}: {diagnosis.best_epoch}",
        fontsize="medium",
    )
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
        ax.axvline(diagnosis.best_epoch, color="grey", ls="--", label=BEST_EPOCH)
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


def chance_accuracy(labels: torch.Tensor) -> float:
    """The accuracy of always answering the most common class among `labels` (0 if none)."""
    return float(labels.bincount().max() / len(labels)) if len(labels) else 0.0


def log_fit_diagnosis(client, run_id: str, logger: Logger, chance: float, step: int) -> None:
    """Once fit is over (rank 0; the run's recording, outside the timed fit): tags `fit_diagnosis`
    (the label) and `fit_reason`, metrics `best_epoch` (BEST_EPOCH) and `generalization_gap`
    through the run's `logger` at `step`, the learning curves (read back from the run, so a
    resumed run is diagnosed on all its epochs) as artifact `learning_curve.png`. `chance`:
    chance_accuracy of the validation labels. Nothing where no epoch has both losses (e.g. no
    validation)."""
    history = stored_history(client, run_id)
    if not set(history["val_loss"]) & set(history["train_loss"]):
        return
    diagnosis = diagnose(history, chance)
    client.set_tag(run_id, FIT_TAG, diagnosis.label)
    client.set_tag(run_id, REASON_TAG, diagnosis.reason)
    metrics = {
        "best_epoch": diagnosis.best_epoch,
        "generalization_gap": diagnosis.generalization_gap,
    }
    logger.log_metrics(metrics, step=step)
    client.log_figure(run_id, learning_curve_figure(history, diagnosis), "learning_curve.png")
