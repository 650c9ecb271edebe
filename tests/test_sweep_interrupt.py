"""Ctrl-C in a sweep: one line per job (finished, killed with its resume command, not started),
exit 130; the planned job list is Hydra's basic sweeper's own expansion."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from hydra import compose, initialize_config_dir

from cnnexp import schema
from cnnexp.sweeps import planned_jobs
from tests.conftest import CONF, FAST, ROOT, store
from tests.helpers import default_sigint


def test_planned_jobs_are_the_basic_sweepers_expansion() -> None:
    schema.register()
    overrides = ["+experiment=kernel_3x3_vs_5x5", "trainer.max_epochs=1,2"]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides[:1], return_hydra_config=True)
    cfg.hydra.overrides.task = overrides  # as the command line gave them
    jobs = planned_jobs(cfg)
    assert len(jobs) == 12  # model x seed from the study, x 2 epoch budgets
    assert [
        "model=single5x5",
        "seed=0",
        "+experiment=kernel_3x3_vs_5x5",
        "trainer.max_epochs=1",
    ] in jobs


@pytest.mark.slow
def test_ctrl_c_in_a_sweep_says_what_became_of_every_job(out) -> None:
    marker = out.parent / "paused"
    pause = [
        "+callbacks.pause._target_=tests.helpers.PauseAt",
        f"+callbacks.pause.marker={marker}",
        "+callbacks.pause.job=1",
    ]
    cmd = [sys.executable, "-m", "cnnexp", "-m", f"paths.output_dir={out}", "model=tiny"]
    cmd += ["data=digits", "analysis=none", *FAST, "trainer.max_epochs=2", "seed=0,1,2", *pause]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,  # Ctrl-C semantics however the suite was started
    )
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("cnnexp: job ")]
    assert len(lines) == 3, stderr[-3000:]
    client = store(out)
    runs = {r.data.params["seed"]: r for r in client.search_runs(["1"])}
    assert sorted(runs) == ["0", "1"]  # job 2 never started
    assert runs["0"].info.status == "FINISHED" and runs["1"].info.status == "KILLED"
    assert lines[0].startswith("cnnexp: job 0 finished")
    killed = runs["1"].info.run_id
    assert lines[1].startswith("cnnexp: job 1 killed: continue it with: python -m cnnexp")
    assert f"resume={killed}" in lines[1]
    assert lines[2].startswith("cnnexp: job 2 not started (overrides: ") and "seed=2" in lines[2]
