"""What a run prints when its output goes to a file or a pipe: a line per epoch, and a summary
that names the fit diagnosis with its reason, the best epoch, explorer.html and UI links on the
port `make ui` serves the store on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cnnexp.analysis.fit import BEST_EPOCH
from cnnexp.tracking.dashboard import print_dashboards, ui_url
from tests.conftest import FAST, all_runs, run_cli, store

EPOCH_LINE = re.compile(
    r"^epoch (\d+)  train_loss (\S+)  train_acc (\S+)  val_loss (\S+)  val_acc (\S+)  "
    r"(\d+\.\d) s  \[(\d+)/3\]$",
    re.MULTILINE,
)
SMALL = ["analysis.n_images=2", "analysis.max_channels=4", "analysis.patch_images=64"]


def test_make_ui_notes_its_port_and_the_links_use_it(out: Path, capsys) -> None:
    client = store(out)
    uri = f"sqlite:///{out}/mlflow.db"
    experiment = client.create_experiment("cnnexp")
    assert ui_url(uri, experiment).startswith("http://127.0.0.1:5000/")  # before any make ui
    print_dashboards(uri, 5123)  # what `make ui UI_PORT=5123` runs first
    assert ui_url(uri, experiment).startswith("http://127.0.0.1:5123/")
    assert ui_url("http://tracking:8080", experiment).startswith("http://tracking:8080/#/")


@pytest.mark.slow
def test_piped_run_prints_epoch_lines_and_a_summary_that_leads(out: Path) -> None:
    out.mkdir(parents=True)
    (out / "mlflow.db.ui_port").write_text("5123\n")  # as `make ui UI_PORT=5123` leaves it
    args = ["model=tiny", "data=digits", *FAST, "trainer.max_epochs=3", *SMALL]
    result = run_cli(*[a for a in args if "enable_progress_bar" not in a], out=out)  # bar: default
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = all_runs(out)
    client = store(out)
    history = {
        key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        for key in ("train_loss", "train_acc", "val_loss", "val_acc")
    }
    lines = EPOCH_LINE.findall(result.stdout)
    assert [int(line[0]) for line in lines] == [0, 1, 2]  # the MLflow step of each epoch
    for epoch, train_loss, train_acc, val_loss, val_acc, _, done in lines:
        assert int(done) == int(epoch) + 1
        for key, shown in zip(history, (train_loss, train_acc, val_loss, val_acc), strict=True):
            assert float(shown) == pytest.approx(history[key][int(epoch)], abs=1e-4), key
    assert "v_num" not in result.stdout + result.stderr  # no progress bar off a terminal

    tags, metrics = run.data.tags, run.data.metrics
    fit = f"  fit: {tags['fit_diagnosis']} ({tags['fit_reason']}); {BEST_EPOCH} "
    assert fit + f"{metrics['best_epoch']:.0f}\n" in result.stdout
    [explorer] = re.findall(r"^  explorer\.html: (\S+)  \(in the UI: (\S+)\)$", result.stdout, re.M)
    assert Path(explorer[0]).read_text().startswith("<!DOCTYPE html>")
    assert explorer[1].startswith("http://127.0.0.1:5123/#/experiments/")
    assert explorer[1].split("?")[0].endswith(f"/runs/{run.info.run_id}/artifactPath/explorer.html")
    links = re.findall(r"^  (?:compare runs|this run): .*?(http://\S+)$", result.stdout, re.M)
    assert len(links) == 2 and all(link.startswith("http://127.0.0.1:5123/") for link in links)
