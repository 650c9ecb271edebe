"""report.html as a person sees it: synthetic runs with long block lists, written by the real
report code, opened in a real browser at a laptop's width."""

from __future__ import annotations

import math
from pathlib import Path

from cnnexp.report.pages import Page
from cnnexp.report.plots import MARKER, number_box, number_offsets
from cnnexp.report.select import RunRecord, Selection
from cnnexp.report.table import comparison_table
from cnnexp.report.write import FIGURES, ReportSpec, notes, write_files
from tests.browser import browser_page, screenshot

CONV = "{'conv': 3, 'channels': %d}"
STACKED = [CONV % 32] * 2 + ["{'pool': 'max'}"] + [CONV % 64] * 3
MODELS = {  # run name -> (block list, parameter count, accuracy, seeds): points close together
    "stacked3x3-relu-mnist5k": (STACKED, 98_000, 0.962, 3),
    "stacked3x3-gelu-mnist5k": (STACKED, 98_000, 0.965, 3),
    "deep3x3-bn-relu-mnist5k": (
        [CONV % 32, "{'bn': true}", "{'pool': 'max'}"] * 4,
        105_000,
        0.96,
        3,
    ),
    "wide5x5-relu-mnist5k": (
        ["{'conv': 5, 'channels': 48}", "{'pool': 'avg'}"] * 3,
        120_000,
        0.95,
        2,
    ),
    "tiny-relu-mnist5k": ([CONV % 8, "{'pool': 'max'}", CONV % 16], 9_000, 0.91, 1),
}


def synthetic_run(name: str, index: int, seed: int) -> RunRecord:
    """A finished run of model `name` with seed `seed`: long params, curves, every metric."""
    blocks, n_params, accuracy, _ = MODELS[name]
    top = accuracy + 0.006 * (seed - 1)
    val_acc = [(e, top * (1 - math.exp(-(e + 1) / 2))) for e in range(10)]
    params = {
        "model.name": name.split("-")[0],
        "model.blocks": "[" + ", ".join(blocks) + "]",
        "model.activation": name.split("-")[-2],
        "optimizer.lr": str(0.01 * (index + 1)),
        "seed": str(seed),
        "paths.output_dir": f"/o/{name}/{seed}",
    }
    metrics = {"n_params": float(n_params), "flops_per_image": 3e6 * (index + 1)}
    metrics |= {"receptive_field": 14.0 + index, "erf_size": 9.0, "test_acc": top - 0.004}
    metrics |= {"throughput_train": 4321.0, "throughput_infer": 12345.0}
    return RunRecord(
        f"{name}-{seed}".ljust(32, "x"),
        name,
        params=params,
        metrics=metrics,
        tags={"fit_diagnosis": "good fit"},
        curves={"val_acc": val_acc, "val_loss": [(e, 1 - v) for e, v in val_acc]},
    )


def written_report(folder: Path) -> Path:
    """report.html and its figures for the seeds of each model, as task=report writes them."""
    runs = [
        synthetic_run(name, i, seed)
        for i, (name, (*_, seeds)) in enumerate(MODELS.items())
        for seed in range(seeds)
    ]
    selection = Selection("1", runs, left_out=[], dropped=0)
    spec = ReportSpec("cnnexp", None, ["FINISHED"], 100, folder)
    page = Page(
        "Run comparison: experiment cnnexp",
        notes(spec, selection, "sqlite:///mlflow.db"),
        comparison_table(runs),
        FIGURES,
    )
    write_files(folder, page, selection)
    return folder / "report.html"


def test_report_page_fits_a_laptop_screen_and_shows_both_figures(tmp_path) -> None:
    report_html = written_report(tmp_path)
    with browser_page(width=1280, height=900) as page:
        page.goto(report_html.as_uri())
        page.wait_for_load_state("load")
        page_width, viewport = page.evaluate(
            "[document.scrollingElement.scrollWidth, window.innerWidth]"
        )
        assert page_width <= viewport  # the page never scrolls sideways
        table = page.locator("table").bounding_box()
        box = page.locator("table").evaluate("t => t.parentElement.getBoundingClientRect().right")
        assert table["x"] >= 0 and box <= viewport
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.alt, e.naturalWidth])")
        assert sorted(alt for alt, _ in images) == sorted(FIGURES.values())
        assert all(width > 0 for _, width in images), images
        assert not page.errors
        screenshot(page, "report")


def test_numbers_of_points_at_one_place_cover_neither_each_other_nor_a_bar() -> None:
    points = [(100.0, 100.0), (100.0, 101.0), (100.5, 100.0), (100.0, 112.0)]  # one n_params
    bars = [(x, y - 8, y + 8) for x, y in points]  # ±8 pt error bars
    offsets = number_offsets(points, bars)
    boxes = [number_box(x + dx, y + dy) for (x, y), (dx, dy) in zip(points, offsets, strict=True)]
    bar_boxes = [(x - MARKER, low - MARKER, x + MARKER, high + MARKER) for x, low, high in bars]
    for i, box in enumerate(boxes):
        for other in boxes[i + 1 :] + bar_boxes:
            assert (
                box[2] <= other[0] or other[2] <= box[0] or box[3] <= other[1] or other[3] <= box[1]
            )
