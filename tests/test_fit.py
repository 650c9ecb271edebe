"""Fit diagnosis: the rule on synthetic learning curves; a real run's tag, metrics and figure."""

from __future__ import annotations

import pytest

from cnnexp.analysis.fit import (
    BEST_EPOCH,
    best_epoch,
    diagnose,
    generalization_loss,
    learning_curve_figure,
)
from tests.conftest import FAST, all_runs, cli_in_process, compose_cfg, store


def curves(train: list[float], val: list[float], epochs: list[int] | None = None, **acc) -> dict:
    """{metric: {epoch: value}} as stored in MLflow (epochs 0, 1, ... unless given)."""
    epochs = epochs or list(range(len(val)))
    history = {
        "train_loss": dict(enumerate(train)),
        "val_loss": dict(zip(epochs, val, strict=True)),
    }
    return history | {k: dict(zip(epochs, v, strict=True)) for k, v in acc.items()}


def test_still_falling_validation_loss_is_underfit() -> None:
    result = diagnose(curves([2.0, 1.5, 1.2, 1.0], [2.1, 1.7, 1.4, 1.2]))
    assert (result.label, result.best_epoch, result.overfit_epochs) == ("underfit", 3, [])
    assert result.generalization_gap == pytest.approx(0.2) and result.gl == 0


def test_one_epoch_is_underfit() -> None:
    assert diagnose(curves([1.0], [1.1])).label == "underfit"


def test_rising_validation_loss_while_training_loss_falls_is_overfit() -> None:
    train = [1.0, 0.7, 0.5, 0.35, 0.25, 0.18]
    val = [1.1, 0.8, 0.7, 0.72, 0.76, 0.85]  # best at epoch 2; GL 2.9, 8.6, 21.4 %
    result = diagnose(curves(train, val))
    assert (result.label, result.best_epoch) == ("overfit", 2)
    assert result.overfit_epochs == [4, 5]
    assert result.gl == pytest.approx(100 * (0.85 / 0.7 - 1))
    assert result.generalization_gap == pytest.approx(0.2)


def test_levelled_off_validation_loss_is_good_fit() -> None:
    val = [1.0, 0.6, 0.45, 0.40, 0.401, 0.399]  # best last, but fell only 0.5 % in that epoch
    result = diagnose(curves([0.9, 0.55, 0.42, 0.38, 0.37, 0.37], val))
    assert (result.label, result.best_epoch) == ("good fit", 5)
    assert diagnose(curves([0.9, 0.5, 0.4, 0.4], [1.0, 0.5, 0.49, 0.5])).label == "good fit"


def test_generalization_loss_is_relative_to_the_best_so_far() -> None:
    assert generalization_loss([2.0, 1.0, 1.5, 0.5]).tolist() == pytest.approx([0, 0, 50, 0])


def test_sparse_validation_is_diagnosed_on_the_epochs_that_have_it() -> None:
    train = [1.0, 0.7, 0.5, 0.35, 0.25, 0.18]  # check_val_every_n_epoch=2: val at 1, 3, 5
    result = diagnose(curves(train, [0.8, 0.7, 0.9], epochs=[1, 3, 5]))
    assert (result.label, result.best_epoch, result.overfit_epochs) == ("overfit", 3, [5])
    assert result.generalization_gap == pytest.approx(0.7 - 0.35)


def test_accuracy_near_chance_is_not_learning_whatever_the_losses_do() -> None:
    stuck = curves([2.3, 2.3, 2.3], [2.31, 2.30, 2.30], val_acc=[0.10, 0.11, 0.12])
    assert diagnose(stuck, chance=0.1).label == "not learning"  # 12 % < 10 % + 10 % of 90 %
    learnt = curves([2.3, 1.0, 0.5], [2.2, 1.1, 0.6], val_acc=[0.10, 0.60, 0.85])
    assert diagnose(learnt, chance=0.1).label == "underfit"


def test_the_best_epoch_is_the_first_with_the_highest_val_acc_whatever_val_loss_does() -> None:
    """The checkpoint's epoch (val_acc, max), not the val_loss minimum: one definition for the
    diagnosis, its reason, the learning-curve figure (and the report and explorer, which read
    the same function or the metric `best_epoch` it logs)."""
    history = curves(
        [1.0, 0.6, 0.4, 0.3, 0.2],
        [0.9, 0.7, 0.65, 0.68, 0.75],  # lowest at epoch 2, then rising: GL 4.6 %, 15.4 %
        val_acc=[0.6, 0.7, 0.78, 0.81, 0.81],  # highest first at epoch 3
    )
    result = diagnose(history)
    assert best_epoch(history["val_acc"]) == result.best_epoch == 3
    assert result.label == "overfit" and "at epoch 2" in result.reason  # the val_loss minimum
    assert result.generalization_gap == pytest.approx(0.68 - 0.3)
    figure = learning_curve_figure(history, result)
    assert f"{BEST_EPOCH}: 3" in figure._suptitle.get_text()
    assert BEST_EPOCH in [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert best_epoch({}) is None


def test_each_label_says_why() -> None:
    assert diagnose(curves([1.0], [1.1])).reason == "one epoch only"
    underfit = diagnose(curves([2.0, 1.5], [2.0, 1.5]))
    assert underfit.reason == "val_loss still fell 25.0% in the last epoch, more than 1%"
    good = diagnose(curves([0.9, 0.5, 0.4, 0.4], [1.0, 0.5, 0.49, 0.5]))
    assert good.label == "good fit" and good.reason.startswith("val_loss levelled off: +2.0%")


def test_no_epoch_with_both_curves_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least one epoch"):
        diagnose({"train_loss": {0: 1.0}, "val_loss": {}})


def test_early_stopping_callbacks_keep_the_checkpoint() -> None:
    callbacks = compose_cfg("callbacks=early_stopping").callbacks
    assert set(callbacks) == {"model_checkpoint", "early_stopping"}
    assert callbacks.early_stopping.monitor == "val_loss" and callbacks.early_stopping.mode == "min"


@pytest.mark.slow
def test_three_epoch_run_logs_fit_diagnosis(out) -> None:
    # digits: the tiny net learns it within 3 epochs (val_acc ≈ 0.67); on 300 MNIST images it
    # stays at chance, and the run is then rightly labelled "not learning".
    args = ("model=tiny", "data=digits", *FAST, "trainer.max_epochs=3")
    result = cli_in_process(*args, "callbacks=early_stopping", out=out)
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = all_runs(out)
    assert run.data.metrics["val_acc"] > 0.3
    assert run.data.tags["fit_diagnosis"] in {"underfit", "good fit", "overfit"}
    client, run_id = store(out), run.info.run_id
    val_loss = {m.step: m.value for m in client.get_metric_history(run_id, "val_loss")}
    assert sorted(val_loss) == [0, 1, 2]  # one value per epoch, steps are epoch indices
    val_acc = {m.step: m.value for m in client.get_metric_history(run_id, "val_acc")}
    assert run.data.metrics["best_epoch"] == best_epoch(val_acc)
    assert run.data.tags["fit_reason"]  # the numbers behind the label
    assert "generalization_gap" in run.data.metrics
    paths = {a.path for a in client.list_artifacts(run_id)}
    assert "learning_curve.png" in paths
