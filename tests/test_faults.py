"""When things go wrong nothing is lost and no status lies: divergence ends FAILED with its
reason; Ctrl-C and SIGTERM keep the latest state and end KILLED; kill -9 is found by the next
command; `resume=` continues the same run from its latest state with every step logged once, and
loads checkpoints only with weights_only=True.

Every signal is sent on an event (the PauseAt marker file), never after a guessed sleep, to a
real `python -m cnnexp` subprocess; the command that finds or resumes the stopped run is another
process (this one: cli_in_process), as a user's next command is.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cnnexp.errors import ConfigError
from cnnexp.train import train
from tests.conftest import FAST, ROOT, all_runs, cli_in_process, error_lines, store, wait_for_marker
from tests.helpers import default_sigint

TINY = ["model=tiny", "data=digits", "analysis=none", *FAST]
CURVES = ("train_loss", "val_loss", "val_acc")


def pause_at(marker: Path, epoch: int = 1) -> list[str]:
    return [
        "+callbacks.pause._target_=tests.helpers.PauseAt",
        f"+callbacks.pause.marker={marker}",
        f"+callbacks.pause.epoch={epoch}",
    ]


def start_paused(
    out: Path, *extra: str, env: dict | None = None, pause: list[str] | None = None
) -> tuple[subprocess.Popen, Path]:
    """A 4-epoch run in a subprocess, returned once it waits inside epoch 1 (marker written),
    or where the callback `pause` (given the marker) waits."""
    marker = out.parent / "paused"
    pause = pause or pause_at(marker)
    cmd = [sys.executable, "-m", "cnnexp", f"paths.output_dir={out}", *TINY]
    cmd += ["trainer.max_epochs=4", *[p.replace("MARKER", str(marker)) for p in pause], *extra]
    base = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # MLflow sets it
    proc = subprocess.Popen(  # in-process (mlflow.set_tracking_uri): this run has its own store
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**base, "PYTHONUNBUFFERED": "1", **(env or {})}, preexec_fn=default_sigint,
    )  # fmt: skip
    wait_for_marker(marker, proc, 180)
    return proc, marker


def steps(out: Path, run_id: str, key: str) -> list[int]:
    return [m.step for m in store(out).get_metric_history(run_id, key)]


def assert_each_epoch_once(out: Path, run_id: str, epochs: int) -> None:
    for key in CURVES:
        assert sorted(steps(out, run_id, key)) == list(range(epochs)), key


def test_absurd_learning_rate_stops_the_run_failed_with_the_reason(out) -> None:
    args = (*TINY, "optimizer=sgd", "optimizer.lr=1e12", "trainer.max_epochs=3")
    result = cli_in_process(*args, out=out)
    assert result.returncode == 1  # a run that stopped, not bad input
    [line] = error_lines(result.stderr)
    assert "optimizer.lr: training diverged, loss nan" in line
    [run] = all_runs(out)
    assert run.info.status == "FAILED"
    assert "training diverged" in run.data.tags["error"]
    assert "val_acc" not in run.data.metrics  # stopped inside the first epoch
    assert not list(out.glob("runs/*/*/checkpoints/latest.ckpt"))  # nothing to resume


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "exit_code", "resume_by"),
    [(signal.SIGINT, 1, "checkpoint"), (signal.SIGTERM, 128 + signal.SIGTERM, "run id")],
)
def test_interrupted_run_is_killed_with_its_latest_state_and_resumes_into_the_same_run(
    out, sig, exit_code, resume_by
) -> None:
    proc, _ = start_paused(out)
    try:
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()  # a no-op when it ended; no stray process when it did not
    assert proc.returncode == exit_code, output[-2000:]
    [run] = all_runs(out)
    run_id = run.info.run_id
    assert run.info.status == "KILLED", output[-2000:]
    assert f"resume={run_id}" in output  # the message says how to continue
    [ckpt] = out.glob("runs/*/*/checkpoints/latest.ckpt")
    assert steps(out, run_id, "val_acc") == [0]  # epoch 1 was cut off inside

    target = str(ckpt) if resume_by == "checkpoint" else run_id
    result = cli_in_process(*TINY, "trainer.max_epochs=4", f"resume={target}", out=out)
    assert result.returncode == 0, result.stderr[-2000:]
    [run] = all_runs(out)  # no second run
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert run.data.tags["resumed_from"] == str(ckpt.resolve())
    assert_each_epoch_once(out, run_id, 4)
    assert "test_acc" in run.data.metrics and "fit_diagnosis" in run.data.tags


@pytest.mark.slow
def test_sigterm_between_the_last_epoch_and_the_test_is_killed_and_the_resume_tests(out) -> None:
    pause = [
        "+callbacks.pause._target_=tests.helpers.PauseBeforeTest",
        "+callbacks.pause.marker=MARKER",
    ]
    proc, _ = start_paused(out, pause=pause)
    try:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, output[-2000:]
    [run] = all_runs(out)
    run_id = run.info.run_id
    assert run.info.status == "KILLED" and "test_acc" not in run.data.metrics
    [line] = [x for x in output.splitlines() if "interrupted: marked KILLED" in x]
    assert f"resume={run_id}" in line and "Traceback" not in output

    result = cli_in_process(*TINY, "trainer.max_epochs=4", f"resume={run_id}", out=out)
    assert result.returncode == 0, result.stderr[-2000:]
    [run] = all_runs(out)
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert steps(out, run_id, "test_acc") == [4]  # the resume tested the 4 trained epochs
    assert_each_epoch_once(out, run_id, 4)  # and trained none again


@pytest.mark.slow
def test_kill_9_is_found_by_the_next_command_and_the_resume_continues_from_the_latest_state(
    out,
) -> None:
    proc, _ = start_paused(out)
    proc.kill()  # SIGKILL: no handler runs, the run stays RUNNING
    proc.communicate(timeout=60)
    [run] = all_runs(out)
    assert run.info.status == "RUNNING"

    report = cli_in_process("task=report", "report.status=[FAILED]", out=out)  # any command
    assert report.returncode == 0, report.stderr[-2000:]
    run = store(out).get_run(run.info.run_id)
    assert run.info.status == "FAILED"
    error = run.data.tags["error"]
    assert f"process {proc.pid} on host" in error and f"resume={run.info.run_id}" in error

    result = cli_in_process(*TINY, "trainer.max_epochs=4", f"resume={run.info.run_id}", out=out)
    assert result.returncode == 0, result.stderr[-2000:]
    run = store(out).get_run(run.info.run_id)
    assert run.info.status == "FINISHED" and "error" not in run.data.tags
    assert_each_epoch_once(out, run.info.run_id, 4)  # epoch 0 from the first process, once


class RunsCode:
    """A pickle that runs code when loaded without weights_only (what a crafted file does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_is_refused_without_running_its_code(out, tmp_path) -> None:
    marker, crafted = tmp_path / "pwned", tmp_path / "evil.ckpt"
    crafted.write_bytes(pickle.dumps({"mlflow_run_id": "x", "state_dict": RunsCode(marker)}))
    result = cli_in_process(*TINY, f"resume={crafted}", out=out)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"cnnexp: error: resume: {crafted} is not a checkpoint that loads")
    assert not marker.exists() and all_runs(out) == []


