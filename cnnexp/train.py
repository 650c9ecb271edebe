"""One experiment run, top to bottom: validate, data, net, MLflow run, fit, test, summary."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig, OmegaConf

from cnnexp import data, models, tracking
from cnnexp.analysis.callbacks import build_callbacks
from cnnexp.config import ConfigError
from cnnexp.models.facts import flops_per_image, n_params
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
        return L.Trainer(
            **OmegaConf.to_container(cfg.trainer, resolve=True),
            logger=logger,
            callbacks=callbacks,
            default_root_dir=out,
        )
    except ValueError as err:  # Lightning's MisconfigurationException is a ValueError
        raise ConfigError(f"trainer: {str(err).splitlines()[0]}") from None


def train(cfg: DictConfig) -> float:
    """Train and test the configured net; return the best val_acc (what sweepers optimise)."""
    validate(cfg)
    if cfg.model.name == "orb_bovw":  # hand-crafted baseline, no net to train
        from cnnexp.features.run import train_orb

        return train_orb(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = data.build(cfg.data)
    net = models.build(cfg.model, dm.input_shape, dm.num_classes)
    scheduler = instantiate(cfg.scheduler) if cfg.scheduler else None
    module = models.Classifier(net, dm.num_classes, instantiate(cfg.optimizer), scheduler)
    out = output_dir(cfg)
    uri, experiment_id = tracking.ensure_experiment(cfg)
    logger = MLFlowLogger(
        experiment_name=cfg.logger.experiment_name,
        run_name=cfg.logger.run_name,
        tracking_uri=uri,
        log_model=cfg.logger.log_checkpoint,
        tags=tracking.run_tags(cfg, out),
    )
    insight = build_callbacks(cfg.get("analysis"), dm, dm.input_shape)
    trainer = make_trainer(cfg, logger, out, insight)  # a bad flag fails here, before a run opens

    client, run_id = logger.experiment, logger.run_id  # opens the run
    with tracking.run_status(client, run_id):
        tracking.log_config(client, run_id, cfg)
        facts = {"n_params": n_params(net), "flops_per_image": flops_per_image(net, dm.input_shape)}
        logger.log_metrics(facts, step=0)
        start = time.perf_counter()
        trainer.fit(module, datamodule=dm)
        fit_seconds = time.perf_counter() - start
        best = (
            "best"
            if trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path
            else None
        )
        test_acc = trainer.test(module, datamodule=dm, ckpt_path=best, verbose=False)[0]["test_acc"]
        logger.log_metrics({"fit_seconds": fit_seconds}, step=0)

    history = client.get_metric_history(run_id, "val_acc")
    best_val = max(m.value for m in history)
    print(
        f"\n{cfg.logger.run_name}: val_acc {best_val:.4f} (best)  test_acc {test_acc:.4f}  "
        f"params {facts['n_params']:,}  FLOPs/image {facts['flops_per_image'] / 1e6:.2f} M  "
        f"fit {fit_seconds:.1f} s\n" + tracking.where_text(cfg, uri, experiment_id, run_id, out)
    )
    return best_val
