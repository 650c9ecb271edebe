"""Interrupt and resume: a checkpoint on Ctrl-C/SIGTERM, and `resume=<checkpoint or run id>` that
continues training into the same MLflow run.

Every checkpoint cnnexp writes carries the MLflow run id (Classifier.on_save_checkpoint), so a
checkpoint alone says which run to continue. Given a run id instead, the newest checkpoint in that
run's output dir (tag `output_dir`) is used. Lightning restores epoch, optimizer and scheduler,
and since metric step = epoch index, the run's curves continue where they stopped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from cnnexp.config import ConfigError
from cnnexp.models.classifier import RUN_ID_KEY
from cnnexp.tracking import flatten
from cnnexp.tracking.mlflow_run import PARAM_VALUE_MAX

log = logging.getLogger(__name__)
MUST_MATCH = ("model.", "data.")  # a resumed run may change trainer.max_epochs, not the net or data


class InterruptCheckpoint(L.Callback):
    """Writes `path` when training is interrupted (Ctrl-C, SIGTERM), so a crash or a diverged
    loss leaves no checkpoint that looks resumable. (Lightning's OnExceptionCheckpoint saves on
    any exception and makes every fit without ckpt_path look for a "last" checkpoint.)"""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, error: BaseException):
        if isinstance(error, KeyboardInterrupt | SystemExit):  # SIGTERMException is a SystemExit
            trainer.save_checkpoint(self.path)
            log.warning("interrupted: checkpoint written to %s", self.path)


@dataclass(frozen=True)
class Resume:
    run_id: str
    ckpt_path: str


def _run_id_in(ckpt: Path) -> str:
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for a file that is no checkpoint
        raise ConfigError(f"resume: cannot read checkpoint {ckpt} ({type(err).__name__})") from None
    run_id = state.get(RUN_ID_KEY) if isinstance(state, dict) else None
    if not run_id:
        raise ConfigError(f"resume: checkpoint {ckpt} names no MLflow run (not written by cnnexp)")
    return run_id


def _newest_checkpoint(run: Run) -> Path:
    folder = Path(run.data.tags.get("output_dir", ""), "checkpoints")
    found = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ConfigError(f"resume: run {run.info.run_id} has no checkpoint in {folder}")
    return found[-1]


def locate(value: str, client: MlflowClient, cfg: DictConfig) -> Resume:
    """The run to continue and the checkpoint to continue from, for `resume=<value>`; checks
    that the composed config describes the same net and data as the run did."""
    path = Path(value).expanduser()
    given_checkpoint = path.is_file()
    run_id = _run_id_in(path) if given_checkpoint else value
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(
            f"resume: run {run_id} (from {path}) is not in this MLflow store"
            if given_checkpoint
            else f"resume: {value!r} is neither a checkpoint file nor a run id in this MLflow store"
        ) from None
    ckpt = path if given_checkpoint else _newest_checkpoint(run)
    logged = run.data.params
    for key, now in flatten(cfg).items():
        before = logged.get(key)
        if key.startswith(MUST_MATCH) and before is not None and before != now[:PARAM_VALUE_MAX]:
            raise ConfigError(
                f"resume: run {run_id} was trained with {key}={before}, not {now} "
                "(resume with the same model and data; trainer.max_epochs may grow)"
            )
    return Resume(run_id, str(ckpt.resolve()))


def reopen(client: MlflowClient, resume: Resume, cfg: DictConfig, out: Path) -> None:
    """Mark the run RUNNING again; record where it continues from and with which config (the
    first config.yaml and params stay as they were)."""
    client.update_run(resume.run_id, status="RUNNING")
    client.set_tag(resume.run_id, "resumed_from", resume.ckpt_path)
    client.set_tag(resume.run_id, "output_dir", str(out))  # the next resume looks here
    client.log_text(resume.run_id, OmegaConf.to_yaml(cfg, resolve=True), f"resumed/{out.name}.yaml")
