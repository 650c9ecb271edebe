"""Multirun bookkeeping: the sweep id that tags every job, and what became of every job.

A job may run in this process (basic launcher), a joblib worker or a submitit job on another node,
so each job keeps its state in the sweep dir, which all of them share (`jobs/<n>.json`: started,
finished, failed or killed). The launching process reads them when the sweep ends: one line per
failed job (exit 1, or 2 when every failure was bad input); after Ctrl-C, one line per job of
the sweep: finished, killed (with its resume command), failed or not started (exit 130).
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from cnnexp.errors import exit_code, one_line, resume_hint
from cnnexp.paths import write_whole

SWEEP_TAG = "sweep_id"  # run tag: the same value on every job of one multirun
JOBS_DIR = "jobs"  # in the sweep dir: <job number>.json, the job's state
PLANNED = "planned_jobs.json"  # in the sweep dir: every job's overrides, when the sweeper says
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
_sweep_dir: Path | None = None  # set in the launching process when a multirun starts


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_id() -> str | None:
    """The sweep dir's name (`<time>_<pid>-<random>`), the same for every job of one multirun,
    whichever process runs it; None outside a multirun."""
    return Path(HydraConfig.get().sweep.dir).name if in_multirun() else None


def _record(state: str, detail: str = "", bad_input: bool = False, logs: list = ()) -> None:
    """This job's state, in the sweep dir where the launching process finds it."""
    hydra = HydraConfig.get()
    record = {
        "job": hydra.job.num,
        "overrides": list(hydra.overrides.task),
        "state": state,
        "detail": detail,
        "bad_input": bad_input,
        "output_dir": hydra.runtime.output_dir,
        "logs": list(logs),  # where a bug's traceback went
    }
    write_whole(Path(hydra.sweep.dir, JOBS_DIR, f"{hydra.job.num}.json"), json.dumps(record))


def record_failure(err: Exception) -> None:
    """A job that failed: its one line, or for a bug the error's first line, with its
    traceback written to the job's log file only (the console keeps one line per job)."""
    line = one_line(err)
    detail = line or f"{type(err).__name__}: {err}".splitlines()[0][:500]
    logs = [] if line else log_files(f"job {HydraConfig.get().job.num} failed", err)
    _record("failed", detail, bad_input=line is not None and exit_code(err) == 2, logs=logs)


def log_files(message: str, err: Exception) -> list[str]:
    """Write `message` and err's traceback to the log files of this job (Hydra's FileHandler
    on the root logger), not to the console; return their paths."""
    logger = logging.getLogger("cnnexp")
    exc_info = (type(err), err, err.__traceback__)
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, message, (), exc_info)
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    for handler in files:
        handler.handle(record)
    return [h.baseFilename for h in files]


def record_killed(run_id: str) -> None:
    """A job stopped by Ctrl-C or SIGTERM: how to continue its run (nothing outside -m)."""
    if in_multirun():
        overrides = " ".join(HydraConfig.get().overrides.task)
        _record("killed", resume_hint(run_id, overrides))


def planned_jobs(config: DictConfig) -> list[list[str]] | None:
    """Every job's overrides, expanded as Hydra's basic sweeper does; None for other sweepers."""
    if config.hydra.sweeper._target_ != BASIC_SWEEPER:
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    params = config.hydra.sweeper.get("params")
    params = OmegaConf.to_container(params, resolve=False) if params else {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    overrides = OverridesParser.create().parse_overrides(arguments)
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


class JobStates(Callback):
    """Hydra callback (conf/config.yaml `hydra.callbacks`): each job's state in the sweep dir."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _sweep_dir
        _sweep_dir = Path(config.hydra.sweep.dir)
        shutil.rmtree(_sweep_dir / JOBS_DIR, ignore_errors=True)  # a rerun into the same dir
        write_whole(_sweep_dir / PLANNED, json.dumps(planned_jobs(config)))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if in_multirun():
            _record("started")

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if in_multirun() and _state(HydraConfig.get().job.num) == "started":
            _record("finished")


def _state(job: int) -> str | None:
    path = Path(HydraConfig.get().sweep.dir, JOBS_DIR, f"{job}.json")
    return json.loads(path.read_text())["state"] if path.exists() else None


def report_jobs() -> int:
    """Say what became of the jobs of the multirun that ran in this process; the exit code."""
    if _sweep_dir is None:
        return 0
    files = Path(_sweep_dir, JOBS_DIR).glob("*.json")
    records = {r["job"]: r for r in (json.loads(f.read_text()) for f in files)}
    plan = Path(_sweep_dir, PLANNED)
    planned = (json.loads(plan.read_text()) if plan.exists() else None) or []
    interrupted = len(records) < len(planned) or any(
        r["state"] in ("started", "killed") for r in records.values()
    )
    if interrupted:
        for job in range(max(len(planned), max(records, default=-1) + 1)):
            print(_job_line(job, records.get(job), planned), file=sys.stderr)
        return 128 + signal.SIGINT
    failed = [r for r in records.values() if r["state"] == "failed"]
    for r in sorted(failed, key=lambda r: r["job"]):
        traceback = f"; traceback: {', '.join(r['logs'])}" if r.get("logs") else ""
        print(
            f"cnnexp: error: job {r['job']} failed: {r['detail']} "
            f"(overrides: {' '.join(r['overrides'])}; outputs: {r['output_dir']}{traceback})",
            file=sys.stderr,
        )
    if not failed:
        return 0
    return 2 if all(r["bad_input"] for r in failed) else 1


def _job_line(job: int, record: dict | None, planned: list[list[str]]) -> str:
    if record is None:
        overrides = " ".join(planned[job]) if job < len(planned) else "?"
        return f"cnnexp: job {job} not started (overrides: {overrides})"
    state = "killed" if record["state"] == "started" else record["state"]
    detail = f": {record['detail']}" if record["detail"] else ""
    return f"cnnexp: job {job} {state}{detail} (overrides: {' '.join(record['overrides'])})"
