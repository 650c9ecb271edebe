"""The MLflow UI links cnnexp prints, and the prepared charts view each experiment opens on.

MLflow 3.17's UI keeps a saved charts view as the experiment tag `mlflow.sharedViewState.<key>`:
JSON {"name", "createdAt", "updatedAt", "state": "deflate;" + base64(zlib(JSON of the view))}
(what its Views > "Save as new view" writes) and opens it with `?viewStateShareKey=<key>`.
"""

from __future__ import annotations

import base64
import json
import re
import time
import zlib
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlencode, urlparse

from mlflow.tracking import MlflowClient

from cnnexp.analysis.fit import CURVES
from cnnexp.config import checkout

UI_ADDRESS = "http://127.0.0.1:{port}"  # where `make ui` / `mlflow ui` serve a local store
UI_PORT = 5000  # the Makefile's UI_PORT default
WORKFLOW = "machine_learning"  # ?workflowType=: the UI in "Model training" mode, not GenAI
VIEW_KEY = "cnnexp-dashboard"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
VIEW_NAME = "cnnexp dashboard"  # its name under Views in the UI
LEARNING_CURVES = sorted(CURVES, key=lambda key: (not key.startswith("val_"), key))  # val first
CURVES_SECTION, IMAGES_SECTION = "learning curves", "images"  # image keys without a "/"
IMAGE_PREFIX = "images/"  # where MlflowClient.log_image(key=, step=) puts its files, named
# <key, / as ~>+step+<n>+timestamp+<ms>+<uuid>.png ('%' before MLflow 3.x's change to '+'; the
# frontend reads both, and so does image_file)
IMAGE_FILE = re.compile(
    r"^(?P<key>.+?)[+%]step[+%](?P<step>\d+)[+%]timestamp[+%](?P<ms>\d+)[+%][0-9a-f-]+\.png$"
)
GROUP_BY = {  # the runs table: runs of one name (model-activation-data, seeds) as one group
    "aggregateFunction": "average",
    "groupByKeys": [{"mode": "tag", "groupByData": "mlflow.runName"}],
}


def ui_address(uri: str, port: int = UI_PORT) -> str:
    """A tracking server serves its UI itself; a local store's UI is `make ui` on loopback."""
    return (
        uri.rstrip("/")
        if urlparse(uri).scheme in ("http", "https")
        else UI_ADDRESS.format(port=port)
    )


def ui_url(
    uri: str, experiment_id: str, run_id: str = "", view: bool = False, port: int = UI_PORT
) -> str:
    """The UI page of a run, or of the experiment's runs (on the cnnexp dashboard with `view`),
    in Model training mode."""
    page = f"#/experiments/{experiment_id}/runs" + (f"/{run_id}" if run_id else "")
    charts = {"compareRunsMode": "CHART", "viewStateShareKey": VIEW_KEY}
    query = {"workflowType": WORKFLOW} | (charts if view else {})
    return f"{ui_address(uri, port)}/{page}?{urlencode(query)}"


def ui_command(uri: str) -> str:
    """How to start the UI over `uri`: nothing for a server, `make ui` in a checkout."""
    if urlparse(uri).scheme in ("http", "https"):
        return "served by the tracking server"
    return "make ui" if checkout() else f"mlflow ui --backend-store-uri {uri}"


def _chart(kind: str, key: str, section: str) -> dict:
    """What every chart of the view carries: its id, kind and section."""
    return {
        "uuid": f"cnnexp-{key}",
        "type": kind,
        "runsCountToCompare": 10,
        "metricSectionId": section,
        "deleted": False,
        "isGenerated": False,
    }


def _line_chart(key: str, section: str) -> dict:
    return _chart("LINE", key, section) | {
        "displayName": key,
        "metricKey": key,
        "lineSmoothness": 0,
        "xAxisScaleType": "linear",
        "scaleType": "linear",
        "range": {},
        "xAxisKey": "step",
        "selectedXAxisMetricKey": "",
        "yAxisKey": "metric",
        "yAxisExpressions": [],
        "ignoreOutliers": False,
        "useGlobalXaxisKey": True,
        "useGlobalLineSmoothing": True,
    }


