"""explorer.html: the run's page, read back from a real run and looked at in a real browser."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnexp.analysis.fit import BEST_EPOCH
from cnnexp.report.explorer import ARTIFACT, logged_images
from tests.browser import browser_page, screenshot
from tests.conftest import FAST, all_runs, cli_in_process, store


def test_logged_images_reads_both_mlflow_namings_and_keeps_the_newest_of_a_step(tmp_path):
    names = [
        "feature_maps~conv1+step+0+timestamp+100+1a2b-3c.png",
        "feature_maps~conv1+step+0+timestamp+300+4d5e-6f.png",  # logged again (resume): wins
        "feature_maps~conv1+step+0+timestamp+300+4d5e-6f+compressed.webp",
        "erf%step%2%timestamp%200%0f0f-1e1e.png",  # MLflow before 3.x separated with '%'
        "learning_curve.png",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    found = logged_images(tmp_path)
    assert found == {
        "feature_maps/conv1": {0: tmp_path / names[1]},
        "erf": {2: tmp_path / names[3]},
    }


@pytest.mark.slow
def test_explorer_page_shows_the_runs_story_and_its_slider_moves_every_stepped_image(out):
    args = ("model=tiny", *FAST, "trainer.max_epochs=3", "analysis.every_n_epochs=1")
    result = cli_in_process(*args, "data.train_size=300", out=out)
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = all_runs(out)
    client, run_id = store(out), run.info.run_id
    page_file = Path(client.download_artifacts(run_id, ARTIFACT, str(out)))
    images = logged_images(Path(client.download_artifacts(run_id, "images", str(out))))
    stepped = sorted(key for key, steps in images.items() if len(steps) > 1)
    assert "feature_maps/conv2" in stepped and "top_patches/conv1" in stepped

    with browser_page() as page:
        page.goto(page_file.as_uri())
        page.wait_for_load_state("load")
        shown = page.eval_on_selector_all(
            "img", "els => els.map(e => [e.alt, e.naturalWidth, e.getBoundingClientRect().width])"
        )
        alts = [alt for alt, _, _ in shown]
        for key in [*images, "architecture.png", "learning_curve.png"]:
            assert key in alts, key  # every picture of the run is on the page ...
        assert all(natural > 0 and width > 0 for _, natural, width in shown), shown  # ... drawn
        for heading in ("Fit", "Architecture", "Blocks", "Kernels", "Mistakes"):
            assert page.locator("h2", has_text=heading).is_visible()
        text = page.inner_text("body")
        assert run.data.tags["fit_diagnosis"] in text and "Receptive field per layer" in text
        assert run.data.tags["fit_reason"] in text and BEST_EPOCH in text  # one best epoch
        screenshot(page, "explorer")

        def state() -> dict[str, tuple[str, str]]:  # key -> (caption's epoch, image data)
            return dict(
                page.eval_on_selector_all(
                    "img[data-key]",
                    "els => els.map(e => [e.dataset.key, "
                    "[e.closest('figure').querySelector('.step').textContent, e.src]])",
                )
            )

        at_end = state()
        assert sorted(at_end) == stepped
        assert {caption for caption, _ in at_end.values()} == {"epoch 3"}
        page.locator("#epoch").fill("0")  # the slider's first position: before training
        at_start = state()
        assert page.inner_text("#epoch-label") == "0"
        assert {caption for caption, _ in at_start.values()} == {"epoch 0"}
        assert all(at_start[key][1] != at_end[key][1] for key in stepped)  # other pictures
        page.locator("#epoch").fill("1")  # every key has a picture at every step (issue 20)
        after_one = state()
        assert {caption for caption, _ in after_one.values()} == {"epoch 1"}
        page.locator("#blocks").scroll_into_view_if_needed()
        screenshot(page, "explorer-blocks")
        assert page.errors == []
