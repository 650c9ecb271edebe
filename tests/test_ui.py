"""The links a run prints open MLflow's UI in Model training mode, on the cnnexp dashboard: a real
run in a temp store, a real `mlflow server` over it (as `make ui` serves it), headless chromium."""

from __future__ import annotations

import re

import pytest

from cnnexp.tracking.dashboard import LEARNING_CURVES, ui_address
from tests.browser import browser_page, screenshot
from tests.conftest import FAST, run_cli
from tests.mlflow_server import running_mlflow_server

WAIT_MS = 120_000  # the UI's first load on a busy 2-core machine
GENAI_ONLY = "Judges"  # a side-nav link only the GenAI mode has
CLOSED_ASSISTANT = (  # as after a person closed the assistant panel once: room for the charts
    "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
    "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false')"
)


def printed_url(stdout: str, label: str, server_url: str) -> str:
    """The link after `label` in the run's summary, pointed at the test's server."""
    [url] = re.findall(rf"^  {label}: .*?(http://\S+)$", stdout, re.MULTILINE)
    return url.replace(ui_address("sqlite:///"), server_url)


def assert_model_training(page) -> None:
    page.get_by_role("link", name="Model registry").wait_for()
    assert page.get_by_role("link", name=GENAI_ONLY).count() == 0


def assert_visible_in_viewport(page, image) -> None:
    image.scroll_into_view_if_needed()
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
    )
    box, view = image.bounding_box(), page.viewport_size
    assert box["width"] > 0 and box["height"] > 0
    assert box["y"] >= 0 and box["y"] + box["height"] <= view["height"]
    assert box["x"] >= 0 and box["x"] + box["width"] <= view["width"]


@pytest.mark.slow
def test_printed_links_open_model_training_on_the_dashboard_with_feature_maps(tmp_path) -> None:
    out = tmp_path / "outputs"
    trained = run_cli("model=tiny", "data=digits", *FAST, out=out)  # analysis on: feature maps
    assert trained.returncode == 0, trained.stderr[-3000:]
    store = f"sqlite:///{out}/mlflow.db"
    with (
        running_mlflow_server(tmp_path / "ui", store=store) as server,
        browser_page(1600, 1000) as page,
    ):
        page.set_default_timeout(WAIT_MS)
        page.add_init_script(CLOSED_ASSISTANT)
        run_url = printed_url(trained.stdout, "this run", server.url)
        page.goto(run_url.partition("?")[0])  # without workflowType a fresh browser is GenAI
        page.get_by_role("link", name=GENAI_ONLY).wait_for()
        page.goto(run_url)
        page.get_by_role("heading", name="tiny-relu-digits").wait_for()
        assert_model_training(page)
        screenshot(page, "ui-run")

        page.goto(printed_url(trained.stdout, "compare runs", server.url))
        assert_model_training(page)
        first_charts = page.get_by_role("heading", name=re.compile(r"^(val|train)_"))
        first_charts.nth(len(LEARNING_CURVES) - 1).wait_for()
        assert first_charts.all_inner_texts()[: len(LEARNING_CURVES)] == LEARNING_CURVES
        page.locator(".js-plotly-plot .scatterlayer .trace").nth(
            len(LEARNING_CURVES) - 1
        ).wait_for()
        screenshot(page, "ui-dashboard")

        page.get_by_text("feature_maps", exact=True).scroll_into_view_if_needed()
        maps = page.locator("img[src*='path=images%2Ffeature_maps~']")  # conv1, conv2
        maps.nth(1).wait_for()
        for image in maps.all():
            assert_visible_in_viewport(page, image)
        assert page.get_by_text("seed=").count() == 0  # image cards without the params header
        screenshot(page, "ui-dashboard-images")
        assert not page.errors
