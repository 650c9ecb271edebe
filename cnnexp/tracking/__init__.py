"""Tracking: open an MLflow run in the right store, record params, end it with a true status."""

from cnnexp.tracking.mlflow_run import (
    ensure_experiment,
    flatten,
    log_config,
    log_params,
    resolve_tracking_uri,
    run_status,
    run_tags,
    where_text,
)

__all__ = [
    "ensure_experiment",
    "flatten",
    "log_config",
    "log_params",
    "resolve_tracking_uri",
    "run_status",
    "run_tags",
    "where_text",
]
