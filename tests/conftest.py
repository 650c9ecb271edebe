"""Shared fixtures: compose the real conf/ with Hydra, run the real CLI, read the real store."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from cnnexp import api, schema
from cnnexp.schema import Config
from cnnexp.tracking.template import seed_store
from cnnexp.typed import typed_config
from tests.memory import pytest_runtest_protocol  # noqa: F401  (CNNEXP_TEST_MEMORY=FILE)
from tests.mlflow_server import mlflow_server  # noqa: F401  (fixture: a real `mlflow server`)

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per worker (and per CLI subprocess it starts): `-n auto` runs one worker per
    # core, and two threads each on a busy 2-core box made a tiny conv 1000x slower.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
FAST = [
    "trainer=cpu",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


def compose_cfg(*overrides: str) -> DictConfig:
    """The root config composed from conf/ exactly as the CLI would."""
    schema.register()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def typed_cfg(*overrides: str) -> Config:
    """The typed, checked config (cnnexp/typed.py) of the real conf/, composed as a CLI job
    composes it (HydraConfig set while it is converted, as before afterwards)."""
    with api.job(list(overrides)) as cfg:
        return typed_config(cfg)


def compose_job_cfg(out: Path, *overrides: str) -> DictConfig:
    """compose_cfg plus what a real job has (cnnexp.api.compose_job): HydraConfig set, its
    output dir under `out`; so train(cfg) runs in-process as the CLI would run it."""
    return api.compose_job(
        [*overrides, f"paths.output_dir={out}", f"hydra.run.dir={out}/runs/in-process"]
    )


def cli_args(args: tuple[str, ...], out: Path) -> list[str]:
    """`args` as the CLI takes them, every output under `out`: flags first (Hydra wants -m
    before the overrides), then paths.output_dir, then the overrides."""
    flags = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    return [*flags, f"paths.output_dir={out}", *overrides]


def run_cli(*args: str, out: Path, env: dict | None = None, timeout: int = 300):
    """`python -m cnnexp ARGS` in a subprocess, every output under `out`."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None) if env is None else None
    cmd = [sys.executable, "-m", "cnnexp", *cli_args(args, out)]
    return subprocess.run(
        cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def cli_in_process(*args: str, out: Path, env: dict | None = None):
    """The real `cnnexp ARGS` (cnnexp.__main__.cli: Hydra's main, the task, its exit code) in
    this process, as run_cli's result (returncode, stdout, stderr as Python wrote them). For
    refusals and other one-line outcomes: a CLI subprocess spends ~8 s importing torch and
    Lightning before it says its line. What only a fresh process shows (what imports print on
    stderr, signals, Hydra's launchers) stays with run_cli."""
    import contextlib
    import io

    from hydra.core.global_hydra import GlobalHydra

    from cnnexp.__main__ import cli

    argv = ["cnnexp", *cli_args(args, out)]
    stdout, stderr = io.StringIO(), io.StringIO()
    before = HydraConfig.instance().cfg  # as it was afterwards: other tests' state untouched
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level  # Hydra's job logging replaces them
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(logging, "raiseExceptions", logging.raiseExceptions)
        patch.setattr(sys, "argv", argv)
        if env is None:
            patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        for key, value in (env or {}).items():
            patch.setenv(key, value)
        patch.chdir(ROOT)
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                cli()
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except Exception:  # what Python does with an uncaught error: its traceback, exit 1
            stderr.write(traceback.format_exc())
            code = 1
        finally:
            GlobalHydra.instance().clear()
            HydraConfig.instance().cfg = before
            for handler in root.handlers:
                if handler not in handlers:
                    handler.close()
            root.handlers[:] = handlers
            root.setLevel(level)
    return subprocess.CompletedProcess(argv, code, stdout.getvalue(), stderr.getvalue())


def error_lines(stderr: str) -> list[str]:
    """The CLI's one-line errors (`cnnexp: error: ...`) in a result's stderr."""
    return [line for line in stderr.splitlines() if line.startswith("cnnexp: error:")]


def store(out: Path) -> MlflowClient:
    """The store under `out`; a new one is a copy of the template (cnnexp/tracking/template.py)."""
    seed_store(out / "mlflow.db")
    return MlflowClient(f"sqlite:///{out}/mlflow.db")


def all_runs(out: Path) -> list:
    """Every run of the store under `out`; none where no store was ever written."""
    if not (out / "mlflow.db").exists():
        return []
    client = store(out)
    experiments = client.search_experiments()
    return client.search_runs([e.experiment_id for e in experiments]) if experiments else []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`@pytest.mark.gpu` tests are skipped where torch sees no CUDA device."""
    if not torch.cuda.is_available():
        for item in items:
            if item.get_closest_marker("gpu"):
                item.add_marker(pytest.mark.skip(reason="no CUDA device"))


_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if sys.platform == "linux" else None
_MALLOC_TRIM = getattr(_LIBC, "malloc_trim", None)  # glibc only (not musl, macOS)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    """After each test, the memory it freed goes back to the system: glibc keeps freed heap
    pages for reuse, so a worker that once built ViT-B/16 held ~0.5 GB more (1.5 GB, not 1.0)
    through every later test, and its CLI subprocesses and DDP ranks came on top of that."""
    yield
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


@pytest.fixture(scope="session", autouse=True)
def compile_cache(tmp_path_factory: pytest.TempPathFactory):
    """torch.compile's cache lives in the session's temporary directory (removed with it when
    every test passed), not in /tmp/torchinductor_<user>, which would outlive every test run;
    and no precompiled C++ header (150 MB, always written to /tmp/torchinductor_<user>). CLI
    subprocesses inherit both settings."""
    from torch._inductor import config as inductor

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path_factory.mktemp("torchinductor")))
        patch.setenv("TORCHINDUCTOR_CPP_CACHE_PRECOMPILE_HEADERS", "0")
        patch.setattr(inductor, "cpp_cache_precompile_headers", False)
        yield


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "outputs"


@pytest.fixture
def compose_job(out: Path):
    """compose_job_cfg for this test's `out`; HydraConfig is unset again afterwards."""
    yield lambda *overrides: compose_job_cfg(out, *overrides)
    HydraConfig.instance().cfg = None


def block_shapes(net, names, x):
    """(each named block's output shape without the batch axis, the net's output) from one
    forward pass of `x`; blocks are found by the last part of their module name (conv3, res1)."""
    modules = {name.rpartition(".")[2]: m for name, m in net.named_modules() if name}
    shapes: dict[str, tuple] = {}
    handles = [
        modules[name].register_forward_hook(
            lambda _m, _i, out, key=name: shapes.__setitem__(key, tuple(out.shape[1:]))
        )
        for name in names
    ]
    try:
        return shapes, net(x)
    finally:
        for handle in handles:
            handle.remove()


def wait_for_marker(marker: Path, proc: subprocess.Popen, timeout_s: float) -> None:
    """Until a run in `proc` wrote `marker` (tests/helpers.py's PauseAt: it waits inside an
    epoch); its output in the error when it ended or `timeout_s` passed first."""
    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            output = "".join(text or "" for text in proc.communicate())
            raise AssertionError(f"never paused:\n{output[-3000:]}")
        time.sleep(0.05)
