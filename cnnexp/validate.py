"""validate(cfg): every config mistake we can find before data loads or a run opens, as one
ConfigError line naming the key.

Types and ranges come from the schema (cnnexp/schema.py); here the checks that need meaning:
the data set's metadata, shapes through the net, and the optimizer, scheduler, callbacks and
Trainer applied for real to a probe (so torch's and Lightning's own checks speak, and the key
they choke on is found by putting each key back to its default in turn).
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from cnnexp import data, models, sweeps
from cnnexp.config import ConfigError, check_mapping, check_settings, plain
from cnnexp.data import augment
from cnnexp.errors import first_line
from cnnexp.features.run import orb_settings

if TYPE_CHECKING:
    import lightning as L

PROBE_EPOCHS = 3  # scheduler steps tried: T_max=0 or step_size=0 fail at the first one


@dataclass(frozen=True)
class Checked:
    """What validation learnt: the data set's metadata and, for a CNN, the (seeded) net."""

    info: data.DataInfo
    net: nn.Module | None


def validate(cfg: DictConfig) -> Checked:
    """Raise ConfigError for the first problem found; loads no data, opens no run."""
    check_settings(cfg, "")
    if not cfg.logger.experiment_name:
        raise ConfigError("logger.experiment_name: empty (allowed: a non-empty name)")
    _check_output_dir(Path(cfg.paths.output_dir))
    info = data.check(cfg.data)
    check_augment(cfg.data.augment, info.input_shape)
    net = None
    if cfg.model.kind == "orb_bovw":
        orb_settings(cfg.model, info.input_shape[1:])
    else:
        net = models.build(cfg.model, info.input_shape, len(info.class_names))
    check_optimization(cfg, net)
    for name, callback in cfg.callbacks.items():
        check_target(callback, f"callbacks.{name}")
    from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator

    trains_on = check_trainer(cfg.trainer).accelerator
    if cfg.data.device == "gpu" and not isinstance(trains_on, CUDAAccelerator):
        raise ConfigError(
            f"data.device: gpu, but the Trainer runs on {type(trains_on).__name__} "
            "(allowed: auto, cpu; or a GPU Trainer, e.g. trainer=gpu)"
        )
    if cfg.model.get("compile") and isinstance(trains_on, CPUAccelerator):
        check_cpp_compiler()
    return Checked(info, net)


def check_cpp_compiler() -> None:
    """model.compile=true on the CPU: torch.compile writes C++ kernels and builds them with the
    compiler of torch._inductor's `cpp.cxx` (CXX, else g++); without one the first step would
    fail with a traceback."""
    from torch._inductor import config as inductor
    from torch._inductor.cpp_builder import cpp_compiler_search
    from torch._inductor.exc import InvalidCxxCompiler

    try:
        cpp_compiler_search(inductor.cpp.cxx)
    except InvalidCxxCompiler:
        tried = ", ".join(str(c) for c in inductor.cpp.cxx if c)
        raise ConfigError(
            f"model.compile: true, but torch.compile finds no working C++ compiler for CPU "
            f"kernels (tried {tried}) (allowed: false, or a C++ compiler: install g++ or set CXX)"
        ) from None


def validate_applying(cfg: DictConfig) -> data.DataInfo | None:
    """task=eval|predict, before any checkpoint, store or data is read: the settings, resume=,
    predict.path; eval: the Trainer and the data set's metadata (returned)."""
    check_settings(cfg, "")
    if not cfg.resume:
        raise ConfigError(
            f"resume: no value given (task={cfg.task} needs resume=<run id or checkpoint file>)"
        )
    _check_output_dir(Path(cfg.paths.output_dir))
    if cfg.task == "predict":
        if not cfg.predict.path:
            raise ConfigError(
                "predict.path: no value given (set predict.path=<folder of images or one image>)"
            )
        return None
    check_trainer(cfg.trainer)
    return data.check(cfg.data)


def check_applies(cfg: DictConfig, trained: dict, source: str, info: data.DataInfo | None) -> None:
    """What the trained net (`trained`: a checkpoint's inference facts) allows: eval's data set
    (`info`) has its input shape and class count; predict.top_k is at most its classes."""
    shape, classes = tuple(trained["input_shape"]), len(trained["class_names"])
    if info is None:
        if cfg.predict.top_k > classes:
            raise ConfigError(
                f"predict.top_k: {cfg.predict.top_k} is more than the {classes} classes of the "
                f"net in {source} (allowed: 1..{classes})"
            )
        return
    if (tuple(info.input_shape), len(info.class_names)) != (shape, classes):
        raise ConfigError(
            f"data: {cfg.data.name} has {_shape_text(info.input_shape)} images of "
            f"{len(info.class_names)} classes, the net in {source} takes {_shape_text(shape)} "
            f"images of {classes} classes (allowed: a data set of that shape and class count)"
        )


def _shape_text(shape: tuple[int, ...]) -> str:
    return "×".join(map(str, shape))


def _check_output_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"paths.output_dir: cannot create {path} ({err.strerror})") from None


