"""The links a run prints open MLflow's UI in Model training mode, on the cnnexp dashboard: a real
run in a temp store, a real `mlflow server` over it (as `make ui` serves it), headless chromium
at 1280×800; every image card of the run shows its picture, at least 256 px wide (the sizes
measured and the screenshots looked at are kept in the test's tmp dir)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from cnnexp.tracking.dashboard import IMAGES_SECTION, LEARNING_CURVES, run_images, ui_address
from tests.browser import browser_page, screenshot
from tests.conftest import FAST, all_runs, cli_in_process, store
from tests.mlflow_server import running_mlflow_server

WAIT_MS = 120_000  # the UI's first load on a busy 2-core machine
GENAI_ONLY = "Judges"  # a side-nav link only the GenAI mode has
CLOSED_ASSISTANT = (  # as after a person closed the assistant panel once: room for the charts
    "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
    "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false')"
)


VIEWPORT = (1280, 800)
CARD = "experiment-view-compare-runs-card"  # data-testid of a chart card
THUMBNAIL_PX = 256  # the card shows MlflowClient.log_image's 256 px thumbnail, never larger
NO_IMAGE = "No image logged"
MAX_WHEELS, RENDER_MS = 20, 3000  # a card not there after a wheel gets another one


def printed_url(stdout: str, label: str, server_url: str) -> str:
    """The link after `label` in the run's summary, pointed at the test's server."""
    [url] = re.findall(rf"^  {label}: .*?(http://\S+)$", stdout, re.MULTILINE)
    return url.replace(ui_address("sqlite:///"), server_url)


def assert_model_training(page) -> None:
    page.get_by_role("link", name="Model registry").wait_for()
    assert page.get_by_role("link", name=GENAI_ONLY).count() == 0


def shot(page, folder: Path, name: str) -> None:
    """A screenshot in the test's tmp dir (and in CNNEXP_SCREENSHOTS, for the README)."""
    page.screenshot(path=str(folder / f"{name}.png"))
    screenshot(page, name)


def image_card(page, key: str):
    """The chart card of image key `key`, scrolled into view, its picture (or its note that
    there is none at the slider's step) loaded. Cards render once near the view: the page is
    wheeled down, from its section's heading, until the card is there."""
    section = key.rpartition("/")[0] or IMAGES_SECTION
    page.get_by_text(section, exact=True).first.scroll_into_view_if_needed()
    card = page.get_by_test_id(CARD).filter(has=page.get_by_text(key, exact=True)).first
    page.mouse.move(VIEWPORT[0] * 0.7, VIEWPORT[1] * 0.6)  # over the charts
    for _ in range(MAX_WHEELS):
        try:
            card.wait_for(state="attached", timeout=RENDER_MS)
            break
        except PlaywrightTimeout:
            page.mouse.wheel(0, VIEWPORT[1] // 3)
    card.scroll_into_view_if_needed()
    card.locator(f"img.rc-image-img, :text('{NO_IMAGE}')").first.wait_for()
    picture = card.locator("img.rc-image-img")
    if picture.count():
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=picture.element_handle()
        )
    return card


def rendered(card) -> dict:
    """The card's and its picture's rendered boxes (px), what part of the picture shows."""
    box, picture = card.bounding_box(), card.locator("img.rc-image-img")
    image = picture.bounding_box() if picture.count() else None
    if image is None:
        return {"card": box, "image": None}
    seen = max(0.0, min(box["y"] + box["height"], image["y"] + image["height"]) - image["y"])
    return {"card": box, "image": image, "visible_height_share": seen / image["height"]}


@pytest.mark.slow
def test_printed_links_open_model_training_on_the_dashboard_with_feature_maps(tmp_path) -> None:
    out = tmp_path / "outputs"
    trained = cli_in_process("model=tiny", "data=digits", *FAST, out=out)  # analysis on: maps
    assert trained.returncode == 0, trained.stderr[-3000:]
    store_uri = f"sqlite:///{out}/mlflow.db"
    [run] = all_runs(out)
    keys = sorted(run_images(store(out), run.info.run_id))
    assert {"feature_maps/conv1", "confusion_matrix", "misclassified", "erf"} <= set(keys)
    sizes: dict[str, dict] = {}
    with (
        running_mlflow_server(tmp_path / "ui", store=store_uri) as server,
        browser_page(*VIEWPORT) as page,
    ):
        page.set_default_timeout(WAIT_MS)
        page.add_init_script(CLOSED_ASSISTANT)
        run_url = printed_url(trained.stdout, "this run", server.url)
        page.goto(run_url.partition("?")[0])  # without workflowType a fresh browser is GenAI
        page.get_by_role("link", name=GENAI_ONLY).wait_for()
        page.goto(run_url)
        page.get_by_role("heading", name="tiny-relu-digits").wait_for()
        assert_model_training(page)
        shot(page, tmp_path, "ui-run")

        page.goto(printed_url(trained.stdout, "compare runs", server.url))
        assert_model_training(page)
        first_charts = page.get_by_role("heading", name=re.compile(r"^(val|train)_"))
        first_charts.nth(len(LEARNING_CURVES) - 1).wait_for()
        assert first_charts.all_inner_texts()[: len(LEARNING_CURVES)] == LEARNING_CURVES
        page.locator(".js-plotly-plot .scatterlayer .trace").nth(
            len(LEARNING_CURVES) - 1
        ).wait_for()
        shot(page, tmp_path, "ui-dashboard")

        for key in keys:  # every image card at the step the slider opens on (the last)
            card = image_card(page, key)
            assert card.get_by_text(NO_IMAGE).count() == 0, key
            sizes[f"dashboard {key}"] = rendered(card)
            assert sizes[f"dashboard {key}"]["visible_height_share"] == 1, key  # all of it shows
        assert page.get_by_text("seed=").count() == 0  # image cards without the params header
        image_card(page, "feature_maps/conv1").scroll_into_view_if_needed()
        shot(page, tmp_path, "ui-dashboard-images")
        feature_map = sizes["dashboard feature_maps/conv1"]["image"]
        assert feature_map["width"] >= THUMBNAIL_PX  # was 184×81 px before issue 20

        page.goto(run_url.replace("?", "/model-metrics?"))  # the run page's own image cards
        card = image_card(page, "feature_maps/conv1")
        sizes["run page feature_maps/conv1"] = rendered(card)
        shot(page, tmp_path, "ui-run-model-metrics")
        assert not page.errors
    (tmp_path / "rendered.json").write_text(json.dumps(sizes, indent=1))
