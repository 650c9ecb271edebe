"""Multirun bookkeeping: the sweep id that tags every job, and the failed jobs listed at the end.

A job may run in this process (basic launcher), a joblib worker or a submitit job on another node,
so a failed job leaves a record in the sweep dir, which all of them share; the launching process
reads those records when the sweep ends (`python -m cnnexp -m ...` then exits non-zero).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from cnnexp.config import ConfigError

SWEEP_TAG = "sweep_id"  # run tag: the same value on every job of one multirun
FAILED_DIR = "failed_jobs"  # in the sweep dir: one <job number>.json per failed job
_sweep_dir: Path | None = None  # set in the launching process when a multirun starts


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_id() -> str | None:
    """The sweep dir's name (`<time>_<pid>-<random>`), the same for every job of one multirun,
    whichever process runs it; None outside a multirun."""
    return Path(HydraConfig.get().sweep.dir).name if in_multirun() else None


def record_failure(err: Exception) -> None:
    """Leave this job's failure in the sweep dir, where the launching process finds it."""
    hydra = HydraConfig.get()
    record = {
        "job": hydra.job.num,
        "overrides": list(hydra.overrides.task),
        "error": f"{type(err).__name__}: {err}".splitlines()[0][:500],
        "bad_input": isinstance(err, ConfigError),
        "output_dir": hydra.runtime.output_dir,
    }
    folder = Path(hydra.sweep.dir, FAILED_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{hydra.job.num}.json").write_text(json.dumps(record))


class FailedJobs(Callback):
    """Hydra callback (conf/config.yaml `hydra.callbacks`): remembers where the sweep writes."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _sweep_dir
        _sweep_dir = Path(config.hydra.sweep.dir)
        shutil.rmtree(_sweep_dir / FAILED_DIR, ignore_errors=True)  # a rerun into the same dir


def report_failed_jobs() -> int:
    """Print one line per failed job of the multirun that ran in this process; return the exit
    code: 0 none failed, 2 every failure was bad input, 1 otherwise."""
    if _sweep_dir is None:
        return 0
    files = sorted(Path(_sweep_dir, FAILED_DIR).glob("*.json"), key=lambda f: int(f.stem))
    records = [json.loads(f.read_text()) for f in files]
    for r in records:
        print(
            f"cnnexp: error: job {r['job']} failed: {r['error']} "
            f"(overrides: {' '.join(r['overrides'])}; outputs: {r['output_dir']})",
            file=sys.stderr,
        )
    if not records:
        return 0
    return 2 if all(r["bad_input"] for r in records) else 1


def record_killed(run_id: str) -> None:  # TEMPORARY: the liveness branch brings the real one
    return None
