"""When things go wrong nothing is lost: divergence ends FAILED with its reason; Ctrl-C and
SIGTERM write a checkpoint, end KILLED, and `resume=` continues the same MLflow run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import FAST, ROOT, all_runs, run_cli, store

TINY = ["model=tiny", "data=digits", "analysis=none", *FAST]
SLOW_BATCHES = "+callbacks.sleep._target_=tests.helpers.SleepPerBatch"


def test_absurd_learning_rate_stops_the_run_failed_with_the_reason(out) -> None:
    result = run_cli(*TINY, "optimizer=sgd", "optimizer.lr=1e12", "trainer.max_epochs=3", out=out)
    assert result.returncode == 2
    [line] = [x for x in result.stderr.splitlines() if x.startswith("cnnexp: error:")]
    assert "optimizer.lr: training diverged, loss nan" in line
    [run] = all_runs(out)
    assert run.info.status == "FAILED"
    assert "training diverged" in run.data.tags["error"]
    assert "val_acc" not in run.data.metrics  # stopped inside the first epoch
    assert not list(out.glob("runs/*/*/checkpoints/interrupted.ckpt"))  # nothing to resume


def interrupt(out: Path, sig: signal.Signals) -> tuple[int, str]:
    """Start a slowed-down 4-epoch run, signal it once the first epoch has a checkpoint."""
    cmd = [sys.executable, "-m", "cnnexp", f"paths.output_dir={out}", *TINY]
    cmd += ["trainer.max_epochs=4", SLOW_BATCHES]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(out.glob("runs/*/*/checkpoints/best-*")):
            time.sleep(0.2)
        time.sleep(0.3)  # inside the second epoch's training batches
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, output


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "exit_code", "resume_by"),
    [(signal.SIGINT, 1, "checkpoint"), (signal.SIGTERM, 128 + signal.SIGTERM, "run id")],
)
def test_interrupted_run_is_killed_with_a_checkpoint_and_resumes_into_the_same_run(
    out, sig, exit_code, resume_by
) -> None:
    code, output = interrupt(out, sig)
    assert code == exit_code, output[-2000:]
    [run] = all_runs(out)
    run_id = run.info.run_id
    assert run.info.status == "KILLED", output[-2000:]
    assert f"resume={run_id}" in output  # the message says how to continue
    [ckpt] = out.glob("runs/*/*/checkpoints/interrupted.ckpt")
    done = [m.step for m in store(out).get_metric_history(run_id, "val_acc")]
    assert 1 <= len(done) < 4

    target = str(ckpt) if resume_by == "checkpoint" else run_id
    result = run_cli(*TINY, "trainer.max_epochs=4", f"resume={target}", out=out)
    assert result.returncode == 0, result.stderr[-2000:]
    [run] = all_runs(out)  # no second run
    assert run.info.run_id == run_id
    assert run.info.status == "FINISHED"
    assert run.data.tags["resumed_from"] == str(ckpt.resolve())
    client = store(out)
    for name in ("train_loss", "val_loss", "val_acc"):
        steps = [m.step for m in client.get_metric_history(run_id, name)]
        assert sorted(steps) == [0, 1, 2, 3], (name, steps)  # continued, nothing twice
    assert "test_acc" in run.data.metrics and "fit_diagnosis" in run.data.tags


def test_resume_with_another_model_is_refused_in_one_line(out) -> None:
    first = run_cli(*TINY, out=out)
    assert first.returncode == 0, first.stderr[-2000:]
    [run] = all_runs(out)
    result = run_cli(
        *TINY,
        "model=single5x5",
        "trainer.max_epochs=2",
        "resume_finished=true",
        f"resume={run.info.run_id}",
        out=out,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"cnnexp: error: resume: run {run.info.run_id} was trained with model.")
    )
    [run] = all_runs(out)
    assert run.info.status == "FINISHED"  # untouched


def test_resume_of_something_unknown_is_one_line(out) -> None:
    result = run_cli(*TINY, "resume=no-such-run", out=out)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "cnnexp: error: resume: 'no-such-run' is neither a checkpoint file nor a run id "
        "in this MLflow store"
    )
    assert all_runs(out) == []
