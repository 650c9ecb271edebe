"""The tracking server dies mid-run: training stops within logger.outage_timeout_s with its
latest state kept and one line naming the server and the resume command; once the server is
back, that resume finishes the same run with every epoch logged exactly once."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import pytest

from tests.conftest import run_cli
from tests.mlflow_server import running_mlflow_server
from tests.test_faults import TINY, start_paused

pytestmark = pytest.mark.slow


def history(url: str, run_id: str, key: str) -> list[int]:
    query = urllib.parse.urlencode({"run_id": run_id, "metric_key": key})
    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/metrics/get-history?{query}") as answer:
        return sorted(m["step"] for m in json.load(answer).get("metrics", []))


def runs(url: str) -> list[dict]:
    body = json.dumps({"experiment_ids": ["0", "1"]}).encode()
    request = urllib.request.Request(
        f"{url}/api/2.0/mlflow/runs/search", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request) as answer:
        return json.load(answer).get("runs", [])


def test_server_outage_stops_training_and_the_resume_finishes_the_same_run(tmp_path) -> None:
    out, root = tmp_path / "outputs", tmp_path / "server"
    bounded = "logger.outage_timeout_s=8"
    with running_mlflow_server(root) as server:
        env = {"MLFLOW_TRACKING_URI": server.url}
        proc, marker = start_paused(out, bounded, env=env)  # inside epoch 1: epoch 0 logged
        [run] = runs(server.url)
        run_id = run["info"]["run_id"]
    marker.with_suffix(".go").write_text("")  # the server is down; training goes on
    try:
        output, _ = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 1, output[-3000:]  # a run that stopped, not bad input
    assert "Traceback" not in output
    last = output.strip().splitlines()[-1]
    assert last.startswith(f"cnnexp: error: MLFLOW_TRACKING_URI: MLflow server {server.url}")
    assert f"resume={run_id}" in last
    assert list(out.glob("runs/*/*/checkpoints/latest.ckpt"))

    with running_mlflow_server(root, port=int(server.url.rsplit(":", 1)[1])) as again:
        env = {"MLFLOW_TRACKING_URI": again.url}
        result = run_cli(
            *TINY, "trainer.max_epochs=4", bounded, f"resume={run_id}", out=out, env=env
        )
        assert result.returncode == 0, result.stderr[-3000:]
        [run] = runs(again.url)
        assert run["info"]["run_id"] == run_id and run["info"]["status"] == "FINISHED"
        for key in ("train_loss", "val_loss", "val_acc"):
            assert history(again.url, run_id, key) == [0, 1, 2, 3], key
