"""task=compare: two real runs (3×3 vs 5×5 kernels) laid side by side, read from a real store,
the page parsed and looked at in a real browser; bad selections are one line, no run."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from hydra.core.hydra_config import HydraConfig
from PIL import Image

from cnnexp.errors import one_line
from cnnexp.report.compare import ARTIFACT, compare, input_warnings
from cnnexp.report.select import RunRecord
from cnnexp.tracking.mlflow_run import KIND_TAG
from tests.browser import browser_page, screenshot
from tests.conftest import FAST, all_runs, cli_in_process, compose_job_cfg, store

SMALL = [  # two short runs on synthetic shapes, 3 fixed validation images, cheap analysis
    "data=shapes",
    "data.n_samples=300",
    "analysis.n_images=3",
    "analysis.patch_images=64",
    "analysis.health_images=32",
    "analysis.erf_samples=2",
    *FAST,
]
MODELS = ("tiny", "single5x5")  # 3×3 and 5×5 kernels; both name their conv blocks conv1, conv2
BLOCKS = ("conv1", "conv2")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """(outputs folder, the two training runs oldest first): one sweep, trained once."""
    out = tmp_path_factory.mktemp("compare") / "outputs"
    result = cli_in_process("-m", f"model={','.join(MODELS)}", *SMALL, out=out)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(all_runs(out), key=lambda r: r.info.start_time)
    assert [r.data.tags["model"] for r in runs] == list(MODELS)
    return out, runs


@pytest.fixture(scope="module")
def compared(trained) -> tuple[Path, str]:
    """(the page task=compare wrote, its stdout), the sweep's runs chosen by sweep id."""
    out, runs = trained
    sweep = runs[0].data.tags["sweep_id"]
    result = cli_in_process("task=compare", f"compare.sweep_id={sweep}", out=out)
    assert result.returncode == 0, result.stderr[-3000:]
    [page] = sorted(out.glob(f"reports/*/{ARTIFACT}"))
    return page, result.stdout


