"""One MLflow run per training: store, experiment, params, and a status that tells the truth."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from filelock import FileLock
from mlflow.entities import Experiment, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from sqlalchemy.exc import SQLAlchemyError

from cnnexp import schema, sweeps
from cnnexp.errors import ConfigError, DiskFull, RunStopped, free_space, no_space, says
from cnnexp.schema import Config
from cnnexp.tracking.dashboard import (
    VIEW_TAG,
    publish_dashboard,
    ui_command,
    ui_url,
)
from cnnexp.tracking.liveness import Heartbeat, process_tags, reap_dead_runs
from cnnexp.tracking.logger import bound_http_retries, is_outage
from cnnexp.tracking.template import seed_store

log = logging.getLogger(__name__)
for _noisy in ("alembic", "mlflow.store.db.utils"):  # "Creating initial MLflow database tables"
    logging.getLogger(_noisy).setLevel(logging.WARNING)
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}  # UI: "Model training"
KIND_TAG = "cnnexp.kind"  # on runs that did not train: "report", "eval"
REPORTS_SUFFIX = "-reports"  # the report runs of experiment X live in experiment X-reports
PARAM_BATCH = 100  # MLflow's limit of params per log_batch call
PARAM_VALUE_MAX = 6000  # MLflow's limit of characters per param value
PROBE_SECONDS = 5  # an http(s) tracking server must answer /health within this


@dataclass(frozen=True)
class Trained:
    """What one training run produced: its MLflow run (None for a dry run), where its files are."""

    run_id: str | None
    tracking_uri: str
    output_dir: Path
    best_val_acc: float
    test_acc: float


def resolve_tracking_uri(conf: Config) -> str:
    """MLFLOW_TRACKING_URI if set, else logger.tracking_uri (an sqlite file under outputs/)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or str(conf.logger.tracking_uri)


def tracking_uri_key() -> str:
    """The setting the tracking URI came from, to name it in errors."""
    return "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "logger.tracking_uri"


def _is_local(uri: str) -> bool:
    return urlparse(uri).scheme in ("sqlite", "file", "")


def _why_unreachable(err: BaseException) -> str:
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, TimeoutError):
        return f"no answer within {PROBE_SECONDS:g} s"
    if isinstance(err, OSError) and err.strerror:  # unknown host, no route, reset ...
        return err.strerror
    return str(err) or type(err).__name__


def check_server_reachable(uri: str, key: str) -> None:
    """Fail fast when an http(s) tracking server does not answer one GET of <uri>/health
    (MLflow's own client retries for minutes). Any HTTP answer below 500 counts as alive."""
    if urlparse(uri).scheme not in ("http", "https"):
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_SECONDS).close()
        return
    except urllib.error.HTTPError as err:
        if err.code < 500:
            return  # e.g. 401 behind a proxy: the client's own error is the precise one
        reason = f"HTTP {err.code} {err.reason}"
    except urllib.error.URLError as err:
        if isinstance(err.reason, ssl.SSLError):
            return  # a TLS server answered; MLflow's client applies its own TLS settings
        reason = _why_unreachable(err.reason)
    except OSError as err:  # timeout or reset while reading the answer
        reason = _why_unreachable(err)
    raise ConfigError(f"{key}: cannot reach MLflow server {uri} ({reason})")


def _experiment(client: MlflowClient, name: str, artifact_root: str | None, key: str) -> Experiment:
    found = client.get_experiment_by_name(name)
    if found is None:
        location = None if artifact_root is None else Path(artifact_root, name).as_uri()
        try:
            created = client.create_experiment(
                name, artifact_location=location, tags=EXPERIMENT_TAGS
            )
            return client.get_experiment(created)
        except MlflowException:  # a parallel job created it first
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if found.lifecycle_stage == "deleted":
        raise ConfigError(
            f"{key}: experiment {name!r} is deleted in this store "
            "(restore it with `mlflow experiments restore` or choose another name)"
        )
    return found


def _artifact_root(conf: Config, uri: str) -> str | None:
    """Where new experiments of a local store keep artifacts; a server decides itself."""
    return str(conf.logger.artifact_root) if _is_local(uri) else None


