"""The run's logger: Lightning's MLFlowLogger, made to tell the truth.

- At most one point per metric per step, ever: a point whose step is not past the last one
  stored for its key (this process's, or the store's for a resumed run) is not written.
- The run's status is cnnexp's business (tracking.run_status), so `finalize` leaves it alone,
  and hyperparameters are logged once by tracking.log_config.
- A tracking server that stops answering fails each call within `logger.outage_timeout_s`
  (`bound_http_retries`), and `is_outage` tells such a failure from any other.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from urllib.parse import urlparse

from lightning.pytorch.loggers import MLFlowLogger
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)


def bound_http_retries(timeout_s: float) -> None:
    """Make every MLflow HTTP call give up within about `timeout_s` seconds (MLflow's default
    retries for minutes): at most half the budget in backoff sleeps (1, 2, 4 … s), the other
    half in request timeouts."""
    retries = max(1, int(math.log2(timeout_s / 2 + 1)))  # sleeps add up to 2^retries - 1 s
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, int(timeout_s / 2 / (retries + 1))))


def is_outage(err: BaseException, uri: str) -> bool:
    """True when `err` says the tracking server at `uri` could not be reached (not that it
    refused a request)."""
    if urlparse(uri).scheme not in ("http", "https"):
        return False
    text = str(err)
    unreachable = ("Max retries exceeded", "Connection refused", "Read timed out", "Connection")
    if isinstance(err, MlflowException):
        return "API request to" in text and any(word in text for word in unreachable)
    return isinstance(err, ConnectionError | TimeoutError) or type(err).__module__.startswith(
        ("requests", "urllib3")
    )


class RunLogger(MLFlowLogger):
    """MLFlowLogger for one existing MLflow run (`run_id`), one point per metric per step."""

    def __init__(self, tracking_uri: str, run_id: str, resumed: bool) -> None:
        super().__init__(tracking_uri=tracking_uri, run_id=run_id, log_model=False)
        self._last_step: dict[str, int] = {}
        self._resumed = resumed

    @property
    def experiment(self) -> MlflowClient:
        """The client of this run's store (Lightning's would also call mlflow.set_tracking_uri,
        which sets MLFLOW_TRACKING_URI for the whole process and every later run in it)."""
        if not self._initialized:
            self._experiment_id = self._mlflow_client.get_run(self._run_id).info.experiment_id
            self._initialized = True
        return self._mlflow_client

    def log_hyperparams(self, params: object) -> None:
        """Nothing: tracking.log_config records the whole composed config once."""

    def finalize(self, status: str = "success") -> None:
        """Nothing: tracking.run_status ends the run with the true status."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        step = 0 if step is None else int(step)
        fresh = {k: v for k, v in metrics.items() if step > self._stored_step(k)}
        if len(fresh) < len(metrics):
            log.info(
                "not logged again at step %d: %s",
                step,
                ", ".join(sorted(set(metrics) - set(fresh))),
            )
        if fresh:
            super().log_metrics(fresh, step)
            self._last_step.update(dict.fromkeys(fresh, step))

    def _stored_step(self, key: str) -> int:
        if key not in self._last_step:
            history = self.experiment.get_metric_history(self.run_id, key) if self._resumed else []
            self._last_step[key] = max((m.step for m in history), default=-1)
        return self._last_step[key]
