"""cnnexp outside its checkout: the wheel carries conf/, the `cnnexp` command runs from any folder
into that folder's outputs/, and a user's own config folder adds options, Hydra's way."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import ROOT, all_runs, cli_in_process, run_cli, store

RUN = ["model=tiny", "data=digits", "trainer.max_epochs=1", "analysis=none", "trainer=cpu"]
MYNET = (
    "defaults: [_cnn, _self_]\nname: mynet\nblocks:\n  - {conv: 3, channels: 6}\n  - {pool: max}\n"
)
# What would lead the new venv back to the checkout, or its runs to another store.
LEAKS = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR"}


def run(*cmd: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in LEAKS} | {"PYTHONNOUSERSITE": "1"}
    args = [str(c) for c in cmd]
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def check(*cmd: object, cwd: Path | None = None) -> str:
    result = run(*cmd, cwd=cwd)
    assert result.returncode == 0, f"{cmd}: {result.stderr[-3000:]}"
    return result.stdout


def user_config_dir(parent: Path) -> Path:
    """A user's own config folder with one model preset: model/mynet.yaml."""
    (parent / "myconf" / "model").mkdir(parents=True)
    (parent / "myconf" / "model" / "mynet.yaml").write_text(MYNET)
    return parent / "myconf"


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv outside the checkout with the wheel built from it installed. The dependencies
    (torch...) come from this interpreter's site-packages through a .pth line, written after the
    install so pip never meets the checkout's editable cnnexp there; .pth files of that folder
    are not run, so the checkout is not importable in the venv."""
    tmp = tmp_path_factory.mktemp("package")
    src = tmp / "src"  # a copy: building writes build/ and *.egg-info beside setup.py
    skip = shutil.ignore_patterns(".*", "outputs", "build", "*.egg-info", "__pycache__")
    shutil.copytree(ROOT, src, ignore=skip)
    pip = [sys.executable, "-m", "pip"]
    check(*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp, src)
    [wheel] = tmp.glob("cnnexp-*.whl")
    check(sys.executable, "-m", "venv", "--without-pip", tmp / "venv")
    python = tmp / "venv" / "bin" / "python"
    check(*pip, "--python", python, "install", "--no-deps", "--no-index", wheel)
    site = check(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")
    deps = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    Path(site.strip(), "cnnexp_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    return tmp / "venv"


@pytest.mark.slow
def test_installed_command_trains_into_the_working_dir(venv: Path, tmp_path: Path) -> None:
    code = "import cnnexp.paths as c; print(c.__file__); print(c.config_dir())"
    module, conf = map(Path, check(venv / "bin" / "python", "-c", code, cwd=tmp_path).split())
    assert module.is_relative_to(venv) and conf == module.parent / "conf"
    assert "stacked3x3" in check(venv / "bin" / "cnnexp", "--help", cwd=tmp_path)
    result = run(venv / "bin" / "cnnexp", *RUN, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "outputs"
    [record] = all_runs(out)  # the store is <working dir>/outputs/mlflow.db
    assert record.info.status == "FINISHED" and record.info.run_name == "tiny-relu-digits"
    assert Path(record.data.tags["output_dir"]).is_relative_to(out)
    experiment = store(out).get_experiment(record.info.experiment_id)
    assert experiment.artifact_location.startswith(f"file://{out}")


@pytest.mark.slow
def test_installed_command_takes_a_user_config_dir(venv: Path, tmp_path: Path) -> None:
    user_config_dir(tmp_path)
    cmd = [venv / "bin" / "cnnexp", "--config-dir", "myconf", "model=mynet", "data=digits"]
    stdout = check(*cmd, "task=inspect", cwd=tmp_path)
    assert "mynet on digits" in stdout and "6x8x8" in stdout


@pytest.mark.slow
def test_installed_command_reports_each_failed_sweep_job(venv: Path, tmp_path: Path) -> None:
    result = run(venv / "bin" / "cnnexp", "-m", *RUN, "model.activation=swish,nope", cwd=tmp_path)
    assert result.returncode == 2  # every job failed on bad input
    jobs = [line for line in result.stderr.splitlines() if line.startswith("cnnexp: error: job")]
    assert [line.split(" failed: ")[0] for line in jobs] == [
        "cnnexp: error: job 0",
        "cnnexp: error: job 1",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("add", ["--config-dir={}", "hydra.searchpath=[file://{}]"])
def test_a_user_config_dir_adds_a_model(add: str, tmp_path: Path, out: Path) -> None:
    folder = user_config_dir(tmp_path)
    result = cli_in_process(
        add.format(folder), "model=mynet", "data=digits", "task=inspect", out=out
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mynet on digits" in result.stdout and "6x8x8" in result.stdout


def test_a_missing_config_dir_is_one_line(tmp_path: Path, out: Path) -> None:
    result = run_cli(f"--config-dir={tmp_path / 'nowhere'}", out=out)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"cnnexp: error: --config-dir: Additional config directory '{tmp_path / 'nowhere'}' "
        "not found"
    ]
