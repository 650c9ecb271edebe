"""The Python API (cnnexp.run / compose / inspect) on the real conf/ and a real sqlite store, and
the example notebook executed in a real kernel."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from hydra.core.hydra_config import HydraConfig
from nbclient import NotebookClient

import cnnexp
from cnnexp import api
from cnnexp.paths import job_output_dir
from tests.conftest import FAST, ROOT, all_runs, compose_cfg, run_cli, store

TINY = ["model=tiny", "data=digits", "analysis=none", *FAST]
NOTEBOOK = ROOT / "examples" / "seed_study.ipynb"


@pytest.fixture(autouse=True)
def own_store(monkeypatch):
    """Runs land in the test's `out` (not a store MLFLOW_TRACKING_URI names); no job left set."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    HydraConfig.instance().cfg = None  # compose() leaves it set, as a CLI job does


def test_importing_cnnexp_loads_no_torch_and_the_api_on_first_use() -> None:
    code = "import cnnexp, sys; print('torch' in sys.modules)"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert shown.stdout.split() == ["False"], shown.stderr[-2000:]
    assert (cnnexp.run, cnnexp.compose, cnnexp.inspect) == (api.run, api.compose, api.inspect)
    assert issubclass(cnnexp.CnnexpError, ValueError) and cnnexp.Result is api.Result


def test_compose_applies_the_overrides_and_gives_each_job_its_own_folder(out: Path) -> None:
    overrides = [*TINY, "model.activation=tanh", f"paths.output_dir={out}"]
    first = cnnexp.compose(overrides)
    first_dir = job_output_dir(first)
    second_dir = job_output_dir(cnnexp.compose(overrides))  # the same second, most likely
    assert (first.model.name, first.model.activation, first.data.name) == ("tiny", "tanh", "digits")
    assert first.trainer.max_epochs == 1 and first.analysis.enabled is False
    assert first_dir != second_dir and first_dir.parent.parent == second_dir.parent.parent
    assert first_dir.parent.parent == out / "runs"  # runs/<date>/<time>_<uid>, as the CLI's
    HydraConfig.instance().cfg = None  # outside a job: a fresh folder per call
    assert job_output_dir(compose_cfg(*overrides)) != job_output_dir(compose_cfg(*overrides))


@pytest.mark.parametrize(
    ("mistake", "line"),
    [
        (
            "trainer.max_epohcs=3",
            "trainer.max_epohcs: unknown key (did you mean trainer.max_epochs?",
        ),
        ("optimizer.lr=-1", "optimizer.lr: -1 is not allowed"),  # found by validate, not Hydra
        ("task=inspect", "task: cnnexp.run trains (task=train); for task=inspect use cnnexp.insp"),
    ],
)
def test_a_mistake_is_a_cnnexp_error_before_any_run(mistake: str, line: str, out: Path) -> None:
    with pytest.raises(cnnexp.CnnexpError) as caught:
        cnnexp.run([*TINY, mistake, f"paths.output_dir={out}"])
    assert str(caught.value).startswith(line) and isinstance(caught.value, ValueError)
    assert all_runs(out) == []


def test_a_mistake_reads_as_the_cli_prints_it(out: Path) -> None:
    typo = "trainer.max_epohcs=3"
    printed = run_cli(*TINY, typo, out=out).stderr.strip()
    with pytest.raises(cnnexp.CnnexpError) as caught:
        cnnexp.compose([*TINY, typo, f"paths.output_dir={out}"])
    assert printed == f"cnnexp: error: {caught.value}"
    assert caught.value.__cause__ is not None  # Hydra's own error, for whoever wants it


def test_a_bug_is_raised_as_it_is(out: Path) -> None:
    boom = "+callbacks.boom._target_=tests.helpers.FailAtSetup"
    with pytest.raises(RuntimeError, match="planned failure in setup") as caught:
        cnnexp.run([*TINY, boom, f"paths.output_dir={out}"])
    assert not isinstance(caught.value, cnnexp.CnnexpError)
    assert [r.info.status for r in all_runs(out)] == ["FAILED"]


def test_run_returns_what_the_store_recorded(out: Path) -> None:
    overrides = [*TINY, "trainer.max_epochs=2", f"paths.output_dir={out}"]
    first, second = cnnexp.run(overrides), cnnexp.run([*overrides, "seed=1"])
    recorded = store(out).get_run(first.run_id)
    assert first.status == recorded.info.status == "FINISHED"
    assert first.tracking_uri == f"sqlite:///{out}/mlflow.db"
    assert first.metrics == recorded.data.metrics and "test_acc" in first.metrics
    assert [step for step, _ in first.curves["val_acc"]] == [0, 1]  # one point per epoch
    assert first.curves["val_acc"][-1][1] == first.metrics["val_acc"]
    assert first.output_dir.is_dir() and second.output_dir.is_dir()
    assert first.output_dir != second.output_dir
    assert first.config.seed == 0 and second.config.seed == 1
    assert first.config.callbacks.model_checkpoint.dirpath == f"{first.output_dir}/checkpoints"
    assert first.run_id in first.url and not HydraConfig.initialized()  # no job left behind


def test_inspect_returns_the_table_without_printing(out: Path, capsys) -> None:
    table = cnnexp.inspect(["model=tiny", "data=digits", f"paths.output_dir={out}"])
    assert capsys.readouterr().out == ""
    convs = [row for row in table.rows if row.op == "Conv2d"]
    assert [(row.output_shape, row.rf) for row in convs] == [((8, 8, 8), 3), ((8, 4, 4), 8)]
    assert table.params == sum(row.params for row in table.rows)  # each weight in one row
    assert str(table).startswith("tiny on digits: input 1x8x8\nlayer")
    assert table.picture.is_file() and out in table.picture.parents
    assert all_runs(out) == []


@pytest.mark.slow
def test_the_example_notebook_runs_its_seed_study(out: Path, monkeypatch) -> None:
    monkeypatch.setenv("CNNEXP_EXAMPLE_OUT", str(out))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells)  # stored without outputs
    where = {"metadata": {"path": str(ROOT)}}  # the kernel starts in the checkout
    NotebookClient(notebook, kernel_name="python3", timeout=600, resources=where).execute()
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs)
    assert "relu: test_acc " in text and "tanh: test_acc " in text and " ± " in text
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the val_acc plot
    runs = all_runs(out)
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
