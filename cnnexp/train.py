"""One experiment run, top to bottom: validate, open the store, data, net, MLflow run, fit,
test, record, summary."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from cnnexp import data, distributed, models
from cnnexp.console import epoch_lines, quiet_libraries
from cnnexp.features.run import train_orb
from cnnexp.layers import net_table
from cnnexp.models.classifier import inference_facts
from cnnexp.paths import job_output_dir
from cnnexp.recorded import tracked_run
from cnnexp.resume import LatestCheckpoint
from cnnexp.schema import Config
from cnnexp.tracking.mlflow_run import Trained
from cnnexp.validate import validate

quiet_libraries()


def train(cfg: DictConfig) -> float:
    """Train and test the configured net; return the best val_acc (what sweepers optimise)."""
    return train_run(cfg).best_val_acc


@distributed.reported_to_rank_zero  # under DDP, rank 0 says which rank failed and why
def train_run(cfg: DictConfig) -> Trained:
    """Train and test the configured net, as `train` does; return what the run produced."""
    conf = validate(cfg)  # every config mistake, typed once, before data loads or a run opens
    composed = OmegaConf.to_container(cfg, resolve=True)  # what a run records as its config
    out = job_output_dir(conf)
    if not models.kind(conf.model).trains:  # the hand-crafted baseline: fitted, not trained
        return train_orb(conf, composed, out)
    run = tracked_run(conf, composed, out)  # the store opened, a resume located
    L.seed_everything(conf.seed, workers=True, verbose=False)
    dm = data.build(conf.data)
    module = classifier(conf, composed["model"], dm)
    if conf.trainer.enable_model_summary is not False and distributed.global_rank() == 0:
        print(net_table(conf.logger.run_name, module.net, dm.input_shape))  # for Lightning's
    with run.recording(module, dm):
        trainer = make_trainer(conf, run.logger, out, [*checkpoints(conf, out), *run.callbacks])
        with distributed.watched(trainer, out, run.ending, run.abandon):  # the other ranks
            start = time.perf_counter()
            trainer.fit(module, datamodule=dm, ckpt_path=run.ckpt_path, weights_only=True)
            seconds = time.perf_counter() - start
            best = best_checkpoint(trainer)
            trainer.test(module, datamodule=dm, ckpt_path=best, weights_only=True, verbose=False)
        run.record(trainer, module, dm, best, seconds)  # rank 0 alone, the others gone
    return run.trained()


def classifier(conf: Config, model: dict, dm: data.TensorDataModule) -> models.Classifier:
    """The configured net in the LightningModule that trains it; its checkpoints store what
    eval and predict need (`model`: the model config as composed, plain data)."""
    net = models.build(conf.model, dm.input_shape, dm.num_classes)
    return models.Classifier(
        net,
        dm.num_classes,
        instantiate(conf.optimizer),
        instantiate(conf.scheduler) if conf.scheduler else None,
        inference_facts(model, dm),
        channels_last=conf.model.channels_last,  # converts `net` in place
        compile=conf.model.compile,
    )


def checkpoints(conf: Config, out: Path) -> list[L.Callback]:
    """The configured callbacks plus the latest-state checkpoint; with
    trainer.enable_checkpointing=false no checkpoint of any kind is written."""
    keep = conf.trainer.enable_checkpointing is not False
    made = [instantiate(c) for c in conf.callbacks.values()]
    made = [c for c in made if keep or not isinstance(c, ModelCheckpoint)]
    return made + ([LatestCheckpoint(out / "checkpoints")] if keep else [])


def make_trainer(conf: Config, logger, out: Path, callbacks: list) -> L.Trainer:
    """The Trainer of `conf.trainer` (validate checked it on a probe); cnnexp prints its own
    model summary (see `train_run`), so Lightning's (FLOPs 0) stays off; a line per epoch
    where no progress bar shows (cnnexp/console.py)."""
    bar, lines = epoch_lines(conf.trainer.enable_progress_bar)
    trainer = vars(conf.trainer) | {"enable_model_summary": False, "enable_progress_bar": bar}
    callbacks = [*callbacks, *lines]
    return L.Trainer(**trainer, logger=logger, callbacks=callbacks, default_root_dir=out)


def best_checkpoint(trainer: L.Trainer) -> str | None:
    """The best checkpoint a ModelCheckpoint saved (tested on), else None (current weights)."""
    saved = [c.best_model_path for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
    return next((path for path in saved if path), None)