def check_target(section: DictConfig, where: str, given_by_code: tuple[str, ...] = ()) -> Any:
    """`_target_` must import and the other keys must be arguments of its signature; returns
    the object `_target_` names."""
    spec = plain(section)
    if not isinstance(spec, dict) or "_target_" not in spec:
        raise ConfigError(
            f"{where}: {spec!r} is not allowed (allowed: {{_target_: a.dotted.Name, ...}})"
        )
    try:
        obj = get_object(spec["_target_"])
    except Exception:  # hydra raises several types for a bad dotted path
        raise ConfigError(
            f"{where}._target_: cannot import {spec['_target_']!r} (a dotted path to a "
            "class or function, e.g. torch.optim.Adam)"
        ) from None
    params = inspect.signature(obj).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        arguments = {k: v for k, v in spec.items() if not k.startswith("_")}
        check_mapping(arguments, where, set(params) - set(given_by_code))
    return obj


def check_augment(specs: ListConfig, input_shape: tuple[int, ...]) -> None:
    """Each `data.augment` entry names a torchvision.transforms.v2 class and, built with its
    arguments, transforms a probe image of the data set's shape; together they keep the shape.
    The global RNG is left as it was (training draws the same numbers with or without this)."""
    with torch.random.fork_rng(devices=[]):
        x = torch.randint(0, 256, input_shape, dtype=torch.uint8)  # as batches hold them
        for i, spec in enumerate(plain(specs)):
            where = f"data.augment[{i}]"
            if isinstance(spec, dict) and "_target_" in spec:
                augment.transform_class(spec["_target_"], f"{where}._target_")
            cls = check_target(spec, where)
            x = _applied(spec, where, cls, lambda t, x=x: t(x), augment.make_transform)
    if tuple(x.shape) != tuple(input_shape):
        raise ConfigError(
            f"data.augment: turns {_shape_text(input_shape)} images into {_shape_text(x.shape)} "
            f"(allowed: transforms that keep the shape, e.g. RandomCrop of size "
            f"{input_shape[-1]} with padding)"
        )


def check_optimization(cfg: DictConfig, net: nn.Module | None) -> None:
    """The optimizer and scheduler built for real on the net (or a probe parameter), the
    scheduler stepped a few epochs: torch's own range checks name the bad key."""
    if net is None:  # no net, nothing to optimise (the ORB baseline)
        return
    params = list(net.parameters())
    optimizer_cls = check_target(cfg.optimizer, "optimizer", given_by_code=("params",))
    optimizer = _applied(cfg.optimizer, "optimizer", optimizer_cls, lambda f: f(params))
    if not cfg.scheduler:  # scheduler=none
        return
    scheduler_cls = check_target(cfg.scheduler, "scheduler", given_by_code=("optimizer",))

    def stepped(factory: Callable) -> None:
        scheduler = factory(optimizer)
        for _ in range(PROBE_EPOCHS):
            scheduler.step()

    with warnings.catch_warnings():  # stepping before optimizer.step() warns
        warnings.simplefilter("ignore")
        _applied(cfg.scheduler, "scheduler", scheduler_cls, stepped)


def check_trainer(trainer: DictConfig) -> L.Trainer:
    """Lightning's own checks of the Trainer arguments, on a probe Trainer that logs nothing
    (returned); and no DDP that re-runs the command line inside a -m sweep."""
    import lightning as L
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    quiet = logging.getLogger("lightning.pytorch")
    level, quiet.level = quiet.level, logging.ERROR
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probe = _applied(
                trainer,
                "trainer",
                L.Trainer,
                lambda make: make(logger=False, callbacks=[], enable_checkpointing=False),
                instantiate_with=lambda spec: _partial(L.Trainer, spec),
            )
    finally:
        quiet.level = level
    if isinstance(probe.strategy.launcher, _SubprocessScriptLauncher) and sweeps.in_multirun():
        raise ConfigError(
            "trainer.strategy: DDP starts its workers by re-running the command line, which a "
            "-m sweep cannot do (run one DDP training per command, or sweep with "
            "hydra/launcher=slurm and hydra.launcher.tasks_per_node=<devices>)"
        )
    return probe


def _partial(cls: Callable, spec: dict) -> Callable:
    return lambda **more: cls(**{**spec, **more})


def _applied(
    section: DictConfig,
    where: str,
    target: Callable,
    use: Callable[[Callable], Any],
    instantiate_with: Callable[[dict], Callable] | None = None,
) -> Any:
    """use(factory) for the section; on failure, blame the first key whose default (from the
    target's signature) makes it pass, else the one key holding an integer <= 0 (a step size or
    period of 0 divides by zero), else the section."""
    spec = dict(plain(section).items())
    make = instantiate_with or (lambda s: instantiate(OmegaConf.create(s)))
    try:
        return use(make(spec))
    except Exception as err:  # torch and Lightning raise ValueError, TypeError, Misconfiguration…
        reason = first_line(str(err)) or type(err).__name__
    defaults = {
        name: p.default
        for name, p in inspect.signature(target).parameters.items()
        if p.default is not p.empty
    }
    for key in [k for k in spec if k in defaults and spec[k] != defaults[k]]:
        try:
            use(make({**spec, key: defaults[key]}))
        except Exception:
            continue
        raise ConfigError(f"{where}.{key}: {spec[key]!r} is not allowed ({reason})")
    whole = [k for k, v in spec.items() if isinstance(v, int) and not isinstance(v, bool)]
    suspects = [k for k in whole if not k.startswith("_") and spec[k] <= 0]
    if len(suspects) == 1:
        key = suspects[0]
        raise ConfigError(f"{where}.{key}: {spec[key]!r} is not allowed ({reason})")
    raise ConfigError(f"{where}: {reason}")
