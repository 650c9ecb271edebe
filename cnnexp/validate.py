"""validate(cfg): every config mistake we can see before loading data, as one ConfigError line."""

from __future__ import annotations

import inspect
from collections.abc import Iterable

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from cnnexp import data
from cnnexp.config import ConfigError, check_keys, one_of

TASKS = ("train", "inspect", "report")
TOP_KEYS = {
    "defaults",
    "task",
    "seed",
    "paths",
    "model",
    "data",
    "trainer",
    "optimizer",
    "scheduler",
    "logger",
    "callbacks",
    "analysis",
    "report",  # task=report: which runs to compare (cnnexp/report/)
    "resume",  # a checkpoint path or MLflow run id to continue (cnnexp/resume.py)
    "inspect_model",  # task=inspect +inspect_model=resnet18: a torchvision model
}


def check_target(section: DictConfig, where: str, given_by_code: Iterable[str] = ()) -> None:
    """`_target_` must import and the other keys must be arguments of its signature."""
    spec = OmegaConf.to_container(section, resolve=True)
    target = spec.get("_target_")
    try:
        obj = get_object(target)
    except Exception:  # hydra raises several types for a bad dotted path
        raise ConfigError(
            f"{where}._target_: cannot import {target!r} (a dotted path to a "
            "class or function, e.g. torch.optim.Adam)"
        ) from None
    params = inspect.signature(obj).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    allowed = set(params) - set(given_by_code)
    check_keys({k: v for k, v in spec.items() if not k.startswith("_")}, where, allowed)


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first problem found; cheap, loads no data."""
    import lightning as L

    check_keys(cfg, "cfg", TOP_KEYS)
    one_of(cfg.task, "task", TASKS)
    data.check(cfg.data)
    check_target(cfg.optimizer, "optimizer", given_by_code=["params"])
    if cfg.scheduler:
        check_target(cfg.scheduler, "scheduler", given_by_code=["optimizer"])
    for name, callback in (cfg.callbacks or {}).items():
        check_target(callback, f"callbacks.{name}")
    trainer_args = set(inspect.signature(L.Trainer).parameters) - {"logger", "callbacks"}
    check_keys(cfg.trainer, "trainer", trainer_args)
    if cfg.trainer.max_epochs is None or cfg.trainer.max_epochs < 1:
        raise ConfigError(
            f"trainer.max_epochs: {cfg.trainer.max_epochs!r} is not allowed (an integer >= 1)"
        )