def stop_with_sigterm_at_epoch_1(compose_job, out: Path) -> str:
    """An in-process run stopped as SIGTERM would stop it (KILLED, latest state kept)."""
    stop = "+callbacks.stop._target_=tests.helpers.StopAtEpoch"
    with pytest.raises(SystemExit):
        train(compose_job(*TINY, "trainer.max_epochs=3", stop))
    [run] = all_runs(out)
    assert run.info.status == "KILLED"
    return run.info.run_id


def test_resume_refuses_what_would_lie_and_leaves_the_run_as_it_was(out, compose_job) -> None:
    run_id = stop_with_sigterm_at_epoch_1(compose_job, out)
    latest = next(out.glob("runs/*/checkpoints/latest.ckpt"))
    best = next(out.glob("runs/*/checkpoints/best-*.ckpt"))
    refused = [  # (overrides, the start of the one line)
        (["trainer.max_epochs=1"], "trainer.max_epochs: run"),  # nothing left to train
        (["model=single5x5"], f"resume: run {run_id} was trained with model."),
        (["optimizer=sgd"], f"resume: run {run_id} was trained with optimizer._target_"),
        ([f"resume='{best}'"], f"resume: {best} is older than the run's latest state"),
        (["+callbacks.boom._target_=tests.helpers.FailAtSetup"], "planned failure in setup"),
    ]
    for overrides, message in refused:
        cfg = compose_job(*TINY, "trainer.max_epochs=3", f"resume={run_id}", *overrides)
        with pytest.raises((ConfigError, RuntimeError), match=message.replace("[", r"\[")):
            train(cfg)
        run = store(out).get_run(run_id)
        assert run.info.status == "KILLED" and "error" not in run.data.tags, overrides
    assert steps(out, run_id, "val_acc") == [0]
    assert latest.exists()


def test_a_finished_run_resumes_only_when_asked_and_then_logs_new_steps(out, compose_job) -> None:
    train(compose_job(*TINY, "trainer.max_epochs=2"))
    [run] = all_runs(out)
    with pytest.raises(ConfigError, match="is FINISHED .allowed: resume_finished=true"):
        train(compose_job(*TINY, "trainer.max_epochs=3", f"resume={run.info.run_id}"))
    assert store(out).get_run(run.info.run_id).info.status == "FINISHED"
    more = ("trainer.max_epochs=3", "resume_finished=true", f"resume={run.info.run_id}")
    train(compose_job(*TINY, *more, "model.channels_last=true"))  # how it runs may change
    assert_each_epoch_once(out, run.info.run_id, 3)
    assert steps(out, run.info.run_id, "test_acc") == [2, 3]  # tested after 2, then 3 epochs


def test_resume_with_another_model_is_refused_in_one_line(out) -> None:
    first = cli_in_process(*TINY, out=out)
    assert first.returncode == 0, first.stderr[-2000:]
    [run] = all_runs(out)
    result = cli_in_process(
        *TINY,
        "model=single5x5",
        "trainer.max_epochs=2",
        "resume_finished=true",
        f"resume={run.info.run_id}",
        out=out,
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"cnnexp: error: resume: run {run.info.run_id} was trained with model.")
    [run] = all_runs(out)
    assert run.info.status == "FINISHED"  # untouched


def test_resume_of_something_unknown_is_one_line(out) -> None:
    result = cli_in_process(*TINY, "resume=no-such-run", out=out)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [  # on a new store: no MLflow INFO lines
        "cnnexp: error: resume: 'no-such-run' is neither a checkpoint file nor a run id "
        "in this MLflow store"
    ]
    assert all_runs(out) == []
