"""A disk that fills up: under the run's output dir, the run ends FAILED and the one line names
the file, the space left and how to resume; under the store, one line naming the store and no
run. The disks are real tmpfs file systems of a few KB, mounted in a private mount namespace
(`unshare -rm`, as an unprivileged user may), so the writes fail as they would on a full disk.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cnnexp.errors import resume_hint
from tests.conftest import FAST, ROOT, all_runs

pytestmark = pytest.mark.slow
TINY = ["model=tiny", "data=digits", "analysis=none", *FAST, "trainer.max_epochs=2"]


def namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    return probe.returncode == 0


needs_unshare = pytest.mark.skipif(
    not namespaces_work(), reason="unshare -rm (user and mount namespaces) refused here"
)


def run_on_small_disk(folder: Path, size: str, *overrides: str, out: Path):
    """`python -m cnnexp` with a tmpfs of `size` mounted at `folder` for it alone."""
    folder.mkdir(parents=True, exist_ok=True)
    cnnexp = [sys.executable, "-m", "cnnexp", f"paths.output_dir={out}", *TINY, *overrides]
    script = f'mount -t tmpfs -o size={size} tmpfs "{folder}" && exec "$@"'
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", *cnnexp],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@needs_unshare
def test_a_full_disk_under_the_run_fails_the_run_with_one_line_to_resume(out) -> None:
    result = run_on_small_disk(out / "runs", "48k", out=out)
    assert result.returncode == 1, result.stderr[-3000:]
    [line] = result.stderr.strip().splitlines()
    [run] = all_runs(out)
    run_id = run.info.run_id
    assert line.startswith(f"cnnexp: error: paths.output_dir: no space left on the device of {out}")
    assert "B free of 48 KB" in line and f"run {run_id} is FAILED" in line
    assert line.endswith(f"once there is room, {resume_hint(run_id)}")
    assert run.info.status == "FAILED" and "No space left" in run.data.tags["error"]


@needs_unshare
def test_a_full_disk_under_the_store_is_one_line_and_no_run(out) -> None:
    store = out / "store"
    uri = f"sqlite:///{store}/mlflow.db"
    result = run_on_small_disk(store, "64k", f"logger.tracking_uri={uri}", out=out)
    assert result.returncode == 2, result.stderr[-3000:]
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"cnnexp: error: logger.tracking_uri: cannot use MLflow store {uri} (")
    # the store is a copy of the empty template (cnnexp/tracking/template.py): the copy is what
    # meets the full disk, else MLflow's own migrations do
    full = ("No space left on device", "database or disk is full")
    assert any(words in line for words in full) and "B free of 64 KB)" in line
    assert not list(store.glob("*.part")) and not (store / "mlflow.db").exists()
    assert not list(out.rglob("*.ckpt"))  # nothing trained
