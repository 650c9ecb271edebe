"""Remote tracking: a sweep logs to a real `mlflow server`, read back over its REST API; an
unreachable server stops the run at once with one line."""

from __future__ import annotations

import http.server
import json
import re
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest

from cnnexp.errors import ConfigError
from cnnexp.tracking import mlflow_run
from tests.conftest import FAST, cli_in_process
from tests.mlflow_server import MlflowServer, free_port

EPOCHS = 2
PNG = b"\x89PNG\r\n\x1a\n"
IMAGE = re.compile(r"images/(?P<key>.+)\+step\+(?P<step>\d+)\+timestamp\+.*(?<!compressed)\.png$")


def rest(server: MlflowServer, endpoint: str, body: dict | None = None, **query) -> dict:
    """GET (or POST `body` to) /api/2.0/mlflow/<endpoint> and decode the JSON answer."""
    url = f"{server.url}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def artifact_bytes(server: MlflowServer, run_id: str, path: str) -> bytes:
    """One artifact's bytes as the UI fetches them (/get-artifact, proxied by the server)."""
    query = urllib.parse.urlencode({"run_uuid": run_id, "path": path})
    with urllib.request.urlopen(f"{server.url}/get-artifact?{query}", timeout=30) as response:
        return response.read()


def artifact_paths(server: MlflowServer, run_id: str, path: str = "") -> list[str]:
    return [f["path"] for f in rest(server, "artifacts/list", run_id=run_id, path=path)["files"]]


@pytest.mark.slow
def test_sweep_logs_runs_curves_and_images_to_a_real_server(mlflow_server, out) -> None:
    fast = [o for o in FAST if not o.startswith("trainer.max_epochs")]
    cheap_analysis = ["analysis.erf_samples=2", "analysis.health_images=32", "analysis.n_images=2"]
    args = ("-m", "model=tiny,stacked3x3", "data=digits", f"trainer.max_epochs={EPOCHS}", *fast)
    env = {"MLFLOW_TRACKING_URI": mlflow_server.url}
    result = cli_in_process(*args, *cheap_analysis, out=out, env=env)
    assert result.returncode == 0, result.stderr[-3000:]

    experiment = rest(mlflow_server, "experiments/get-by-name", experiment_name="cnnexp")
    experiment_id = experiment["experiment"]["experiment_id"]
    runs = rest(mlflow_server, "runs/search", {"experiment_ids": [experiment_id]})["runs"]
    assert sorted(r["info"]["run_name"] for r in runs) == [
        "stacked3x3-relu-digits",
        "tiny-relu-digits",
    ]
    assert {r["info"]["status"] for r in runs} == {"FINISHED"}
    sweep_ids = {t["value"] for r in runs for t in r["data"]["tags"] if t["key"] == "sweep_id"}
    assert len(sweep_ids) == 1  # both jobs carry the same sweep id

    for run in runs:
        run_id = run["info"]["run_id"]
        history = rest(mlflow_server, "metrics/get-history", run_id=run_id, metric_key="val_acc")
        assert [m["step"] for m in history["metrics"]] == list(range(EPOCHS))
        assert all(0 <= m["value"] <= 1 for m in history["metrics"])
        images = {
            (m["key"], int(m["step"]))
            for path in artifact_paths(mlflow_server, run_id, "images")
            if (m := IMAGE.match(path))
        }
        assert {("feature_maps~conv1", 0), ("feature_maps~conv1", EPOCHS)} <= images
        feature_map = next(
            p
            for p in artifact_paths(mlflow_server, run_id, "images")
            if p.startswith("images/feature_maps~conv1+step+2+") and IMAGE.match(p)
        )
        assert artifact_bytes(mlflow_server, run_id, feature_map).startswith(PNG)
        assert "learning_curve.png" in artifact_paths(mlflow_server, run_id)
        assert artifact_bytes(mlflow_server, run_id, "learning_curve.png").startswith(PNG)

    assert not (out / "mlflow.db").exists() and not (out / "mlartifacts").exists()
    stored = list((mlflow_server.root / "artifacts").rglob("learning_curve.png"))
    assert len(stored) == 2  # uploaded through the server into its artifact destination


def test_unreachable_server_stops_the_run_before_training_with_one_line(out) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    result = cli_in_process(
        "model=tiny", "data=digits", *FAST, out=out, env={"MLFLOW_TRACKING_URI": url}
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        f"cnnexp: error: MLFLOW_TRACKING_URI: cannot reach MLflow server {url} (connection refused)"
    ]
    assert not list(out.rglob("*.ckpt")) and not (out / "mlflow.db").exists()


@pytest.fixture
def http_status_server() -> Iterator[tuple[str, list[int]]]:
    """A loopback HTTP server answering every GET with the status last put in the list."""
    status = [200]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status[0])
            self.end_headers()

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", status
    server.shutdown()
    server.server_close()


def test_probe_accepts_any_answer_below_500_and_rejects_server_errors(http_status_server) -> None:
    url, status = http_status_server
    for code in (200, 401, 404):
        status[0] = code
        mlflow_run.check_server_reachable(url, "MLFLOW_TRACKING_URI")
    status[0] = 503
    with pytest.raises(ConfigError, match=r"^MLFLOW_TRACKING_URI: cannot reach .* \(HTTP 503 "):
        mlflow_run.check_server_reachable(url, "MLFLOW_TRACKING_URI")
    mlflow_run.check_server_reachable("sqlite:///nowhere/mlflow.db", "logger.tracking_uri")


def test_probe_gives_up_on_a_server_that_accepts_but_never_answers(monkeypatch) -> None:
    monkeypatch.setattr(mlflow_run, "PROBE_SECONDS", 0.5)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel accepts connections; nobody ever reads or replies
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(ConfigError, match=r"\(no answer within 0.5 s\)$"):
            mlflow_run.check_server_reachable(url, "logger.tracking_uri")
    assert time.monotonic() - start < 5