def ensure_experiment(conf: Config) -> tuple[str, str]:
    """Find or create `logger.experiment_name` (artifacts pinned under outputs/ for a local
    store; the cnnexp dashboard view where it has none) and mark the store's runs whose process
    died FAILED; return (tracking_uri, experiment_id). Opens no run."""
    uri, key = resolve_tracking_uri(conf), tracking_uri_key()
    bound_http_retries(conf.logger.outage_timeout_s)
    check_server_reachable(uri, key)
    lock = nullcontext()
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(f"{db}.lock")  # parallel jobs, new store: one creates the tables at a time
    with store_errors(uri):
        with lock:
            if uri.startswith("sqlite:///"):
                seed_store(db)
            client = MlflowClient(tracking_uri=uri)
            experiment = _experiment(
                client,
                conf.logger.experiment_name,
                _artifact_root(conf, uri),
                "logger.experiment_name",
            )
            if VIEW_TAG not in experiment.tags:
                publish_dashboard(client, experiment.experiment_id)
        for run_id in reap_dead_runs(client, conf.logger.stale_after_s):
            log.warning(
                "run %s: its process died; marked FAILED (tag error says how to resume)", run_id
            )
    return uri, experiment.experiment_id


@contextmanager
def store_errors(uri: str) -> Iterator[None]:
    """What the store raises while the block opens it or writes to it (not an MLflow store, a
    file that is no database, a full disk) as one ConfigError line naming the setting."""
    try:
        yield
    except (MlflowException, SQLAlchemyError, sqlite3.Error, OSError) as err:
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        if uri.startswith("sqlite:///") and no_space(err) is not None:
            reason = f"{reason}; {free_space(Path(uri.removeprefix('sqlite:///')))}"
        raise ConfigError(
            f"{tracking_uri_key()}: cannot use MLflow store {uri} ({reason})"
        ) from None


def reports_experiment_name(experiment: str) -> str:
    return f"{experiment}{REPORTS_SUFFIX}"


def reports_experiment(client: MlflowClient, conf: Config, experiment: str) -> str:
    """The id of experiment `<experiment>-reports` (made where missing): task=report's runs."""
    name, root = (
        reports_experiment_name(experiment),
        _artifact_root(conf, resolve_tracking_uri(conf)),
    )
    return _experiment(client, name, root, "report.experiment").experiment_id


