"""task=report: runs read back from a real store, compared in report.md/.html, logged as a run."""

from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from cnnexp.analysis.fit import BEST_EPOCH
from cnnexp.errors import ConfigError
from cnnexp.report import report
from cnnexp.report.pages import Page, html_page, markdown_page
from cnnexp.report.plots import mean_curve
from cnnexp.report.select import RunRecord
from cnnexp.report.table import (
    Table,
    compact,
    comparison_table,
    differing_params,
    seed_groups,
    seed_verdicts,
)
from tests.conftest import FAST, cli_in_process, compose_job_cfg, error_lines, store

FIGURES = {"val_curves.png", "accuracy_vs_params.png"}


def record(name: str, params: dict, metrics: dict | None = None, **kw) -> RunRecord:
    return RunRecord(f"{name:x<32}", name, params=params, metrics=metrics or {}, **kw)


def rows_by_column(table: Table) -> list[dict[str, str]]:
    return [dict(zip(table.header, row, strict=True)) for row in table.rows]


def test_only_params_that_differ_become_columns() -> None:
    base = {"model.name": "tiny", "seed": "0", "data.batch_size": "64"}
    a = record("a", {**base, "paths.output_dir": "/o/1", "callbacks.ckpt.dirpath": "/o/1/c"})
    b = record("b", {**base, "paths.output_dir": "/o/2", "callbacks.ckpt.dirpath": "/o/2/c"})
    c = record("c", {**base, "model.name": "stacked3x3", "paths.output_dir": "/o/3"})
    assert differing_params([a, b]) == []  # only run-specific paths differ
    assert differing_params([a, b, c]) == ["model.name"]


def test_keys_implied_by_another_model_are_skipped_but_an_added_key_is_not() -> None:
    cnn = {"model.name": "tiny", "model.head": "gap", "model.blocks": "[1]", "optimizer.lr": "1"}
    cnn2 = {**cnn, "model.name": "stacked3x3", "model.blocks": "[2]", "optimizer.momentum": "0.9"}
    orb = {"model.name": "orb_bovw", "model.orb.upscale": "4", "optimizer.lr": "1"}
    runs = [record("cnn", cnn), record("cnn2", cnn2), record("orb", orb)]
    assert differing_params(runs) == ["model.blocks", "model.name", "optimizer.momentum"]


def test_rows_show_facts_best_val_acc_and_a_dash_for_what_a_run_lacks() -> None:
    cnn = record(
        "cnn",
        {"model.name": "tiny"},
        {"n_params": 65834, "flops_per_image": 2987264, "receptive_field": 16, "erf_size": 9}
        | {"throughput_train": 1234.4, "test_acc": 0.98},
        tags={"fit_diagnosis": "overfit"},
        curves={"val_acc": [(0, 0.5), (1, 0.9), (2, 0.9), (3, 0.8)]},
    )
    orb = record(
        "orb", {"model.name": "orb_bovw"}, {"test_acc": 0.5}, curves={"val_acc": [(0, 0.6)]}
    )
    failed = record("bad", {"model.name": "tiny"}, status="FAILED")
    table = comparison_table([orb, failed, cnn])
    first, second, last = rows_by_column(table)
    assert (first["run"], second["run"], last["run"]) == ("cnn", "orb", "bad (FAILED)")
    assert first["params"] == "65,834" and first["FLOPs/image"] == "2.99 M"
    assert (first["RF"], first["ERF"], first["train img/s"]) == ("16", "9", "1,234")
    assert (first["best val_acc"], first[BEST_EPOCH], first["fit"]) == ("0.9000", "1", "overfit")
    assert first["infer img/s"] == second["params"] == second["RF"] == second["fit"] == "–"
    assert (second["best val_acc"], second[BEST_EPOCH]) == ("0.6000", "0")
    assert last["best val_acc"] == last["test_acc"] == "–"


def test_list_params_read_like_overrides_and_pages_escape_cells(tmp_path) -> None:
    assert (
        compact("[{'conv': 3, 'channels': 8}, {'pool': 'max'}]")
        == "[{conv:3,channels:8},{pool:max}]"
    )
    assert compact("relu") == "relu"
    page = Page("t", ["note <b>"], Table(["run", "x"], [["a|b", "<x>"]], [False, True]))
    assert "| a\\|b | <x> |" in markdown_page(page) and "|---|---:|" in markdown_page(page)
    html = html_page(page, tmp_path)
    assert "&lt;x&gt;" in html and "<x>" not in html and "note &lt;b&gt;" in html


