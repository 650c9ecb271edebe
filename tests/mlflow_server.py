"""A real `mlflow server` on 127.0.0.1 for tests: sqlite backend, proxied artifacts, free port.

`running_mlflow_server(root)` starts it, waits until /health answers and always stops the whole
process group (the server forks uvicorn workers); the `mlflow_server` fixture wraps it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from cnnexp.tracking.template import seed_store

START_SECONDS = 90  # first start migrates the fresh sqlite schema: slow on a busy 2-core box


@dataclass(frozen=True)
class MlflowServer:
    url: str  # http://127.0.0.1:<port>, what MLFLOW_TRACKING_URI gets
    root: Path  # server.db, artifacts/ and server.log live here


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL it if it lingers."""
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def running_mlflow_server(
    root: Path, port: int | None = None, store: str | None = None
) -> Iterator[MlflowServer]:
    """`mlflow server` over sqlite:///<root>/server.db (or the store `store`, e.g. the one local
    runs wrote, as `make ui` serves it), artifacts served from <root>/artifacts, on `port` (a
    free one by default; the same root and port restart the same server)."""
    root.mkdir(parents=True, exist_ok=True)
    if store is None:
        seed_store(root / "server.db")  # a copy of the empty store, not 10-13 s of migrations
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        f"--backend-store-uri={store or f'sqlite:///{root}/server.db'}",
        "--serve-artifacts",
        f"--artifacts-destination={root}/artifacts",
        "--host=127.0.0.1",
        f"--port={port}",
        "--workers=1",
    ]
    log = (root / "server.log").open("a")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no GenAI job runner
    proc = subprocess.Popen(
        cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + START_SECONDS
        while not _healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (root / "server.log").read_text()[-2000:]
                raise RuntimeError(f"mlflow server did not come up on {url}:\n{tail}")
            time.sleep(0.5)
        yield MlflowServer(url, root)
    finally:
        _stop(proc)
        log.close()


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    """A fresh real MLflow tracking server for one test."""
    with running_mlflow_server(tmp_path / "mlflow-server") as server:
        yield server
