"""Any lightning.Trainer argument works as written (no `+`), and every run records honest curves:
at most one point per metric per step, step = epoch index, the last validation of an epoch."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnexp.train import train
from tests.conftest import FAST, all_runs, store

pytestmark = pytest.mark.slow
BASE = ["model=tiny", "data=digits", *FAST, "trainer.max_epochs=3"]  # 20 training batches/epoch
BASE += ["analysis.n_images=2", "analysis.max_channels=4", "analysis.erf_samples=2"]  # every
BASE += ["analysis.health_images=32", "analysis.patch_images=64", "analysis.top_k=2"]  # kind
ALL = [0, 1, 2]  # every epoch
BOTH = {"best", "latest"}  # the best checkpoint (callbacks=default) and the latest state

FLAGS = [  # (overrides, train_loss steps, val_acc steps, checkpoints kept)
    (["trainer.overfit_batches=2"], ALL, ALL, BOTH),
    (["trainer.limit_train_batches=3", "trainer.limit_val_batches=2"], ALL, ALL, BOTH),
    (["trainer.limit_test_batches=1"], ALL, ALL, BOTH),
    (["trainer.val_check_interval=0.5"], ALL, ALL, BOTH),
    (["trainer.val_check_interval=7", "trainer.check_val_every_n_epoch=null"], ALL, ALL, BOTH),
    (["trainer.check_val_every_n_epoch=2"], ALL, [1], BOTH),
    (["trainer.max_steps=45", "trainer.max_epochs=-1", "scheduler=none"], ALL, [0, 1], BOTH),
    (["trainer.accumulate_grad_batches=2"], ALL, ALL, BOTH),
    (["trainer.gradient_clip_val=0.5"], ALL, ALL, BOTH),
    (["trainer.precision=bf16-mixed"], ALL, ALL, BOTH),
    (["trainer.deterministic=true"], ALL, ALL, BOTH),
    (["trainer.enable_checkpointing=false"], ALL, ALL, set()),
    (["callbacks=none"], ALL, ALL, {"latest"}),
]


def kept(out: Path) -> set[str]:
    return {p.name.split("-")[0].removesuffix(".ckpt") for p in out.glob("runs/*/checkpoints/*")}


@pytest.mark.parametrize(("overrides", "train_steps", "val_steps", "checkpoints"), FLAGS)
def test_trainer_flag_runs_and_logs_each_step_once(
    overrides, train_steps, val_steps, checkpoints, out, compose_job
) -> None:
    train(compose_job(*BASE, *overrides))
    [run] = all_runs(out)
    assert run.info.status == "FINISHED"
    client = store(out)
    for key in run.data.metrics:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps)), (key, steps)  # never two points at one step
    steps = {
        key: sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        for key in ("train_loss", "val_acc", "test_acc")
    }
    assert steps["train_loss"] == train_steps and steps["val_acc"] == val_steps
    assert len(steps["test_acc"]) == 1
    assert run.data.tags["fit_diagnosis"] in {"not learning", "underfit", "good fit", "overfit"}
    assert kept(out) == checkpoints
    uploaded = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert bool(uploaded) == ("best" in checkpoints)  # only a best checkpoint is uploaded


def test_fast_dev_run_is_a_dry_run_that_records_nothing(out, compose_job, capsys) -> None:
    train(compose_job(*BASE, "trainer.fast_dev_run=true"))
    assert all_runs(out) == []
    assert "fast_dev_run: fit, validation and test ran; nothing recorded" in capsys.readouterr().out


def test_a_run_at_chance_is_labelled_not_learning(out, compose_job) -> None:
    train(compose_job(*BASE, "trainer.max_epochs=2", "optimizer.lr=0"))
    [run] = all_runs(out)
    assert run.data.tags["fit_diagnosis"] == "not learning"
