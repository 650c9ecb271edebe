"""One experiment run, top to bottom: validate, data, net, MLflow run, fit, test, summary."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from lightning.pytorch.utilities import rank_zero_only
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from cnnexp import data, models, sweeps, tracking
from cnnexp.analysis.callbacks import build_callbacks
from cnnexp.config import ConfigError
from cnnexp.models.facts import flops_per_image, n_params, throughput
from cnnexp.resume import InterruptCheckpoint, locate, reopen
from cnnexp.validate import validate

log = logging.getLogger(__name__)
logging.getLogger(
    "lightning.pytorch"
).handlers.clear()  # Hydra's handlers show it once, to file too
logging.getLogger("lightning.pytorch").propagate = True
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: "litlogger" not in record.getMessage()
)  # an advert, not information


def output_dir(cfg: DictConfig) -> Path:
    """This job's Hydra output dir (or, outside Hydra, a fresh one under paths.output_dir)."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.paths.output_dir, "runs", f"direct-{time.strftime('%Y%m%d-%H%M%S')}")


def make_trainer(
    cfg: DictConfig, logger: MLFlowLogger, out: Path, extra: list[L.Callback] = ()
) -> L.Trainer:
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values()] + list(extra)
    try:
        trainer = L.Trainer(
            **OmegaConf.to_container(cfg.trainer, resolve=True),
            logger=logger,
            callbacks=callbacks,
            default_root_dir=out,
        )
    except ValueError as err:  # Lightning's MisconfigurationException is a ValueError
        raise ConfigError(f"trainer: {str(err).splitlines()[0]}") from None
    relaunches = isinstance(trainer.strategy.launcher, _SubprocessScriptLauncher)
    if relaunches and sweeps.in_multirun():
        raise ConfigError(
            "trainer.strategy: DDP starts its workers by re-running the command line, which a "
            "-m sweep cannot do (run one DDP training per command, or sweep with "
            "hydra/launcher=slurm and hydra.launcher.tasks_per_node=<devices>)"
        )
    return trainer


def best_checkpoint(trainer: L.Trainer) -> str | None:
    """Test on ModelCheckpoint's best ("best") when it saved one, else on the current weights."""
    saved = trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path
    return "best" if saved else None


def train(cfg: DictConfig) -> float:
    """Train and test the configured net; return the best val_acc (what sweepers optimise)."""
    validate(cfg)
    if cfg.model.name == "orb_bovw":  # hand-crafted baseline, no net to train
        from cnnexp.features.run import train_orb

        return train_orb(cfg)
    uri, experiment_id = tracking.ensure_experiment(cfg)  # an unusable store stops us here
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = data.build(cfg.data)
    net = models.build(cfg.model, dm.input_shape, dm.num_classes)
    scheduler = instantiate(cfg.scheduler) if cfg.scheduler else None
    module = models.Classifier(net, dm.num_classes, instantiate(cfg.optimizer), scheduler)
    out = output_dir(cfg)
    resume = locate(str(cfg.resume), MlflowClient(uri), cfg) if cfg.resume else None
    logger = MLFlowLogger(
        experiment_name=cfg.logger.experiment_name,
        run_name=cfg.logger.run_name,
        tracking_uri=uri,
        log_model=cfg.logger.log_checkpoint,
        tags=tracking.run_tags(cfg, out),
        run_id=resume.run_id if resume else None,
    )
    rank0 = rank_zero_only.rank == 0  # DDP workers Lightning starts run this too; rank 0 records
    extra = build_callbacks(cfg.get("analysis"), dm, dm.input_shape) if rank0 else []
    extra.append(InterruptCheckpoint(out / "checkpoints" / "interrupted.ckpt"))
    trainer = make_trainer(cfg, logger, out, extra)  # a bad flag fails here, before a run opens
    ckpt_path = resume.ckpt_path if resume else None
    if not rank0:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
        trainer.test(module, datamodule=dm, ckpt_path=best_checkpoint(trainer), verbose=False)
        return float("nan")

    client, run_id = logger.experiment, logger.run_id  # opens (or reopens) the run
    hint = f"continue it with: python -m cnnexp <same overrides> resume={run_id}"
    with tracking.run_status(client, run_id, on_interrupt=hint):
        facts = {"n_params": n_params(net), "flops_per_image": flops_per_image(net, dm.input_shape)}
        if resume:
            reopen(client, resume, cfg, out)
        else:
            tracking.log_config(client, run_id, cfg)
            logger.log_metrics(facts, step=0)
        start = time.perf_counter()
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
        fit_seconds = time.perf_counter() - start
        test_acc = trainer.test(
            module, datamodule=dm, ckpt_path=best_checkpoint(trainer), verbose=False
        )[0]["test_acc"]
        batch = dm.train[0][: dm.batch_size]
        speed = {
            f"throughput_{k}": throughput(net, batch, k == "train") for k in ("train", "infer")
        }
        logger.log_metrics({"fit_seconds": fit_seconds, **speed}, step=0)

    history = client.get_metric_history(run_id, "val_acc")
    best_val = max(m.value for m in history)
    print(
        f"\n{cfg.logger.run_name}: val_acc {best_val:.4f} (best)  test_acc {test_acc:.4f}  "
        f"params {facts['n_params']:,}  FLOPs/image {facts['flops_per_image'] / 1e6:.2f} M  "
        f"fit {fit_seconds:.1f} s  {speed['throughput_train']:,.0f} img/s training\n"
        + tracking.where_text(cfg, uri, experiment_id, run_id, out)
    )
    return best_val
