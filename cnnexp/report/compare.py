"""task=compare: chosen runs side by side, picture by picture, as one self-contained page.

Runs: `compare.runs=[id,...]` in that order, else the newest `compare.max_runs` training runs of
`compare.experiment` (of `compare.sweep_id`) with a status in `compare.status`, oldest first;
`compare.group_seeds` makes a column per seed group. The page (cnnexp/report/side_by_side.py)
shows what each run logged (cnnexp/analysis/callbacks.py): the feature maps of the same fixed
validation images per block, top patches, health, kernels, ERF, Grad-CAM, and the learning
curves overlaid. It is written to <compare.dir>/<time>_compare-<slug>/compare.html and logged as
the artifact of a run `compare-<slug>` in experiment `<experiment>-reports` (cnnexp.kind=compare).
A mistake (an unknown run id, fewer than 2 runs) is one line before anything is written.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from cnnexp.data import SERVING_KEYS
from cnnexp.errors import ConfigError
from cnnexp.report.explorer import fetch, logged_images
from cnnexp.report.select import SWEEP_TAG, RunRecord, run_record, select_runs
from cnnexp.report.side_by_side import Column, compare_page
from cnnexp.report.table import MISSING, NOISY, SeedGroup, differing_params, group_labels
from cnnexp.report.table import seed_groups as group_by_seed
from cnnexp.report.write import new_folder
from cnnexp.schema import STATUSES, CompareConf, Config
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

ARTIFACT = "compare.html"
HEALTH_PREFIX = "health/"  # cnnexp/analysis/health.py: health/<block>/<measure>
SAME_IMAGES_ANYWAY = ("train_size", "normalize", "in_memory")  # the validation images do not move
LEAST = 2  # columns a comparison needs


def given_run(client: MlflowClient, run_id: str, uri: str) -> RunRecord:
    """The training run `run_id` names; ConfigError where there is none."""
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"compare.runs: no run {run_id!r} in the store {uri}") from None
    if run.info.lifecycle_stage == "deleted":
        raise ConfigError(f"compare.runs: run {run_id!r} is deleted")
    if KIND_TAG in run.data.tags:
        raise ConfigError(
            f"compare.runs: run {run_id!r} is a {run.data.tags[KIND_TAG]} run, not a training run "
            "(it logged no pictures)"
        )
    return run_record(client, run)


def chosen_runs(client: MlflowClient, spec: CompareConf, uri: str) -> tuple[list[RunRecord], str]:
    """(the runs, oldest first or in compare.runs' order; the experiment the page belongs to)."""
    if spec.runs:
        ids = [str(r) for r in spec.runs]
        if len(ids) < LEAST:
            raise ConfigError(
                f"compare.runs: {len(ids)} run given; a comparison needs at least {LEAST} "
                "(allowed: [ID,ID,...], or [] to select by compare.experiment)"
            )
        twice = sorted({r for r in ids if ids.count(r) > 1})
        if twice:
            raise ConfigError(f"compare.runs: run {twice[0]!r} given twice (allowed: each once)")
        runs = [given_run(client, run_id, uri) for run_id in ids]
        first = client.get_run(runs[0].run_id).info.experiment_id
        return runs, client.get_experiment(first).name
    if not spec.status:
        raise ConfigError(f"compare.status: empty (allowed: a list of {', '.join(STATUSES)})")
    sweep = None if spec.sweep_id is None else str(spec.sweep_id)
    found = select_runs(
        client, str(spec.experiment), sweep, list(spec.status), spec.max_runs, "compare"
    )
    if len(found.runs) < LEAST:
        key = "compare.max_runs" if spec.max_runs < LEAST else "compare.experiment"
        raise ConfigError(
            f"{key}: {len(found.runs)} run of experiment {spec.experiment!r} selected "
            f"(status {'/'.join(spec.status)}{f', sweep {sweep}' if sweep else ''}); a comparison "
            f"needs at least {LEAST} (or name them: compare.runs=[ID,ID])"
        )
    return found.runs, str(spec.experiment)


def column_groups(runs: list[RunRecord], by_seed: bool) -> list[SeedGroup]:
    groups = group_by_seed(runs) if by_seed else [SeedGroup([run]) for run in runs]
    if len(groups) < LEAST:
        raise ConfigError(
            f"compare.group_seeds: the {len(runs)} runs form {len(groups)} seed group; a "
            f"comparison needs at least {LEAST} (allowed: false, or runs of other configs)"
        )
    return groups


def input_settings(run: RunRecord) -> dict[str, str]:
    """The params that pick the fixed validation images every picture of a run is made of."""
    return {
        key: value
        for key, value in run.params.items()
        if key == "analysis.n_images"
        or key.startswith("data.")
        and not NOISY.search(key)
        and key.split(".")[1] not in (*SERVING_KEYS, *SAME_IMAGES_ANYWAY)
    }


def input_warnings(runs: list[RunRecord]) -> list[str]:
    """A warning where the runs' data settings differ: then their inputs differ too."""
    settings = [input_settings(run) for run in runs]
    keys = sorted(set().union(*settings))
    differ = [k for k in keys if len({s.get(k, MISSING) for s in settings}) > 1]
    if not differ:
        return []
    shown = "; ".join(f"{k}: {' / '.join(s.get(k, MISSING) for s in settings)}" for k in differ)
    return [
        f"These runs were trained on different data settings ({shown}). Their feature maps, "
        "top patches and Grad-CAM are of the same input images only where the data settings "
        "match: compare pictures row by row with care."
    ]


def health(client: MlflowClient, run: RunRecord) -> dict[str, list[tuple[int, float]]]:
    """{"conv1/grad_norm": [(epoch, value), ...], ...} of the run's health metrics."""
    return {
        key.removeprefix(HEALTH_PREFIX): sorted(
            (m.step, m.value) for m in client.get_metric_history(run.run_id, key)
        )
        for key in sorted(run.metrics)
        if key.startswith(HEALTH_PREFIX)
    }


def columns(client: MlflowClient, groups: list[SeedGroup], folder: Path) -> list[Column]:
    """A column per group, its first run's pictures downloaded under `folder`."""
    labels = group_labels(groups)
    found = []
    for n, group in enumerate(groups, 1):
        run_folder = fetch(client, group.first.run_id, folder / str(n))
        images = logged_images(run_folder / "images")
        found.append(
            Column(n, labels[group.first.run_id], group, images, health(client, group.first))
        )
    return found


def slug_of(spec: CompareConf, groups: list[SeedGroup]) -> str:
    """The sweep id, else the experiment, else (runs named) the first 8 characters of each id."""
    if spec.runs:
        text = "-".join(g.first.run_id[:8] for g in groups)
    else:
        text = str(spec.sweep_id or spec.experiment)
    return "compare-" + (re.sub(r"[^\w.-]+", "-", text).strip("-") or "runs")


def log_compare(
    client: MlflowClient,
    conf: Config,
    experiment: str,
    slug: str,
    folder: Path,
    runs: list[RunRecord],
) -> tuple[str, str]:
    """A FINISHED run of `<experiment>-reports` holding the page; (experiment id, run id)."""
    spec = conf.compare
    tags = {KIND_TAG: "compare", "compared_runs": ",".join(r.run_id for r in runs)[:5000]}
    if spec.sweep_id is not None and not spec.runs:
        tags[SWEEP_TAG] = str(spec.sweep_id)
    experiment_id = reports_experiment(client, conf, experiment)
    run_id = client.create_run(experiment_id, run_name=slug, tags=tags).info.run_id
    with run_status(client, run_id, conf):
        params = {
            "compare.runs": ",".join(map(str, spec.runs)),
            "compare.experiment": experiment,
            "compare.sweep_id": str(spec.sweep_id),
            "compare.status": ",".join(spec.status),
            "compare.max_runs": str(spec.max_runs),
            "compare.group_seeds": str(spec.group_seeds),
            "compare.dir": str(folder),
        }
        log_params(client, run_id, params)
        client.log_artifact(run_id, str(folder / ARTIFACT))
    return experiment_id, run_id


def compare(cfg: DictConfig) -> Path:
    """Write and log the compare page of the chosen runs; return its file."""
    conf = typed_config(cfg)
    spec, uri = conf.compare, resolve_tracking_uri(conf)
    client = open_store(uri, conf.logger.stale_after_s)
    runs, experiment = chosen_runs(client, spec, uri)
    groups = column_groups(runs, spec.group_seeds)
    pictured = [g.first for g in groups]
    what = "seed groups" if spec.group_seeds else "runs"
    title = f"Side by side: {len(groups)} {what} of {experiment}"
    notes = [
        "Every picture of a row is made of the same fixed validation images (the first "
        "analysis.n_images of the validation split), at the epoch the slider chooses. "
        f"Read from {uri}."
    ]
    with tempfile.TemporaryDirectory() as tmp:
        found = columns(client, groups, Path(tmp))
        page = compare_page(
            title, notes, input_warnings(pictured), found, differing_params(pictured)
        )
    slug = slug_of(spec, groups)
    folder = new_folder(Path(spec.dir), slug)
    (folder / ARTIFACT).write_text(page)
    experiment_id, run_id = log_compare(client, conf, experiment, slug, folder, runs)
    print(
        f"{title}\n  wrote {folder / ARTIFACT} ({len(page) / 1e6:.1f} MB)\n"
        f"  MLflow run {run_id} in experiment {reports_experiment_name(experiment)!r} at {uri}\n"
        f"  open: {ui_command(uri)}  ->  {ui_url(uri, experiment_id, run_id)}"
    )
    return folder / ARTIFACT
