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

from cnnexp.metrics import CURVES
from cnnexp.paths import checkout

UI_ADDRESS = "http://127.0.0.1:{port}"  # where `make ui` / `mlflow ui` serve a local store
UI_PORT = 5000  # the Makefile's UI_PORT default
PORT_FILE_SUFFIX = ".ui_port"  # <store>.ui_port: the port `make ui` last served the store on
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
IMAGE_COLUMNS, IMAGE_CARD_PX = 2, 440  # image sections: 2 cards a row, this high: a card shows
# the whole 256 px thumbnail of its image (cnnexp/analysis/images.py) and its step slider
GROUP_BY = {  # the runs table: runs of one name (model-activation-data, seeds) as one group
    "aggregateFunction": "average",
    "groupByKeys": [{"mode": "tag", "groupByData": "mlflow.runName"}],
}


def port_file(uri: str) -> Path | None:
    """Where `make ui` notes the port it serves a local sqlite store on (None for others)."""
    db = Path(uri.removeprefix("sqlite:///"))
    if not uri.startswith("sqlite:///") or not db.name:
        return None
    return db.with_name(db.name + PORT_FILE_SUFFIX)


def ui_port(uri: str) -> int:
    """The port of the local UI over `uri`: the one `make ui UI_PORT=...` last served it on,
    else the Makefile's default."""
    noted = port_file(uri)
    if noted is not None and noted.is_file() and noted.read_text().strip().isdigit():
        return int(noted.read_text())
    return UI_PORT


def ui_address(uri: str) -> str:
    """A tracking server serves its UI itself; a local store's UI is `make ui` on loopback."""
    if urlparse(uri).scheme in ("http", "https"):
        return uri.rstrip("/")
    return UI_ADDRESS.format(port=ui_port(uri))


def ui_url(
    uri: str, experiment_id: str, run_id: str = "", view: bool = False, path: str = ""
) -> str:
    """The UI page of a run (its artifact `path` selected where given), or of the experiment's
    runs (on the cnnexp dashboard with `view`), in Model training mode."""
    page = f"#/experiments/{experiment_id}/runs" + (f"/{run_id}" if run_id else "")
    page += f"/artifactPath/{path}" if path else ""
    charts = {"compareRunsMode": "CHART", "viewStateShareKey": VIEW_KEY}
    query = {"workflowType": WORKFLOW} | (charts if view else {})
    return f"{ui_address(uri)}/{page}?{urlencode(query)}"


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


def _image_chart(key: str, section: str, step: int) -> dict:
    return _chart("IMAGE", key, section) | {
        "imageKeys": [key],
        "step": step,
        "showRunParams": False,  # the grid, not a column of every param above it
    }


def _section(name: str, images: bool = False) -> dict:
    layout = {"columns": IMAGE_COLUMNS, "cardHeight": IMAGE_CARD_PX} if images else {}
    return {
        "uuid": f"cnnexp-section-{name}",
        "name": name,
        "display": True,
        "isReordered": True,
    } | layout


def view_state(image_keys: Iterable[str], step: int = 0) -> dict:
    """The charts view: learning curves first, then each image key (a section per prefix, two
    large cards a row) with its slider at `step` (the newest run's last); runs grouped by name
    in the table. Other keys get the UI's own charts after these."""
    sections, charts = [_section(CURVES_SECTION)], []
    charts += [_line_chart(key, sections[0]["uuid"]) for key in LEARNING_CURVES]
    for key in sorted(set(image_keys), key=lambda k: ("/" not in k, k)):
        name = key.rpartition("/")[0] or IMAGES_SECTION
        if name not in [s["name"] for s in sections]:
            sections.append(_section(name, images=True))
        charts.append(_image_chart(key, _section(name)["uuid"], step))
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


def view_images(tag_value: str) -> tuple[set[str], int]:
    """(image keys, slider step) of a view written by view_tag_value."""
    packed = json.loads(tag_value)["state"].removeprefix("deflate;")
    state = json.loads(zlib.decompress(base64.b64decode(packed)))
    images = [chart for chart in state["compareRunCharts"] if chart.get("imageKeys")]
    return {key for chart in images for key in chart["imageKeys"]}, max(
        (chart.get("step", 0) for chart in images), default=0
    )


def publish_dashboard(
    client: MlflowClient, experiment_id: str, image_keys: Iterable[str] = (), step: int = 0
) -> None:
    value = view_tag_value(view_state(image_keys, step), int(time.time() * 1000))
    client.set_experiment_tag(experiment_id, VIEW_TAG, value)


def image_file(name: str) -> tuple[str, int, int] | None:
    """(key, step, timestamp ms) of a full-size image file MlflowClient.log_image(key=, step=)
    wrote, from its name; None for any other file (its compressed .webp copy included)."""
    match = IMAGE_FILE.match(name)
    if match is None:
        return None
    return match["key"].replace("~", "/"), int(match["step"]), int(match["ms"])


def run_images(client: MlflowClient, run_id: str) -> dict[str, set[int]]:
    """{image key: the steps the run logged it at}."""
    found: dict[str, set[int]] = {}
    for a in client.list_artifacts(run_id, IMAGE_PREFIX.rstrip("/")):
        if logged := image_file(Path(a.path).name):
            found.setdefault(logged[0], set()).add(logged[1])
    return found


def add_run_images(client: MlflowClient, run_id: str) -> None:
    """Give the dashboard of the run's experiment a chart (params header off) for each image
    key the run logged that it lacks, and set its sliders to the run's last step (after
    training, not before it)."""
    run = client.get_run(run_id)
    if not run.data.tags.get("mlflow.loggedImages"):
        return
    experiment = client.get_experiment(run.info.experiment_id)
    shown, step = (
        view_images(experiment.tags[VIEW_TAG]) if VIEW_TAG in experiment.tags else (set(), 0)
    )
    images = run_images(client, run_id)
    last = max((max(steps) for steps in images.values()), default=0)
    if not set(images) <= shown or last != step:
        publish_dashboard(client, experiment.experiment_id, shown | set(images), last)


def print_dashboards(uri: str, port: int = UI_PORT) -> None:
    """`make ui`: note the port it serves a local store on (the links runs print use it), then
    print the dashboard link of each experiment in the store that has one."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        print("no MLflow store yet: train a run first (make train)")
        return
    noted = port_file(uri)
    if noted is not None:
        noted.write_text(f"{port}\n")
    client = MlflowClient(uri)
    for experiment in client.search_experiments(order_by=["experiment_id ASC"]):
        if VIEW_TAG in experiment.tags:
            print(f"  {experiment.name}: {ui_url(uri, experiment.experiment_id, view=True)}")