def seeded(name: str, seed: int, test_acc: float, val: list[float], fit: str = "good fit"):
    """A run of model `name` (its run name too, as real runs of one config share theirs)."""
    return RunRecord(
        f"{name}{seed}".ljust(32, "x"),
        name,
        params={"model.name": name, "seed": str(seed), "paths.output_dir": f"/o/{name}{seed}"},
        metrics={"test_acc": test_acc, "n_params": 1000.0},
        tags={"fit_diagnosis": fit},
        curves={"val_acc": list(enumerate(val))},
    )


def test_runs_differing_only_in_seed_are_one_row_with_mean_std_and_n() -> None:
    runs = [
        seeded("a", 0, 0.97, [0.5, 0.90]),
        seeded("a", 1, 0.98, [0.6, 0.92], fit="underfit"),
        seeded("a", 2, 0.99, [0.7, 0.94]),
        seeded("b", 0, 0.90, [0.8, 0.85]),
        seeded("b", 1, 0.92, [0.8, 0.86]),
        seeded("c", 7, 0.50, [0.4]),
    ]
    [a, b, c] = rows_by_column(comparison_table(runs))
    assert (a["n"], a["seeds"], b["n"], b["seeds"], c["n"], c["seeds"]) == (
        "3", "0, 1, 2", "2", "0, 1", "1", "7"
    )  # fmt: skip
    assert a["test_acc"] == "0.9800 ± 0.0100"  # mean ± sample std (n − 1)
    assert a["best val_acc"] == "0.9200 ± 0.0200" and a[BEST_EPOCH] == "1"
    assert a["params"] == "1,000"  # equal in every seed: the value alone
    assert a["fit"] == "good fit ×2, underfit ×1" and b["fit"] == "good fit"
    assert c["test_acc"] == "0.5000" and "seed" not in comparison_table(runs).header
    groups = seed_groups(runs)
    epochs, mean, std = mean_curve(groups[0], "val_acc")
    assert epochs == [0, 1] and mean == pytest.approx([0.6, 0.92])
    assert std == pytest.approx([0.1, 0.02])
    [verdict] = seed_verdicts(groups)  # c has one seed: no spread to compare with
    assert verdict.startswith(  # 3 against 2 seeds separate by chance 2 / C(5, 3) = 0.2
        "a, n=3 vs b, n=2: test_acc +7.0 points, exceeds the seed spread (every seed above "
        "every seed; chance 0.2 if"
    )
    close = [seeded("d", 0, 0.95, [0.9]), seeded("d", 1, 0.975, [0.9])]
    [verdict] = seed_verdicts(seed_groups(runs[:3] + close))
    assert "+1.8 points, within the seed spread (a, n=3: 97.0–99.0 %, d, n=2: 95.0–97.5 %)" in (
        verdict
    )


