"""The real CLI end to end: runs land in a temp sqlite store with every promised record."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import FAST, ROOT, all_runs, run_cli, store

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
    assert any(a.startswith("best-epoch=") for a in artifacts), artifacts
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
    assert log.count("data mnist5k: loaded") == 1 and log.count("reused from cache") == 1


BAD_INPUTS = [
    (["model.activation=swish"], "model.activation: unknown value 'swish'"),
    (["model.blocks=[{conv:0,channels:8}]"], "model.blocks[0].conv: 0 is not allowed"),
    (["model.blocks=[{conv:4,channels:8}]"], "kernel 4 is even"),
    (["model.blocks=[{conv:3,channels:-2}]"], "model.blocks[0].channels: -2"),
    (
        [
            "data=digits",
            "model.blocks=[{conv:3,channels:4},{pool:max},{pool:max},{pool:max},{pool:max}]",
        ],
        "model.blocks[4]: ",
    ),
    (["data.name=imagenet"], "data.name: unknown value 'imagenet'"),
    (["data=image_folder"], "data.path"),
    (["data=image_folder", "data.path=/no/such/folder"], "data.path"),
    (["data=mnist", "data.download=false"], "data.root"),
    (["data=mnist", "data.download=true"], "data.root"),
    (["trainer.max_epohcs=3"], None),  # Hydra's own error for an unknown key
    (["+trainer.max_epohcs=3"], "trainer.max_epohcs: unknown key"),
    (["optimizer.momentm=0.9"], None),
    (["+optimizer.momentm=0.9"], "optimizer.momentm: unknown key"),
    (["model=resnet9000"], "Could not find 'model/resnet9000'"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_INPUTS)
def test_bad_input_gives_one_line_and_opens_no_run(overrides, message, out) -> None:
    result = (
        run_cli(*overrides, *FAST, f"data.root={out}/data", out=out)
        if "data=mnist" in overrides
        else run_cli(*overrides, *FAST, out=out)
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    ours = [line for line in result.stderr.splitlines() if line.startswith("cnnexp: error:")]
    if message is not None and not message.startswith("Could not"):
        assert len(ours) == 1 and message in ours[0], result.stderr[-2000:]
    elif message is not None:  # Hydra's own message for an unknown option lists the options
        assert message in result.stderr
    assert [r.info.status for r in all_runs(out) if r.info.status == "RUNNING"] == []


def test_failure_inside_training_ends_failed_with_the_error(out) -> None:
    result = run_cli(
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


def test_ctrl_c_marks_the_run_killed(out) -> None:
    cmd = [
        sys.executable,
        "-m",
        "cnnexp",
        f"paths.output_dir={out}",
        "model=stacked3x3",
        "trainer=cpu",
        "trainer.max_epochs=50",
        "trainer.enable_progress_bar=false",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the first epoch's checkpoint (files, not the db)
            if list(out.glob("runs/*/*/checkpoints/*.ckpt")):
                break
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0
    [run] = all_runs(out)
    assert run.info.status == "KILLED", output[-2000:]
    assert store(out).get_metric_history(run.info.run_id, "val_acc"), "epoch 0 was logged"


def test_help_is_fast_path_without_torch() -> None:
    code = (
        "import runpy, sys; sys.argv = ['cnnexp', '--help']\n"
        "try:\n    runpy.run_module('cnnexp', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules and 'lightning' not in sys.modules\n"
        "print('NO_TORCH')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert "NO_TORCH" in result.stdout, result.stderr
    assert "model: " in result.stdout and "stacked3x3" in result.stdout


def test_same_seed_twice_gives_identical_val_loss_history(out) -> None:
    args = ("model=tiny", *FAST, "trainer.max_epochs=3", "seed=7", "data.augment.enabled=true")
    for _ in range(2):
        assert run_cli(*args, out=out).returncode == 0
    client = store(out)
    histories = [
        [m.value for m in client.get_metric_history(r.info.run_id, "val_loss")]
        for r in all_runs(out)
    ]
    assert len(histories) == 2 and len(histories[0]) == 3
    assert histories[0] == histories[1]


def test_tracking_uri_env_wins_over_config(out, tmp_path) -> None:
    uri = f"sqlite:///{tmp_path}/team.db"
    result = run_cli("model=tiny", *FAST, out=out, env={"MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (out / "mlflow.db").exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    [experiment] = [e for e in client.search_experiments() if e.name == "cnnexp"]
    assert len(client.search_runs([experiment.experiment_id])) == 1
