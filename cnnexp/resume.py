"""Exact, safe resume: `checkpoints/latest.ckpt` holds the latest state of a run (written at every
epoch's end and when training is interrupted), and `resume=<run id or checkpoint>` continues the
same MLflow run from it.

Every checkpoint carries its MLflow run id as plain data (Classifier.on_save_checkpoint) and is
only ever loaded with `weights_only=True`: a crafted file cannot run code. Metric steps are epoch
indices and the run's logger never writes a step twice, so a resumed run's curves continue where
they stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Checkpoint
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from cnnexp.checkpoints import read_checkpoint
from cnnexp.errors import ConfigError
from cnnexp.models.classifier import RUN_ID_KEY
from cnnexp.schema import Config, NetSpeedConf
from cnnexp.tracking import flatten, process_tags
from cnnexp.tracking.mlflow_run import PARAM_VALUE_MAX

log = logging.getLogger(__name__)
MUST_MATCH = ("model.", "data.", "optimizer._target_")  # what a resumed run may not change
MAY_CHANGE = tuple(f"model.{f.name}" for f in dataclasses.fields(NetSpeedConf))  # how it runs
LATEST = "latest.ckpt"
TESTED = "test_acc"  # the metric a run records once its test ran


class LatestCheckpoint(Checkpoint):
    """Writes `<dir>/latest.ckpt` at the end of every training epoch (after that epoch's metrics
    are logged: Lightning runs Checkpoint callbacks after the module's hook) and when Ctrl-C or
    SIGTERM stops training (Lightning then repeats the cut-off epoch on resume); written to a
    temporary file, then renamed, so a kill never leaves half a checkpoint. A crash, a diverged
    loss or a tracking outage writes nothing: an outage strikes while an epoch's records are
    written, so the latest state stays that of the last epoch fully recorded, and the resume
    trains the unrecorded epoch again."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LATEST

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, error: BaseException):
        if isinstance(error, KeyboardInterrupt | SystemExit):  # SIGTERMException is one
            self._save(trainer)
            log.warning("training stopped: latest state written to %s", self.path)

    def _save(self, trainer: L.Trainer) -> None:
        partial = self.path.with_suffix(".part")
        trainer.save_checkpoint(partial, weights_only=False)  # every rank takes part; rank 0 writes
        if trainer.is_global_zero:
            os.replace(partial, self.path)


class TrainingStarted(L.Callback):
    """Knows whether training began (weights, optimizer and epoch restored, first batch next)
    or, for a run whose epochs were all trained, its test began; then calls `on_start` (a
    resumed run goes back to RUNNING only now: a resume that cannot start leaves the run as it
    was)."""

    def __init__(self, on_start: Callable[[], None] = lambda: None) -> None:
        self.started, self.on_start = False, on_start

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start()

    def _start(self) -> None:
        if not self.started:
            self.started = True
            self.on_start()


class StopOnSigterm(L.Callback):
    """SIGTERM stops a recorded run wherever it lands, as Ctrl-C does: inside the training loop
    Lightning stops at the next batch itself (LatestCheckpoint keeps the state; this handler,
    which Lightning calls after its own, leaves it to Lightning); anywhere else (setup, between
    the last epoch and the test, the test, what is recorded after it) SystemExit(143) at once,
    where Python's default would end the process and leave its run RUNNING. Use it as a
    context manager around the run (main thread only) and as one of the Trainer's callbacks."""

    def __init__(self) -> None:
        self.training, self.previous = False, None

    def __enter__(self) -> StopOnSigterm:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._stop)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)

    def _stop(self, signum: int, frame: object) -> None:
        if not self.training:
            raise SystemExit(128 + signum)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.training = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.training = False

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, error: BaseException):
        self.training = False


@dataclass(frozen=True)
class Resume:
    run_id: str
    ckpt_path: str
    status: str  # the run's status before it was resumed