def test_a_failed_run_never_joins_the_finished_seeds_of_its_config() -> None:
    runs = [seeded("a", 0, 0.9, [0.9]), replace(seeded("a", 1, 0.1, [0.1]), status="FAILED")]
    rows = rows_by_column(comparison_table(runs))
    assert [(row["run"], row["n"]) for row in rows] == [("a", "1"), ("a (FAILED)", "1")]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+report.colour=red", "report.colour: unknown key (allowed: dir, experiment,"),
        ("report.status=[done]", "report.status: ['done'] is not allowed (allowed: FINISHED,"),
        ("report.max_runs=0", "report.max_runs: 0 is not allowed"),
        ("task=report", "logger.tracking_uri: no MLflow store at sqlite:///"),
    ],
)
def test_bad_report_config_or_missing_store_writes_nothing(
    override, message, tmp_path, monkeypatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "outputs"
    cfg = compose_job_cfg(out, "task=report", override)  # as a CLI job: HydraConfig set
    with pytest.raises(ConfigError) as err:
        report(cfg)
    assert str(err.value).startswith(message)
    assert not out.exists() or list(out.rglob("*")) == []  # no store created, no report folder


# --- end to end: real runs in a temp store, the real CLI -----------------------------------


def md_rows(markdown: str) -> list[dict[str, str]]:
    """The report.md table as one dict per row (column title -> cell)."""
    lines = [line.strip("| ") for line in markdown.splitlines() if line.startswith("| ")]
    header, *rows = ([cell.strip() for cell in line.split(" | ")] for line in lines)
    return [dict(zip(header, row, strict=True)) for row in rows]


def training_runs(out) -> list:
    client = store(out)
    return client.search_runs([client.get_experiment_by_name("cnnexp").experiment_id])


def report_runs(out) -> dict:
    """The runs of experiment cnnexp-reports, where the reports of experiment cnnexp go."""
    client = store(out)
    experiment = client.get_experiment_by_name("cnnexp-reports")
    found = client.search_runs([experiment.experiment_id]) if experiment else []
    assert all(r.data.tags["cnnexp.kind"] == "report" for r in found)
    return {r.info.run_id: r for r in found}


def run_report(out, *overrides: str):
    """task=report; returns (result, the new report folder, the new report run)."""
    folders, runs = set((out / "reports").glob("*")), report_runs(out)
    result = cli_in_process("task=report", *overrides, out=out)
    assert result.returncode == 0, result.stderr[-3000:]
    [folder] = set((out / "reports").glob("*")) - folders
    [new] = [r for run_id, r in report_runs(out).items() if run_id not in runs]
    return result, folder, new


@pytest.fixture(scope="module")
def runs_out(tmp_path_factory):
    """A store with a two-job sweep (stacked3x3, tiny on digits) and one ORB run (no CNN)."""
    out = tmp_path_factory.mktemp("report") / "outputs"
    sweep = ["-m", "model=stacked3x3,tiny", "data=digits", *FAST, "trainer.max_epochs=2"]
    orb = ["model=orb_bovw", "data.train_size=300", "model.vocab_size=50", *FAST]
    for args in (sweep, orb):
        result = cli_in_process(*args, out=out)
        assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_report_holds_each_runs_values_from_the_store_and_is_a_run_itself(runs_out) -> None:
    result, folder, logged = run_report(runs_out)
    assert {p.name for p in folder.iterdir()} == {"report.md", "report.html", *FIGURES}
    assert str(folder) in result.stdout and logged.info.run_id in result.stdout
    client, runs = store(runs_out), training_runs(runs_out)
    assert all(r.data.tags.get("cnnexp.kind") != "report" for r in runs)  # not among training runs
    reports_id = client.get_experiment_by_name("cnnexp-reports").experiment_id
    assert (
        f"#/experiments/{reports_id}/runs/{logged.info.run_id}?workflowType=machine_learning"
        in (result.stdout)
    )
    rows = {row["id"]: row for row in md_rows((folder / "report.md").read_text())}
    assert sorted(rows) == sorted(r.info.run_id[:8] for r in runs)
    for run in runs:
        row, metrics = rows[run.info.run_id[:8]], run.data.metrics
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert row["best val_acc"] == f"{max(m.value for m in history):.4f}"
        assert row["test_acc"] == f"{metrics['test_acc']:.4f}"
        assert row["model.name"] == run.data.params["model.name"]
        if run.data.params["model.name"] == "orb_bovw":  # no net: no params, RF, ERF
            assert row["params"] == row["RF"] == row["ERF"] == "–"
            continue
        erf = sorted(
            (m.step, m.value) for m in client.get_metric_history(run.info.run_id, "erf_size")
        )
        assert row["params"] == f"{metrics['n_params']:,.0f}"
        assert (row["RF"], row["ERF"]) == (f"{metrics['receptive_field']:.0f}", f"{erf[-1][1]:.0f}")
        assert row["fit"] == run.data.tags["fit_diagnosis"]
    header = set(next(iter(rows.values())))
    assert {"model.name", "data.name", "model.blocks"} <= header  # differ between the runs
    assert (
        not {"data.batch_size", "seed", "paths.output_dir", "callbacks.model_checkpoint.dirpath"}
        & header
    )
    html = (folder / "report.html").read_text()
    assert html.count("src='data:image/png;base64,") == 2 and all(
        r.info.run_name in html for r in runs
    )

    assert logged.info.status == "FINISHED" and logged.info.run_name == "report-cnnexp"
    artifacts = {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert artifacts == {"report.md", "report.html", *FIGURES}
    assert set(logged.data.tags["compared_runs"].split(",")) == {r.info.run_id for r in runs}
    assert "| model.name |" in logged.data.tags["mlflow.note.content"]


@pytest.mark.slow
def test_sweep_id_selects_one_sweep_and_reports_never_compare_reports(runs_out) -> None:
    runs = training_runs(runs_out)
    sweep_ids = {r.data.tags.get("sweep_id") for r in runs}
    [sweep_id] = sweep_ids - {None}  # the two sweep jobs share it; the single ORB run has none
    sweep_runs = {r.info.run_id for r in runs if r.data.tags.get("sweep_id") == sweep_id}
    _, folder, first = run_report(runs_out, f"report.sweep_id={sweep_id}")
    assert set(first.data.tags["compared_runs"].split(",")) == sweep_runs
    assert first.data.tags["sweep_id"] == sweep_id
    assert len(md_rows((folder / "report.md").read_text())) == 2
    _, folder, second = run_report(runs_out)
    compared = set(second.data.tags["compared_runs"].split(","))
    assert compared == {r.info.run_id for r in runs} and first.info.run_id not in compared
    assert len(md_rows((folder / "report.md").read_text())) == 3
    of_reports = cli_in_process("task=report", "report.experiment=cnnexp-reports", out=runs_out)
    assert of_reports.returncode == 2  # its runs are all reports: nothing to compare
    assert (
        "cnnexp: error: report.experiment: experiment 'cnnexp-reports' has no runs to compare"
        in (of_reports.stderr)
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("report.sweep_id=no-such-sweep", "report.sweep_id: no run of experiment 'cnnexp'"),
        ("report.experiment=nope", "report.experiment: no experiment 'nope' in this store"),
        ("report.status=[KILLED]", "report.status: none of the 3 runs has status KILLED"),
    ],
)
def test_bad_selection_exits_2_with_one_line_and_no_report(override, message, runs_out) -> None:
    folders, runs = set((runs_out / "reports").glob("*")), report_runs(runs_out)
    result = cli_in_process("task=report", override, out=runs_out)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    [line] = error_lines(result.stderr)
    assert line.startswith(f"cnnexp: error: {message}"), line
    assert (
        set((runs_out / "reports").glob("*")) == folders
        and report_runs(runs_out).keys() == runs.keys()
    )
    assert all(r.info.status != "RUNNING" for r in training_runs(runs_out))


@pytest.mark.slow
def test_report_reads_from_and_logs_to_a_real_mlflow_server(mlflow_server, out) -> None:
    env = {"MLFLOW_TRACKING_URI": mlflow_server.url}
    trained = cli_in_process("model=tiny", "data=digits", "analysis=none", *FAST, out=out, env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    result = cli_in_process("task=report", out=out, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(mlflow_server.url)
    [run] = client.search_runs([client.get_experiment_by_name("cnnexp").experiment_id])
    reports = client.get_experiment_by_name("cnnexp-reports")
    [logged] = client.search_runs([reports.experiment_id])
    assert logged.data.tags["cnnexp.kind"] == "report"
    assert f"open: served by the tracking server  ->  {mlflow_server.url}/#/experiments/" in (
        result.stdout
    )
    local = client.download_artifacts(logged.info.run_id, "report.md", str(out))
    [row] = md_rows(Path(local).read_text())
    assert row["params"] == f"{run.data.metrics['n_params']:,.0f}" and row["RF"] == "–"
    assert {a.path for a in client.list_artifacts(logged.info.run_id)} >= {"report.html", *FIGURES}
    assert not (out / "mlflow.db").exists()  # the server's store, not the local default


@pytest.mark.slow
def test_a_seed_sweep_is_one_report_row_with_the_stores_mean_and_std(out) -> None:
    sweep = ["-m", "model=tiny", "data=digits", "analysis=none", *FAST, "seed=0,1,2"]
    result = cli_in_process(*sweep, out=out)
    assert result.returncode == 0, result.stderr[-3000:]
    _, folder, _ = run_report(out)
    [row] = md_rows((folder / "report.md").read_text())
    accs = [r.data.metrics["test_acc"] for r in training_runs(out)]
    assert (row["n"], row["seeds"]) == ("3", "0, 1, 2")
    mean, std = statistics.mean(accs), statistics.stdev(accs)
    assert row["test_acc"] == (f"{mean:.4f} ± {std:.4f}" if std else f"{mean:.4f}")
