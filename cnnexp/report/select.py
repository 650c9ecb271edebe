"""Which runs a report compares: one experiment, optionally one sweep, chosen statuses, no reports.

Bad selections (no store, no such experiment, no run for the sweep id or statuses) raise
ConfigError before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from cnnexp.errors import ConfigError
from cnnexp.sweeps import SWEEP_TAG
from cnnexp.tracking.mlflow_run import KIND_TAG

CURVES = ("val_acc", "val_loss")
PAGE = 1000  # runs per search request


@dataclass(frozen=True)
class RunRecord:
    """What the report needs of one run; metrics hold each key's value at its last step."""

    run_id: str
    name: str
    status: str = "FINISHED"
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # (epoch, value)


@dataclass(frozen=True)
class Selection:
    experiment_id: str
    runs: list[RunRecord]  # oldest first
    left_out: list[RunRecord]  # matched, but their status was not asked for
    dropped: int  # beyond max_runs (the oldest ones)


def _all_runs(client: MlflowClient, experiment_id: str) -> list[Run]:
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id],
            max_results=PAGE,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        runs += page
        token = page.token
        if not token:
            return runs


def _name(run: Run) -> str:
    return run.info.run_name or run.info.run_id[:8]


def run_record(client: MlflowClient, run: Run) -> RunRecord:
    """What the report needs of `run`, its curves read from the store."""
    curves = {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        for key in CURVES
    }
    return RunRecord(
        run_id=run.info.run_id,
        name=_name(run),
        status=run.info.status,
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        tags=dict(run.data.tags),
        curves=curves,
    )


def _experiment_id(client: MlflowClient, name: str, section: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is None or found.lifecycle_stage == "deleted":
        names = sorted(e.name for e in client.search_experiments())
        raise ConfigError(
            f"{section}.experiment: no experiment {name!r} in this store "
            f"(allowed: {', '.join(names) or 'none yet'})"
        )
    return found.experiment_id


def select_runs(
    client: MlflowClient,
    experiment: str,
    sweep_id: str | None,
    statuses: list[str],
    max_runs: int,
    section: str = "report",
) -> Selection:
    """The newest `max_runs` runs of `experiment` (of sweep `sweep_id`) with one of `statuses`;
    errors name the keys of config section `section`."""
    experiment_id = _experiment_id(client, experiment, section)
    runs = [r for r in _all_runs(client, experiment_id) if KIND_TAG not in r.data.tags]  # training
    if sweep_id is not None:
        sweeps = sorted({r.data.tags[SWEEP_TAG] for r in runs if SWEEP_TAG in r.data.tags})
        runs = [r for r in runs if r.data.tags.get(SWEEP_TAG) == sweep_id]
        if not runs:
            raise ConfigError(
                f"{section}.sweep_id: no run of experiment {experiment!r} is tagged "
                f"sweep_id={sweep_id!r} (allowed: {', '.join(sweeps) or 'none tagged yet'})"
            )
    if not runs:
        raise ConfigError(f"{section}.experiment: experiment {experiment!r} has no runs to compare")
    chosen = [r for r in runs if r.info.status in statuses]
    if not chosen:
        found = sorted({r.info.status for r in runs})
        raise ConfigError(
            f"{section}.status: none of the {len(runs)} runs has status {'/'.join(statuses)} "
            f"(allowed: {', '.join(found)})"
        )
    kept = chosen[-max_runs:]
    return Selection(
        experiment_id=experiment_id,
        runs=[run_record(client, r) for r in kept],
        left_out=[
            RunRecord(r.info.run_id, _name(r), r.info.status)
            for r in runs
            if r.info.status not in statuses
        ],
        dropped=len(chosen) - len(kept),
    )