def _image_chart(key: str, section: str) -> dict:
    return _chart("IMAGE", key, section) | {
        "imageKeys": [key],
        "step": 0,
        "showRunParams": False,  # the grid, not a column of every param above it
    }


def _section(name: str) -> dict:
    return {"uuid": f"cnnexp-section-{name}", "name": name, "display": True, "isReordered": True}


def view_state(image_keys: Iterable[str]) -> dict:
    """The charts view: learning curves first, then each image key (a section per prefix); runs
    grouped by name in the table. Other keys get the UI's own charts after these."""
    sections, charts = [_section(CURVES_SECTION)], []
    charts += [_line_chart(key, sections[0]["uuid"]) for key in LEARNING_CURVES]
    for key in sorted(set(image_keys), key=lambda k: ("/" not in k, k)):
        name = key.rpartition("/")[0] or IMAGES_SECTION
        if name not in [s["name"] for s in sections]:
            sections.append(_section(name))
        charts.append(_image_chart(key, _section(name)["uuid"]))
    return {
        "compareRunCharts": charts,
        "compareRunSections": sections,
        "isAccordionReordered": True,  # keep this order (the UI sorts sections by name otherwise)
        "groupBy": GROUP_BY,
        "useGroupedValuesInCharts": False,  # charts per run: the UI draws no image of a group
        "hideEmptyCharts": True,
    }


def view_tag_value(state: dict, now_ms: int) -> str:
    packed = base64.b64encode(zlib.compress(json.dumps(state).encode())).decode()
    return json.dumps(
        {"name": VIEW_NAME, "createdAt": now_ms, "updatedAt": now_ms, "state": f"deflate;{packed}"}
    )


def view_image_keys(tag_value: str) -> set[str]:
    """The image keys of a view written by view_tag_value."""
    packed = json.loads(tag_value)["state"].removeprefix("deflate;")
    state = json.loads(zlib.decompress(base64.b64decode(packed)))
    return {key for chart in state["compareRunCharts"] for key in chart.get("imageKeys", [])}


def publish_dashboard(
    client: MlflowClient, experiment_id: str, image_keys: Iterable[str] = ()
) -> None:
    value = view_tag_value(view_state(image_keys), int(time.time() * 1000))
    client.set_experiment_tag(experiment_id, VIEW_TAG, value)


def image_file(name: str) -> tuple[str, int, int] | None:
    """(key, step, timestamp ms) of a full-size image file MlflowClient.log_image(key=, step=)
    wrote, from its name; None for any other file (its compressed .webp copy included)."""
    match = IMAGE_FILE.match(name)
    if match is None:
        return None
    return match["key"].replace("~", "/"), int(match["step"]), int(match["ms"])


def run_image_keys(client: MlflowClient, run_id: str) -> set[str]:
    files = client.list_artifacts(run_id, IMAGE_PREFIX.rstrip("/"))
    return {found[0] for a in files if (found := image_file(Path(a.path).name))}


def add_run_images(client: MlflowClient, run_id: str) -> None:
    """Give the dashboard of the run's experiment a chart (params header off) for each image
    key the run logged that it lacks."""
    run = client.get_run(run_id)
    if not run.data.tags.get("mlflow.loggedImages"):
        return
    experiment = client.get_experiment(run.info.experiment_id)
    shown = view_image_keys(experiment.tags[VIEW_TAG]) if VIEW_TAG in experiment.tags else set()
    keys = run_image_keys(client, run_id)
    if not keys <= shown:
        publish_dashboard(client, experiment.experiment_id, shown | keys)


def print_dashboards(uri: str, port: int = UI_PORT) -> None:
    """`make ui`: the dashboard link of each experiment in the store that has one."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        print("no MLflow store yet: train a run first (make train)")
        return
    client = MlflowClient(uri)
    for experiment in client.search_experiments(order_by=["experiment_id ASC"]):
        if VIEW_TAG in experiment.tags:
            url = ui_url(uri, experiment.experiment_id, view=True, port=port)
            print(f"  {experiment.name}: {url}")
