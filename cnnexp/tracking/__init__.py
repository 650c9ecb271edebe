"""Tracking: open an MLflow run in the right store, record params, end it with a true status."""

from cnnexp.tracking.dashboard import ui_command, ui_url
from cnnexp.tracking.liveness import Heartbeat, process_tags, reap_dead_runs
from cnnexp.tracking.mlflow_run import (
    TrackingUnavailable,
    ensure_experiment,
    flatten,
    log_config,
    log_params,
    open_run,
    reports_experiment,
    reports_experiment_name,
    resolve_tracking_uri,
    run_status,
    run_tags,
    where_text,
)

__all__ = [
    "Heartbeat",
    "TrackingUnavailable",
    "ensure_experiment",
    "flatten",
    "log_config",
    "log_params",
    "open_run",
    "process_tags",
    "reap_dead_runs",
    "reports_experiment",
    "reports_experiment_name",
    "resolve_tracking_uri",
    "run_status",
    "run_tags",
    "ui_command",
    "ui_url",
    "where_text",
]
