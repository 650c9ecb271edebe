"""The real CLI end to end: runs land in a temp sqlite store with every promised record."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import FAST, ROOT, all_runs, cli_in_process, run_cli, store

pytestmark = pytest.mark.slow
EPOCH_METRICS = ["train_loss", "val_loss", "train_acc", "val_acc"]


def test_one_epoch_run_lands_in_mlflow(out) -> None:
    result = run_cli("model=tiny", *FAST, "trainer.max_epochs=2", out=out)
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = all_runs(out)
    client = store(out)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "tiny-relu-mnist5k"
    for key in EPOCH_METRICS:
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1], key
    metrics = run.data.metrics
    assert 0 <= metrics["test_acc"] <= 1
    assert metrics["n_params"] > 0 and metrics["flops_per_image"] > metrics["n_params"]
    assert run.data.params["model.activation"] == "relu"
    assert run.data.params["trainer.max_epochs"] == "2"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "config.yaml" in artifacts
    [best] = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")]
    assert best.startswith("checkpoints/best-epoch=") and best.endswith(".ckpt"), artifacts
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.artifact_location.startswith(f"file://{out}")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "test_acc" in result.stdout and run.info.run_id in result.stdout


def test_multirun_gives_one_run_per_job_and_loads_data_once(out) -> None:
    result = run_cli("-m", "model=tiny", "model.activation=relu,tanh", *FAST, out=out)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = all_runs(out)
    assert sorted(r.info.run_name for r in runs) == ["tiny-relu-mnist5k", "tiny-tanh-mnist5k"]
    assert len({r.info.experiment_id for r in runs}) == 1
    assert len({r.data.tags["output_dir"] for r in runs}) == 2
    log = result.stdout + result.stderr
    assert log.count("data mnist5k: 3500/500/1000 train/val/test uint8 images") == 1
    assert log.count("reused from cache") == 1


def test_failure_inside_training_ends_failed_with_the_error(out) -> None:
    result = cli_in_process(
        "model=tiny",
        *FAST,
        "trainer.max_epochs=2",
        "+callbacks.boom._target_=tests.helpers.FailAtEpoch",
        out=out,
    )
    assert result.returncode != 0
    [run] = all_runs(out)
    assert run.info.status == "FAILED"
    assert "planned failure at epoch 0" in run.data.tags["error"]


def test_help_is_fast_path_without_torch() -> None:
    code = (
        "import runpy, sys; sys.argv = ['cnnexp', '--help']\n"
        "try:\n    runpy.run_module('cnnexp', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules and 'lightning' not in sys.modules\n"
        "import copy; from hydra.core.config_store import ConfigStore as S\n"
        "assert copy.deepcopy(S.instance()) is S.instance()\n"  # listing 117 groups copies none
        "print('NO_TORCH')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert "NO_TORCH" in result.stdout, result.stderr
    assert "model: " in result.stdout and "stacked3x3" in result.stdout
    groups = result.stdout.split("== Config ==")[0]
    assert "data: cifar10, digits," in groups and "model: bottleneck1x1, deep," in groups
    assert re.findall(r"[:,] _\w+", groups) == []  # no internal schema (_cnn, _mnist5k, ...)


def test_same_seed_twice_gives_identical_val_loss_history(out) -> None:
    args = ("model=tiny", "data=digits", "analysis=none", *FAST, "trainer.max_epochs=3", "seed=7")
    args += ("data.augment=[{_target_:torchvision.transforms.v2.RandomAffine,degrees:10}]",)
    for run in (run_cli, cli_in_process):  # a fresh process, then this worker's own
        assert run(*args, out=out).returncode == 0
    client = store(out)
    histories = [
        [m.value for m in client.get_metric_history(r.info.run_id, "val_loss")]
        for r in all_runs(out)
    ]
    assert len(histories) == 2 and len(histories[0]) == 3
    assert histories[0] == histories[1]


def test_tracking_uri_env_wins_over_config(out, tmp_path) -> None:
    uri = f"sqlite:///{tmp_path}/team.db"
    result = cli_in_process("model=tiny", *FAST, out=out, env={"MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (out / "mlflow.db").exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    [experiment] = [e for e in client.search_experiments() if e.name == "cnnexp"]
    assert len(client.search_runs([experiment.experiment_id])) == 1


def test_console_says_each_line_once_and_nothing_on_stderr(out) -> None:
    """A default-looking run (progress bar and model summary on) on a new store: every log line
    once, no library noise on stderr, cnnexp's own summary instead of Lightning's FLOPs 0."""
    result = run_cli("model=tiny", "data=digits", "trainer.max_epochs=1", "analysis=none", out=out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""  # no warning, no second copy of a log line, no MLflow table INFO
    lines = result.stdout.splitlines()
    logged = [line.split(" - ", 1)[1] for line in lines if "][INFO] - " in line]
    assert logged and len(logged) == len(set(logged)), logged
    assert "Total FLOPs" not in result.stdout
    summary = result.stdout.split("tiny-relu-digits: input 1x8x8\n", 1)[1]
    header, first = summary.splitlines()[:2]
    assert header.split()[:5] == ["layer", "op", "output", "params", "FLOPs"]
    assert first.split()[:5] == ["features.conv1.conv", "Conv2d", "8x8x8", "72", "9,216"]