def flatten(composed: Mapping, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"model.activation": "relu", ...}; lists stay one readable value."""
    flat: dict[str, str] = {}
    for key, value in composed.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    items = [Param(k, v[:PARAM_VALUE_MAX]) for k, v in params.items()]
    for start in range(0, len(items), PARAM_BATCH):
        client.log_batch(run_id, params=items[start : start + PARAM_BATCH])


def run_tags(conf: Config, out: Path) -> dict[str, str]:
    """Tags every run carries, so the UI can filter and group runs (`sweep_id`: jobs of one -m)."""
    sweep = sweeps.sweep_id()
    return {
        "model": conf.model.name,
        "data": conf.data.name,
        "activation": str(conf.model.activation),
        "output_dir": str(out),
    } | ({sweeps.SWEEP_TAG: sweep} if sweep else {})


def where_text(
    experiment: str, uri: str, experiment_id: str, run_id: str, out: Path, explorer: str = ""
) -> str:
    """The summary lines telling where a finished run is and how to open it (its artifact
    `explorer` too, where given)."""
    lines = [f"  MLflow run {run_id} in experiment {experiment!r} at {uri}", f"  outputs in {out}"]
    if explorer:
        lines.append(f"  {explorer}: {artifact_place(uri, experiment_id, run_id, explorer)}")
    lines += [
        f"  compare runs: {ui_command(uri)}  ->  {ui_url(uri, experiment_id, view=True)}",
        f"  this run: {ui_url(uri, experiment_id, run_id)}",
    ]
    return "\n".join(lines)


def artifact_place(uri: str, experiment_id: str, run_id: str, path: str) -> str:
    """Where a person opens the run's artifact `path`: its file (a local store) and its page in
    the UI."""
    in_ui = ui_url(uri, experiment_id, run_id, path=path)
    where = urlparse(MlflowClient(uri).get_run(run_id).info.artifact_uri)
    if where.scheme != "file":
        return in_ui
    return f"{Path(url2pathname(where.path), path)}  (in the UI: {in_ui})"


def log_config(client: MlflowClient, run_id: str, composed: dict) -> None:
    """The composed config as flattened params (less the settings of other tasks) and as the
    artifact `config.yaml`."""
    values = dict(composed)
    for key in schema.other_tasks_keys(composed["task"]):
        values.pop(key, None)
    log_params(client, run_id, flatten(values))
    client.log_text(run_id, OmegaConf.to_yaml(composed), "config.yaml")


def open_run(
    client: MlflowClient, experiment_id: str, conf: Config, composed: dict, out: Path
) -> str:
    """A new RUNNING run tagged with its config's facts and this process; its config logged.
    A store that cannot take it is one line (a run half written stays RUNNING until the next
    command finds this process gone)."""
    tags = run_tags(conf, out) | process_tags()
    with store_errors(resolve_tracking_uri(conf)):
        created = client.create_run(experiment_id, run_name=conf.logger.run_name, tags=tags)
        log_config(client, created.info.run_id, composed)
    return created.info.run_id


def open_store(uri: str, stale_after_s: float) -> MlflowClient:
    """A client for `uri` whose runs with a dead process are marked FAILED first; a missing
    sqlite file (opening would create it) or a server that does not answer is an error naming
    the setting the URI came from."""
    key = tracking_uri_key()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"{key}: no MLflow store at {uri} (train runs into it first)")
    check_server_reachable(uri, key)
    client = MlflowClient(tracking_uri=uri)
    with store_errors(uri):
        reap_dead_runs(client, stale_after_s)
    return client


class TrackingUnavailable(RunStopped):
    """The tracking server stopped answering mid-run: training stopped with a checkpoint."""


@contextmanager
def run_status(
    client: MlflowClient,
    run_id: str,
    conf: Config,
    on_interrupt: str = "",
    started: Callable[[], bool] = lambda: True,
    out: Path | None = None,
) -> Iterator[None]:
    """While the block runs the run has a heartbeat; then it ends FINISHED, FAILED (error text
    as tag `error`) or KILLED (Ctrl-C / SIGTERM, then `on_interrupt` is printed: how to
    continue). Until `started()` (training began) an error leaves the run as it was: a resume
    that cannot start changes nothing. A tracking outage writes nothing more (the server is
    gone) and becomes TrackingUnavailable, a full disk (under `out` or the store) DiskFull:
    each one line saying how to continue."""
    uri = resolve_tracking_uri(conf)
    try:
        with Heartbeat(client, run_id, conf.logger.heartbeat_s):
            yield
    except BaseException as err:
        if is_outage(err, uri):
            raise TrackingUnavailable(
                f"{tracking_uri_key()}: MLflow server {uri} stopped answering within "
                f"{conf.logger.outage_timeout_s:g} s; training stopped, its latest state (the last "
                f"epoch fully recorded) is kept; once the server is back, {on_interrupt}"
            ) from None
        if not started():
            raise
        if isinstance(err, KeyboardInterrupt | SystemExit):  # Lightning: Ctrl-C -> sys.exit(1),
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))  # SIGTERM ->
            sweeps.record_killed(run_id)  # SIGTERMException
            log.warning("run %s interrupted: marked KILLED. %s", run_id, on_interrupt)
            if isinstance(err, SystemExit) and not err.code:  # SIGTERM: exit as killed by it
                raise SystemExit(128 + signal.SIGTERM) from err
            raise
        ended = _end_failed(client, run_id, f"{type(err).__name__}: {err}")
        written = no_space(err)
        if written is not None:
            raise DiskFull(
                _disk_full_line(err, written, uri, out, run_id, ended, on_interrupt)
            ) from err
        raise
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))


def _end_failed(client: MlflowClient, run_id: str, error: str) -> bool:
    """Mark the run FAILED with its error; False when the store cannot take it (it is full):
    the run stays RUNNING until the next cnnexp command finds its process gone (liveness)."""
    try:
        client.set_tag(run_id, "error", error[:5000])
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
    except MlflowException:
        return False
    return True


def _disk_full_line(
    err: BaseException,
    written: str,
    uri: str,
    out: Path | None,
    run_id: str,
    ended: bool,
    on_interrupt: str,
) -> str:
    """Which setting's disk is full, how much is free there, what became of the run."""
    store = uri.startswith("sqlite:///") and says(err, "database or disk is full")
    if store:
        key, path = tracking_uri_key(), Path(uri.removeprefix("sqlite:///"))
    else:
        key, path = "paths.output_dir", Path(written or out or ".")
    state = (
        f"run {run_id} is FAILED"
        if ended
        else f"run {run_id} stays RUNNING until the next cnnexp command marks it FAILED"
    )
    return (
        f"{key}: no space left on the device of {path} ({free_space(path)}); {state}; "
        f"once there is room, {on_interrupt}"
    )
