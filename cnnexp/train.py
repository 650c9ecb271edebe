"""One experiment run, top to bottom: validate, store, data, net, MLflow run, fit, test, summary."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from cnnexp import data, models, tracking
from cnnexp.analysis.architecture import model_figure
from cnnexp.analysis.callbacks import build_callbacks
from cnnexp.config import job_output_dir
from cnnexp.console import quiet_libraries
from cnnexp.errors import resume_hint
from cnnexp.layers import net_table
from cnnexp.models.facts import flops_per_image, measure_throughput, n_params
from cnnexp.report.explorer import log_explorer
from cnnexp.resume import LatestCheckpoint, StopOnSigterm, TrainingStarted, locate, reopen
from cnnexp.tracking.dashboard import add_run_images
from cnnexp.tracking.logger import RunLogger
from cnnexp.tracking.mlflow_run import Trained
from cnnexp.validate import validate

log = logging.getLogger(__name__)
quiet_libraries()


def checkpoints(cfg: DictConfig, out: Path) -> list[L.Callback]:
    """The configured callbacks plus the latest-state checkpoint; with
    trainer.enable_checkpointing=false no checkpoint of any kind is written."""
    keep = cfg.trainer.enable_checkpointing is not False
    made = [instantiate(c) for c in cfg.callbacks.values()]
    made = [c for c in made if keep or not isinstance(c, ModelCheckpoint)]
    return made + ([LatestCheckpoint(out / "checkpoints")] if keep else [])


def make_trainer(
    cfg: DictConfig, logger: RunLogger | bool, out: Path, callbacks: list
) -> L.Trainer:
    """The Trainer of `cfg.trainer` (validate checked it on a probe); cnnexp prints its own
    model summary (see `train_run`), so Lightning's (FLOPs 0) stays off."""
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True) | {"enable_model_summary": False}
    return L.Trainer(**trainer, logger=logger, callbacks=callbacks, default_root_dir=out)


def best_checkpoint(trainer: L.Trainer) -> str | None:
    """The best checkpoint a ModelCheckpoint saved (tested on), else None (current weights)."""
    saved = [c.best_model_path for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
    return next((path for path in saved if path), None)


def train(cfg: DictConfig) -> float:
    """Train and test the configured net; return the best val_acc (what sweepers optimise)."""
    return train_run(cfg).best_val_acc


def train_run(cfg: DictConfig) -> Trained:
    """Train and test the configured net, as `train` does; return what the run produced."""
    validate(cfg)  # every config mistake, before data loads or a run opens
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.model.kind == "orb_bovw":  # hand-crafted baseline, no net to train
        from cnnexp.features.run import train_orb

        return train_orb(cfg)
    uri, experiment_id = tracking.ensure_experiment(cfg)  # an unusable store stops us here
    client = MlflowClient(uri)
    resume = locate(cfg, client) if cfg.resume else None
    dm = data.build(cfg.data)
    net = models.build(cfg.model, dm.input_shape, dm.num_classes)
    scheduler = instantiate(cfg.scheduler) if cfg.scheduler else None
    inference = models.classifier.inference_facts(cfg.model, dm)  # eval/predict need it
    module = models.Classifier(
        net,
        dm.num_classes,
        instantiate(cfg.optimizer),
        scheduler,
        inference,
        channels_last=cfg.model.channels_last,  # converts `net` in place
        compile=cfg.model.compile,
    )
    out = job_output_dir(cfg)
    callbacks = checkpoints(cfg, out)
    records = rank_zero_only.rank == 0 and not cfg.trainer.fast_dev_run  # DDP workers: rank 0 does
    if cfg.trainer.enable_model_summary is not False and rank_zero_only.rank == 0:
        print(net_table(cfg.logger.run_name, net, dm.input_shape))  # replaces Lightning's
    ckpt = resume.ckpt_path if resume else None
    if not records:  # Lightning's fast_dev_run is a dry run: nothing is recorded
        trainer = make_trainer(cfg, False, out, callbacks)
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt, weights_only=True)
        trainer.test(module, datamodule=dm, ckpt_path=best_checkpoint(trainer), weights_only=True)
        if cfg.trainer.fast_dev_run:
            print(f"\nfast_dev_run: fit, validation and test ran; nothing recorded in {uri}")
        return Trained(None, uri, out, float("nan"), float("nan"))

    run_id = resume.run_id if resume else tracking.open_run(client, experiment_id, cfg, out)
    started = TrainingStarted(lambda: reopen(client, resume, cfg, out) if resume else None)
    hint = resume_hint(run_id)
    facts = {"n_params": n_params(net), "flops_per_image": flops_per_image(net, dm.input_shape)}
    began = lambda: started.started or not resume  # noqa: E731
    with (
        StopOnSigterm() as sigterm,
        tracking.run_status(client, run_id, cfg, hint, began, out),
    ):
        logger = RunLogger(uri, run_id, resumed=resume is not None)
        analysis = build_callbacks(cfg.analysis, dm, resumed=resume is not None)
        callbacks += [started, sigterm, *analysis]
        trainer = make_trainer(cfg, logger, out, callbacks)
        logger.log_metrics(facts, step=0)
        if not resume:
            picture = model_figure(cfg.model, net, dm.input_shape)
            client.log_figure(run_id, picture, "architecture.png")
        start = time.perf_counter()
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt, weights_only=True)
        fit_seconds = time.perf_counter() - start
        best = best_checkpoint(trainer)
        trainer.test(module, datamodule=dm, ckpt_path=best, weights_only=True, verbose=False)
        test_acc = float(trainer.callback_metrics.get("test_acc", float("nan")))
        batch = dm.inputs(dm.train[0][: dm.batch_size]).contiguous(
            memory_format=module.memory_format
        )
        speed = {}
        for k in ("train", "infer"):
            speed |= measure_throughput(net, batch, k == "train").metrics(f"throughput_{k}")
        logger.log_metrics({"fit_seconds": fit_seconds, **speed}, step=trainer.current_epoch)
        if best and cfg.logger.log_checkpoint:
            client.log_artifact(run_id, best, "checkpoints")
        if cfg.analysis.enabled:  # last: the page shows everything the run recorded
            log_explorer(client, run_id)
        add_run_images(client, run_id)  # the experiment's dashboard gains this run's image keys

    val = [m.value for m in client.get_metric_history(run_id, "val_acc")]
    best_val = max(val, default=float("nan"))
    print(
        f"\n{cfg.logger.run_name}: val_acc {best_val:.4f} (best)  test_acc {test_acc:.4f}  "
        f"params {facts['n_params']:,}  FLOPs/image "
        f"{facts['flops_per_image'] / 1e6:.2f} M  fit {fit_seconds:.1f} s  "
        f"{speed['throughput_train']:,.0f} img/s training\n"
        + tracking.where_text(cfg, uri, experiment_id, run_id, out)
    )
    return Trained(run_id, uri, out, best_val, test_acc)
