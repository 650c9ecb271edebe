"""Sweeps through the real CLI: Optuna, parallel joblib jobs on one sqlite store, failed jobs,
submitit; every job of one sweep carries the same `sweep_id` tag."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cnnexp import schema
from cnnexp.tracking import run_tags
from tests.conftest import CONF, FAST, all_runs, compose_cfg, error_lines, run_cli, store

TINY = ["model=tiny", "data=digits", "analysis=none", *FAST]
EPOCH_METRICS = ["train_loss", "val_loss", "train_acc", "val_acc"]
ONCE_METRICS = [
    "test_acc",
    "test_loss",
    "n_params",
    "flops_per_image",
    "fit_seconds",
    "throughput_train",
    "throughput_infer",
    "throughput_train_iqr",
    "throughput_infer_iqr",
]
BOOM = "+callbacks.boom._target_=tests.helpers.FailAtEpoch"  # raises at the end of epoch `epoch`


def sweep_dir(out: Path) -> Path:
    [found] = out.glob("multirun/*/*")
    return found


def best_val_acc(out: Path) -> dict[str, float]:
    """run id -> the best val_acc in its history (what train() returns to the sweeper)."""
    client = store(out)
    return {
        r.info.run_id: max(m.value for m in client.get_metric_history(r.info.run_id, "val_acc"))
        for r in all_runs(out)
        if r.info.status == "FINISHED"
    }


@pytest.mark.slow
def test_optuna_search_records_every_trial_and_the_best_one(out) -> None:
    result = run_cli(
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        "model.activation=choice(relu,tanh)",  # narrows the preset's choice
        *TINY,
        out=out,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = all_runs(out)
    assert [r.info.status for r in runs] == ["FINISHED"] * 3
    assert {r.data.tags["sweep_id"] for r in runs} == {sweep_dir(out).name}
    results = OmegaConf.load(sweep_dir(out) / "optimization_results.yaml")
    best = best_val_acc(out)
    assert results.best_value == max(best.values())
    assert set(results.best_params) == {"optimizer.lr", "model.activation"}
    lr, activation = results.best_params["optimizer.lr"], results.best_params["model.activation"]
    best_runs = [r for r in runs if best[r.info.run_id] == results.best_value]  # ties possible
    assert (str(lr), activation) in {
        (r.data.params["optimizer.lr"], r.data.params["model.activation"]) for r in best_runs
    }
    assert 0.0003 <= lr <= 0.03 and activation in ("relu", "tanh")


@pytest.mark.slow
def test_optuna_goes_on_after_a_failed_trial(out) -> None:
    result = run_cli(
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        *TINY,
        BOOM,
        "+callbacks.boom.epoch=${hydra:job.num}",  # max_epochs 1: job 0 fails, job 1 cannot
        out=out,
    )
    assert result.returncode == 1
    runs = {r.data.params["callbacks.boom.epoch"]: r for r in all_runs(out)}
    assert {k: r.info.status for k, r in runs.items()} == {"0": "FAILED", "1": "FINISHED"}
    results = OmegaConf.load(sweep_dir(out) / "optimization_results.yaml")
    assert results.best_value == max(best_val_acc(out).values())
    assert results.best_params["model.activation"] == runs["1"].data.params["model.activation"]
    [line] = error_lines(result.stderr)
    assert line.startswith("cnnexp: error: job 0 failed: RuntimeError: planned failure at epoch 0")


@pytest.mark.slow
def test_four_parallel_joblib_jobs_lose_no_metric_point(out) -> None:
    result = run_cli(
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=4",
        "seed=0,1,2,3",
        *TINY,
        "trainer.max_epochs=3",
        out=out,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = all_runs(out)
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1", "2", "3"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["sweep_id"] for r in runs} == {sweep_dir(out).name}
    client = store(out)
    for run in runs:
        for key in EPOCH_METRICS:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert sorted(steps) == [0, 1, 2], (run.data.params["seed"], key)
        for key in ONCE_METRICS:
            assert len(client.get_metric_history(run.info.run_id, key)) == 1, key
    with sqlite3.connect(out / "mlflow.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


@pytest.mark.slow
def test_failing_jobs_are_listed_and_the_others_still_run(out) -> None:
    result = run_cli(
        "-m",
        *TINY,
        "model.activation=relu,swish",  # jobs 2, 3: bad input, found before any run opens
        BOOM,
        "+callbacks.boom.epoch=0,9",  # max_epochs 1: job 0 fails in training, job 1 does not
        out=out,
    )
    assert result.returncode == 1  # 2 only when every failure is bad input
    runs = {r.data.params["callbacks.boom.epoch"]: r for r in all_runs(out)}
    assert {k: r.info.status for k, r in runs.items()} == {"0": "FAILED", "9": "FINISHED"}
    assert runs["0"].data.tags["error"] == "RuntimeError: planned failure at epoch 0"
    assert {r.data.tags["sweep_id"] for r in runs.values()} == {sweep_dir(out).name}
    job_lines = error_lines(result.stderr)  # at the end, one line per failed job, and nothing else
    assert [line.split(" failed: ")[0] for line in job_lines] == [
        f"cnnexp: error: job {n}" for n in (0, 2, 3)
    ]
    assert job_lines[0].startswith(
        "cnnexp: error: job 0 failed: RuntimeError: planned failure at epoch 0 (overrides: "
    )
    assert "+callbacks.boom.epoch=0" in job_lines[0]
    log = sweep_dir(out) / "0" / "__main__.log"  # the bug's traceback: in the job's log only
    assert job_lines[0].endswith(f"outputs: {sweep_dir(out) / '0'}; traceback: {log})")
    assert "Traceback" in log.read_text() and "Traceback" not in result.stdout + result.stderr
    assert "failed: model.activation: 'swish' is not allowed" in job_lines[1]


@pytest.mark.slow
def test_submitit_local_jobs_share_one_sweep_id(out) -> None:
    result = run_cli(
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=5",
        "seed=0,1",
        *TINY,
        out=out,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = all_runs(out)
    assert [r.info.status for r in runs] == ["FINISHED"] * 2
    assert {r.data.tags["sweep_id"] for r in runs} == {sweep_dir(out).name}
    assert len(list((sweep_dir(out) / ".submitit").glob("*/*_result.pkl"))) == 2


def test_slurm_preset_extends_the_submitit_plugin() -> None:
    schema.register()  # conf/ refers to the schemas (data/_mnist5k) and resolvers it registers
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 1, 240)
    assert launcher.signal_delay_s == 120  # a plugin default the preset leaves alone


def test_a_single_run_carries_no_sweep_id(tmp_path) -> None:
    assert "sweep_id" not in run_tags(compose_cfg(*TINY), tmp_path)
