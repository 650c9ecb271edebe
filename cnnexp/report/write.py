"""task=report: select runs, write the report files, log them as a run of experiment X-reports.

Files: <report.dir>/<time>_<experiment or sweep id>/ report.md, report.html (self-contained),
val_curves.png, accuracy_vs_params.png. MLflow: a run named report-<...> in experiment
`<compared experiment>-reports` (never among the training runs), tagged cnnexp.kind=report (and
sweep_id), the files as artifacts, the table as the run's description.
"""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from cnnexp.errors import ConfigError
from cnnexp.report.pages import Page, html_page, markdown_page, markdown_table
from cnnexp.report.plots import accuracy_vs_params_figure, curves_figure, placed_groups
from cnnexp.report.select import SWEEP_TAG, Selection, select_runs
from cnnexp.report.table import comparison_table, group_labels, seed_groups, seed_verdicts
from cnnexp.schema import STATUSES, Config
from cnnexp.tracking import (
    log_params,
    reports_experiment,
    reports_experiment_name,
    resolve_tracking_uri,
    run_status,
    ui_command,
    ui_url,
)
from cnnexp.tracking.mlflow_run import KIND_TAG, open_store
from cnnexp.typed import typed_config

FIGURES = {"val_curves.png": "Validation curves", "accuracy_vs_params.png": "Accuracy vs params"}
NOTE_LIMIT = 5000  # characters of the run description (an MLflow tag)


@dataclass(frozen=True)
class ReportSpec:
    experiment: str
    sweep_id: str | None
    statuses: list[str]
    max_runs: int
    dir: Path

    @property
    def slug(self) -> str:
        """The experiment or sweep id, safe as a folder and run name."""
        return re.sub(r"[^\w.-]+", "-", self.sweep_id or self.experiment).strip("-") or "report"


def report_spec(conf: Config) -> ReportSpec:
    """`conf.report` (checked by the schema: cnnexp/schema.py ReportConf) as a ReportSpec."""
    spec = conf.report
    if not spec.status:
        raise ConfigError(f"report.status: empty (allowed: a list of {', '.join(STATUSES)})")
    sweep_id = None if spec.sweep_id is None else str(spec.sweep_id)
    return ReportSpec(
        str(spec.experiment), sweep_id, list(spec.status), spec.max_runs, Path(spec.dir)
    )


def new_folder(root: Path, slug: str) -> Path:
    """<root>/<time>_<slug>, with -2, -3, ... where a report of the same second exists."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    for n in itertools.count(1):
        folder = root / (f"{stamp}_{slug}" if n == 1 else f"{stamp}_{slug}-{n}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue


def notes(spec: ReportSpec, selection: Selection, uri: str) -> list[str]:
    """The lines above the table: what was compared, from where, and what was left out."""
    sweep = f", sweep {spec.sweep_id}" if spec.sweep_id else ""
    lines = [
        f"{len(selection.runs)} runs ({', '.join(spec.statuses)}) of experiment "
        f"{spec.experiment!r}{sweep}, read from {uri} on {time.strftime('%Y-%m-%d %H:%M:%S')}."
    ]
    if selection.left_out:
        names = ", ".join(f"{r.name} ({r.status})" for r in selection.left_out[:20])
        more = "" if len(selection.left_out) <= 20 else ", ..."
        lines.append(
            f"Left out, status not in report.status ({len(selection.left_out)}): {names}{more}."
        )
    if selection.dropped:
        lines.append(f"Left out, older than the newest report.max_runs ({selection.dropped}).")
    groups = seed_groups(selection.runs)
    placed = {g.first.run_id for g in placed_groups(groups)}
    unplaced = [g.first.name for g in groups if g.first.run_id not in placed]
    if unplaced:
        lines.append(f"Not in the accuracy plot (no n_params or val_acc): {', '.join(unplaced)}.")
    verdicts = seed_verdicts(groups)
    if verdicts:
        lines.append("Seeds, neighbours in the ranking by mean test_acc: " + " ".join(verdicts))
    return lines


def write_files(folder: Path, page: Page, selection: Selection) -> None:
    groups = seed_groups(selection.runs)
    labels = group_labels(groups)
    figures = [curves_figure(groups, labels), accuracy_vs_params_figure(groups, labels)]
    for name, figure in zip(FIGURES, figures, strict=True):
        figure.savefig(folder / name, dpi=110)
    (folder / "report.md").write_text(markdown_page(page))
    (folder / "report.html").write_text(html_page(page, folder))


def description(page: Page) -> str:
    """The page without figures, cut at a line to fit an MLflow tag."""
    text, kept = markdown_page(replace(page, figures={})), []
    for line in text.splitlines():
        if sum(len(k) + 1 for k in kept) + len(line) > NOTE_LIMIT - 60:
            kept.append("\n... (the whole table: artifact report.html)")
            break
        kept.append(line)
    return "\n".join(kept)


def log_report(
    client: MlflowClient,
    spec: ReportSpec,
    selection: Selection,
    folder: Path,
    page: Page,
    conf: Config,
) -> tuple[str, str]:
    """A FINISHED run of the compared experiment's reports experiment holding the report;
    returns (experiment id, run id)."""
    tags = {
        KIND_TAG: "report",
        "mlflow.note.content": description(page),
        "compared_runs": ",".join(r.run_id for r in selection.runs)[:5000],
    }
    if spec.sweep_id:
        tags[SWEEP_TAG] = spec.sweep_id
    experiment_id = reports_experiment(client, conf, spec.experiment)
    run = client.create_run(experiment_id, run_name=f"report-{spec.slug}", tags=tags)
    run_id = run.info.run_id
    with run_status(client, run_id, conf):
        params = {
            "report.experiment": spec.experiment,
            "report.sweep_id": str(spec.sweep_id),
            "report.status": ",".join(spec.statuses),
            "report.max_runs": str(spec.max_runs),
            "report.dir": str(folder),
        }
        log_params(client, run_id, params)
        client.log_artifacts(run_id, str(folder))
    return experiment_id, run_id


def report(cfg: DictConfig) -> Path:
    """Compare the selected runs; return the report's folder."""
    conf = typed_config(cfg)
    spec = report_spec(conf)
    uri = resolve_tracking_uri(conf)
    client = open_store(uri, conf.logger.stale_after_s)
    selection = select_runs(client, spec.experiment, spec.sweep_id, spec.statuses, spec.max_runs)
    sweep = f" sweep {spec.sweep_id} of" if spec.sweep_id else ""
    title = f"Run comparison:{sweep} experiment {spec.experiment}"
    page = Page(title, notes(spec, selection, uri), comparison_table(selection.runs), FIGURES)
    folder = new_folder(spec.dir, spec.slug)
    write_files(folder, page, selection)
    experiment_id, run_id = log_report(client, spec, selection, folder, page, conf)
    where = reports_experiment_name(spec.experiment)
    print(
        f"\n{markdown_table(page.table)}\n\n{title}: {len(selection.runs)} runs compared\n"
        f"  wrote {folder}/ report.md, report.html, {', '.join(FIGURES)}\n"
        f"  MLflow run {run_id} in experiment {where!r} at {uri}\n"
        f"  open: {ui_command(uri)}  ->  {ui_url(uri, experiment_id, run_id)}"
    )
    return folder