class Images(HTMLParser):
    """Every <img> of a page: its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "img":
            self.found.append(dict(attrs))


def pixels(data_uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_uri.split(",", 1)[1]))))


@pytest.mark.slow
def test_the_page_shows_each_block_of_each_run_on_the_same_inputs_at_the_same_epoch(
    trained, compared
) -> None:
    out, runs = trained
    page, stdout = compared
    text = page.read_text()
    parser = Images()
    parser.feed(text)
    ids = [r.info.run_id for r in runs]
    assert all(img["src"].startswith("data:image/png;base64,") for img in parser.found)
    for block in BLOCKS:
        key = f"feature_maps/{block}"
        shown = [img for img in parser.found if img["alt"] == key]
        assert [img["data-run"] for img in shown] == ids  # one per run, in column order
        grids = [pixels(img["src"]) for img in shown]
        # the same fixed inputs (the page warns when data settings differ: no warning below),
        # seen by two different nets; each grid is laid out for its own card (images.py), so
        # the input tiles sit at different places and are not compared pixel by pixel here
        assert all(grid.size > 0 for grid in grids)
        assert grids[0].shape != grids[1].shape or not np.array_equal(grids[0], grids[1])
        captions = re.findall(rf"epoch (\d+)</span><br><img alt='{key}'", text)
        assert captions == ["1", "1"]  # both after the same (last) epoch
        for kind in ("top_patches", "health"):
            assert sum(img["alt"] == f"{kind}/{block}" for img in parser.found) == (
                2 if kind == "top_patches" else 1  # health: one figure, a line per run
            )
    alts = {img["alt"] for img in parser.found}
    assert {"curves", "kernels/conv1", "erf", "gradcam", "confusion_matrix"} <= alts
    assert "class='warning'" not in text  # same data settings: no warning
    [report] = [r for r in all_runs(out) if r.data.tags.get(KIND_TAG) == "compare"]
    client = store(out)
    assert client.get_experiment(report.info.experiment_id).name == "cnnexp-reports"
    assert report.info.status == "FINISHED" and report.data.tags["compared_runs"] == ",".join(ids)
    logged = Path(client.download_artifacts(report.info.run_id, ARTIFACT, str(out / "dl")))
    assert logged.read_text() == text and report.info.run_id in stdout


@pytest.mark.slow
def test_in_a_browser_feature_maps_are_large_and_follow_one_slider(compared) -> None:
    page_file, _ = compared
    with browser_page(width=1280, height=800) as page:
        page.goto(page_file.as_uri())
        page.wait_for_load_state("load")
        maps = page.eval_on_selector_all(
            "img[alt^='feature_maps/']",
            "els => els.map(e => [e.alt, e.naturalWidth, e.getBoundingClientRect().width])",
        )
        assert len(maps) == 2 * len(BLOCKS)
        assert all(natural > 0 and width >= 256 for _, natural, width in maps), maps
        width, viewport = page.evaluate("[document.scrollingElement.scrollWidth, innerWidth]")
        assert width <= viewport  # two runs fit a laptop's width: no sideways scrolling

        def captions() -> set[str]:
            return set(
                page.eval_on_selector_all(
                    "img[alt^='feature_maps/']",
                    "els => els.map(e => e.closest('figure').querySelector('.step').textContent)",
                )
            )

        assert captions() == {"epoch 1"}
        before = page.eval_on_selector_all(
            "img[alt^='feature_maps/']", "els => els.map(e => e.src)"
        )
        page.locator("#epoch").fill("0")  # before training, for every run at once
        assert captions() == {"epoch 0"} and page.inner_text("#epoch-label") == "0"
        after = page.eval_on_selector_all("img[alt^='feature_maps/']", "els => els.map(e => e.src)")
        assert all(a != b for a, b in zip(before, after, strict=True))
        page.locator("#epoch").fill("1")
        page.evaluate("document.getElementById('blocks').scrollIntoView()")  # below the slider
        screenshot(page, "compare")
        assert page.errors == []


def compare_line(out: Path, *overrides: str) -> str:
    """The one line task=compare gives for these overrides, run in-process as the CLI runs it."""
    try:
        compare(compose_job_cfg(out, "task=compare", *overrides))
    except Exception as err:  # noqa: BLE001  (what the CLI would catch)
        line = one_line(err)
        assert line is not None, f"a traceback, not one line: {type(err).__name__}: {err}"
        return line
    finally:
        HydraConfig.instance().cfg = None
    raise AssertionError(f"{overrides} was accepted")


BAD = [  # (overrides, the start of the line); ID0/ID1: the trained runs' ids
    (["compare.runs=[nosuchrun,ID0]"], "compare.runs: no run 'nosuchrun' in the store"),
    (["compare.runs=[ID0]"], "compare.runs: 1 run given; a comparison needs at least 2"),
    (["compare.runs=[ID0,ID0]"], "compare.runs: run 'ID0' given twice"),
    (["compare.max_runs=0"], "compare.max_runs: 0 is not allowed (allowed: an integer >= 1"),
    (["compare.max_runs=1"], "compare.max_runs: 1 run of experiment 'cnnexp' selected"),
    (["compare.experiment=nope"], "compare.experiment: no experiment 'nope' in this store"),
    (["compare.sweep_id=nope"], "compare.sweep_id: no run of experiment 'cnnexp' is tagged"),
    (["compare.status=[FAILED]"], "compare.status: none of the 2 runs has status FAILED"),
    (["compare.status=[DONE]"], "compare.status: ['DONE'] is not allowed"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("overrides", "message"), BAD)
def test_a_bad_selection_is_one_line_and_opens_no_run(trained, overrides, message) -> None:
    out, runs = trained
    before = {r.info.run_id for r in all_runs(out)}

    def ids(text: str) -> str:
        return text.replace("ID0", runs[0].info.run_id).replace("ID1", runs[1].info.run_id)

    line = compare_line(out, *map(ids, overrides))
    assert line.startswith(ids(message)) and "\n" not in line, line
    assert {r.info.run_id for r in all_runs(out)} == before


@pytest.mark.slow
def test_on_the_command_line_a_bad_selection_exits_2_with_the_line_alone(trained) -> None:
    out, runs = trained
    result = cli_in_process("task=compare", f"compare.runs=[{runs[0].info.run_id}]", out=out)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "cnnexp: error: compare.runs: 1 run given; a comparison needs at least 2 "
        "(allowed: [ID,ID,...], or [] to select by compare.experiment)"
    ]


def record(name: str, **params: str) -> RunRecord:
    base = {"data.name": "shapes", "data.n_samples": "300", "analysis.n_images": "3"}
    return RunRecord(name, name, params=base | params)


def test_different_data_settings_are_a_warning_and_serving_settings_are_not() -> None:
    same = [record("a", **{"data.batch_size": "64"}), record("b", **{"data.batch_size": "8"})]
    assert input_warnings(same) == []  # batch size, workers, paths: the same images
    apart = [record("a"), record("b", **{"data.n_samples": "2000"})]
    [warning] = input_warnings(apart)
    assert "data.n_samples: 300 / 2000" in warning and "same input images only" in warning
