"""Runs whose process died must not stay RUNNING.

Every run carries the host and pid of the process that writes it (and the pid's start time, so a
reused pid is not mistaken for it), and a heartbeat tag that process refreshes while it runs.
`reap_dead_runs`, called by every cnnexp command that opens a store, marks FAILED each RUNNING run
whose process is gone: on this host by asking the OS, on other hosts (a cluster sharing one
tracking server) when the heartbeat is older than `logger.stale_after_s`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from cnnexp.errors import resume_hint

log = logging.getLogger(__name__)
HOST_TAG, PID_TAG, START_TAG, HEARTBEAT_TAG = (
    "cnnexp.host",
    "cnnexp.pid",
    "cnnexp.pid_start",
    "cnnexp.heartbeat",
)


def process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), or ''."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # fields after the command name, 3 onwards


def process_tags() -> dict[str, str]:
    """Who writes the run: put on a run when it opens (or reopens)."""
    pid = os.getpid()
    return {
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(pid),
        START_TAG: process_start(pid),
        HEARTBEAT_TAG: f"{time.time():.0f}",
    }


class Heartbeat:
    """While in the block, a daemon thread refreshes the run's heartbeat tag every `interval_s`;
    a failing write (server down) is logged once and retried at the next beat."""

    def __init__(self, client: MlflowClient, run_id: str, interval_s: float = 60.0) -> None:
        self.client, self.run_id, self.interval_s = client, run_id, interval_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="cnnexp-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=1)  # a beat stuck on a dead server must not hold us up

    def _beat(self) -> None:
        warned = False
        while not self.stop.wait(self.interval_s):
            try:
                self.client.set_tag(self.run_id, HEARTBEAT_TAG, f"{time.time():.0f}")
            except Exception as err:  # noqa: BLE001  (a heartbeat never stops training)
                if not warned:
                    log.warning("heartbeat of run %s not written: %s", self.run_id, err)
                    warned = True


def why_dead(tags: dict[str, str], stale_after_s: float, now: float) -> str | None:
    """Why the process writing a RUNNING run is gone, or None (alive, or unknown)."""
    try:
        host, pid = tags[HOST_TAG], int(tags[PID_TAG])
        if host != socket.gethostname():
            silent = now - float(tags[HEARTBEAT_TAG])
            return (
                f"no heartbeat from host {host} for {silent:.0f} s"
                if silent > stale_after_s
                else None
            )
    except (KeyError, ValueError):
        return None  # a run cnnexp did not write, or an older one: left alone
    if not _alive(pid) or process_start(pid) != tags.get(START_TAG, ""):
        return (
            f"process {pid} on host {host} died without ending the run "
            "(killed, out of memory or power loss)"
        )
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_dead_runs(client: MlflowClient, stale_after_s: float = 600.0) -> list[str]:
    """Mark FAILED (tag `error`: why, and how to resume) every RUNNING run of the store whose
    process is gone; return their ids."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    reaped, now = [], time.time()
    running = client.search_runs(
        experiments, filter_string="attributes.status = 'RUNNING'", max_results=1000
    )
    for run in running:
        reason = why_dead(run.data.tags, stale_after_s, now)
        if reason is None:
            continue
        run_id = run.info.run_id
        client.set_tag(run_id, "error", f"{reason}; {resume_hint(run_id)}")
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        reaped.append(run_id)
    return reaped
