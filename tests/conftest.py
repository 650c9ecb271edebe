"""Shared fixtures: compose the real conf/ with Hydra, run the real CLI, read the real store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from cnnexp import api, schema
from tests.mlflow_server import mlflow_server  # noqa: F401  (fixture: a real `mlflow server`)

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


def compose_job_cfg(out: Path, *overrides: str) -> DictConfig:
    """compose_cfg plus what a real job has (cnnexp.api.compose_job): HydraConfig set, its
    output dir under `out`; so train(cfg) runs in-process as the CLI would run it."""
    return api.compose_job(
        [*overrides, f"paths.output_dir={out}", f"hydra.run.dir={out}/runs/in-process"]
    )


def run_cli(*args: str, out: Path, env: dict | None = None, timeout: int = 300):
    """`python -m cnnexp ARGS` in a subprocess, every output under `out`."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None) if env is None else None
    flags = [a for a in args if a.startswith("-")]  # Hydra wants -m before the overrides
    overrides = [a for a in args if not a.startswith("-")]
    cmd = [sys.executable, "-m", "cnnexp", *flags, f"paths.output_dir={out}", *overrides]
    return subprocess.run(
        cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def store(out: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{out}/mlflow.db")


def all_runs(out: Path) -> list:
    client = store(out)
    experiments = client.search_experiments()
    return client.search_runs([e.experiment_id for e in experiments]) if experiments else []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`@pytest.mark.gpu` tests are skipped where torch sees no CUDA device."""
    if not torch.cuda.is_available():
        for item in items:
            if item.get_closest_marker("gpu"):
                item.add_marker(pytest.mark.skip(reason="no CUDA device"))


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