def locate(conf: Config, composed: dict, client: MlflowClient) -> Resume:
    """The run to continue and its latest state, for `resume=<run id or checkpoint>`; checks
    that the run can be continued with the config (`composed`: as it is recorded), changing
    nothing."""
    run, given = find_run(client, str(conf.resume))
    run_id = run.info.run_id
    _check_status(run, conf.resume_finished)
    latest = latest_checkpoint(run)
    ckpt = given or latest
    if not ckpt.is_file():
        raise ConfigError(f"resume: run {run_id} has no latest-state checkpoint {latest}")
    state = read_checkpoint(ckpt)
    if given and latest.is_file() and latest.resolve() != ckpt.resolve():
        newest = read_checkpoint(latest)
        if newest.get("global_step", 0) > state.get("global_step", 0):
            raise ConfigError(
                f"resume: {ckpt} is older than the run's latest state {latest} (epoch "
                f"{newest.get('epoch')}); resume={run_id} continues from the latest, so no step is "
                "logged twice"
            )
    _check_same_config(run, composed)
    trained = epochs_trained(state)
    epochs = conf.trainer.max_epochs  # None or -1: no limit
    if not only_test_left(run, trained) and epochs is not None and 0 <= epochs <= trained:
        raise ConfigError(
            f"trainer.max_epochs: run {run_id} has trained {trained} epoch(s) already "
            f"(allowed: more than {trained} to train further)"
        )
    return Resume(run_id, str(ckpt.resolve()), run.info.status)


def only_test_left(run: Run, trained: int) -> bool:
    """The run trained every epoch it was started with and stopped before its test (SIGTERM
    there): resuming it runs the test."""
    planned = run.data.params.get("trainer.max_epochs", "")
    whole = planned.isdigit() and int(planned) <= trained
    return whole and TESTED not in run.data.metrics


def find_run(client: MlflowClient, value: str) -> tuple[Run, Path | None]:
    """The run `resume=<value>` names (a run id, or a checkpoint file that carries one) and the
    file when one was given (None for a run id)."""
    path = Path(value).expanduser()
    given_file = path.is_file()
    run_id = read_checkpoint(path)[RUN_ID_KEY] if given_file else value
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(
            f"resume: run {run_id} (from {path}) is not in this MLflow store"
            if given_file
            else f"resume: {value!r} is neither a checkpoint file nor a run id in this MLflow store"
        ) from None
    return run, path if given_file else None


def latest_checkpoint(run: Run) -> Path:
    """Where the run's latest state is (`<output_dir>/checkpoints/latest.ckpt`; may be missing)."""
    return Path(run.data.tags.get("output_dir", ""), "checkpoints", LATEST)


def epochs_trained(state: dict) -> int:
    """Whole epochs a checkpoint has behind it (one saved inside an epoch does not count it)."""
    progress = state.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {})
    return int(progress.get("current", {}).get("processed", state.get("epoch", 0)))


def _check_status(run: Run, finished_ok: bool) -> None:
    status, run_id = run.info.status, run.info.run_id
    if status == "FINISHED" and not finished_ok:
        raise ConfigError(
            f"resume: run {run_id} is FINISHED (allowed: resume_finished=true to train it further)"
        )
    if status == "RUNNING":
        tags = run.data.tags
        where = f"process {tags.get('cnnexp.pid', '?')} on {tags.get('cnnexp.host', '?')}"
        raise ConfigError(
            f"resume: run {run_id} is still RUNNING in {where} (allowed: a run that ended)"
        )


def _check_same_config(run: Run, composed: dict) -> None:
    logged = run.data.params
    for key, now in flatten(composed).items():
        before = logged.get(key)
        fixed = key.startswith(MUST_MATCH) and key not in MAY_CHANGE
        if fixed and before is not None and before != now[:PARAM_VALUE_MAX]:
            raise ConfigError(
                f"resume: run {run.info.run_id} was trained with {key}={before}, not {now} "
                "(resume with the same model, data and optimizer; trainer.max_epochs may grow)"
            )


def reopen(client: MlflowClient, resume: Resume, composed: dict, out: Path) -> None:
    """Mark the run RUNNING again in this process; record where it continues from and with
    which config (the first config.yaml and params stay as they were)."""
    client.update_run(resume.run_id, status="RUNNING")
    for key, value in process_tags().items():
        client.set_tag(resume.run_id, key, value)
    client.set_tag(resume.run_id, "resumed_from", resume.ckpt_path)
    client.set_tag(resume.run_id, "output_dir", str(out))  # the next resume looks here
    if "error" in client.get_run(resume.run_id).data.tags:
        client.delete_tag(resume.run_id, "error")  # what ended it last time is over
    client.log_text(resume.run_id, OmegaConf.to_yaml(composed), f"resumed/{out.name}.yaml")
