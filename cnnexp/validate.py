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
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from cnnexp import data, models, sweeps
from cnnexp.config import ConfigError, check_finite, check_settings, plain
from cnnexp.data import augment
from cnnexp.data.checks import training_images, usable_cores
from cnnexp.data.sources import free_memory
from cnnexp.errors import first_line, one_line
from cnnexp.features.run import orb_settings
from cnnexp.models.blocks import Conv
from cnnexp.models.classifier import INFERENCE_KEY, MONITORED
from cnnexp.models.footprint import Footprint, footprint
from cnnexp.schema import MODEL_SCHEMAS
from cnnexp.targets import check_arguments, check_targets

if TYPE_CHECKING:
    import lightning as L

MAX_SIDE = 100_000  # pixels and channels of a stored input shape cnnexp accepts
PROBE_EPOCHS = 3  # scheduler steps tried: T_max=0 or step_size=0 fail at the first one


def validate(cfg: DictConfig) -> data.DataInfo:
    """Raise ConfigError for the first problem found, else return the data set's metadata.
    Loads no data, allocates no weights (the net is built on the meta device), opens no run,
    and calls nothing a `_target_` names before every target was checked."""
    check_config(cfg)
    if not cfg.logger.experiment_name:
        raise ConfigError("logger.experiment_name: empty (allowed: a non-empty name)")
    _check_output_dir(Path(cfg.paths.output_dir))
    info = data.check(cfg.data)
    check_augment(cfg.data.augment, info.input_shape)
    check_callbacks(cfg.callbacks)
    probe = check_trainer(cfg.trainer)
    check_schedule(cfg, info, probe)
    if cfg.model.kind == "orb_bovw":
        orb_settings(cfg.model, info.input_shape[1:])
    else:
        net = meta_net(cfg.model, info.input_shape, len(info.class_names))
        check_fits(footprint(net, info.input_shape), cfg, info, probe)
        check_optimization(cfg, net)
    from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator

    trains_on = probe.accelerator
    if cfg.data.device == "gpu" and not isinstance(trains_on, CUDAAccelerator):
        raise ConfigError(
            f"data.device: gpu, but the Trainer runs on {type(trains_on).__name__} "
            "(allowed: auto, cpu; or a GPU Trainer, e.g. trainer=gpu)"
        )
    if cfg.model.get("compile") and isinstance(trains_on, CPUAccelerator):
        check_cpp_compiler()
    return info


def check_config(cfg: DictConfig) -> None:
    """What holds for every task: no `_target_` outside what its section may build, no NaN or
    infinite number, every key known and within its schema's limits."""
    check_targets(cfg)
    check_finite(cfg)
    check_settings(cfg, "")


def meta_net(model: DictConfig, input_shape: tuple[int, int, int], classes: int) -> nn.Module:
    """The net `model` describes, on the meta device: shapes and parameters, no storage."""
    with torch.device("meta"):
        return models.build(model, input_shape, classes)


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
    check_config(cfg)
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


def check_stored_net(state: dict, source: str) -> tuple[DictConfig, dict]:
    """A checkpoint's net as cnnexp stored it (inference_facts and state_dict), checked as a
    config is before anything is built: a crafted file gets one line, never a traceback, a
    hang or an allocation this machine cannot make. Returns (the typed model config, facts)."""
    where = f"resume: checkpoint {source}"
    facts = state.get(INFERENCE_KEY)
    if not facts:
        raise ConfigError(
            f"{where} does not say how to apply its net (written before cnnexp stored that, or "
            "not by cnnexp; train the run again)"
        )
    if not (_is_facts(facts) and isinstance(state.get("state_dict"), dict)):
        raise ConfigError(
            f"{where} is not laid out as cnnexp writes checkpoints (allowed: a checkpoint that "
            "cnnexp wrote)"
        )
    shape, classes = tuple(facts["input_shape"]), len(facts["class_names"])
    try:
        schema = MODEL_SCHEMAS.get(facts["model"].get("kind"), MODEL_SCHEMAS["cnn"])
        typed = OmegaConf.create({"model": OmegaConf.structured(schema)})
        stored = OmegaConf.merge(typed, {"model": facts["model"]})  # its errors name model.*
        check_finite(stored)
        check_settings(stored.model, "model")
        model = stored.model
        need = footprint(meta_net(model, shape, classes), shape)
    except Exception as err:
        line = one_line(err)
        if line is None:
            raise
        raise ConfigError(f"{where} holds a net cnnexp refuses: {line}") from None
    if need.training_bytes(1) > free_memory():
        raise ConfigError(
            f"{where} holds a net of {need.params:,} parameters, too large for the "
            f"{free_memory() / 1e9:.1f} GB free here (allowed: a net that fits)"
        )
    return model, facts


def _is_facts(facts: Any) -> bool:
    """inference_facts' layout: model config, C×H×W, 2+ class names, mean/std per channel."""
    if not isinstance(facts, dict) or not isinstance(facts.get("model"), dict):
        return False
    shape, names = facts.get("input_shape"), facts.get("class_names")
    whole = isinstance(shape, list) and len(shape) == 3
    whole = whole and all(isinstance(v, int) and 1 <= v <= MAX_SIDE for v in shape)
    named = isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) for n in names)
    numbers = [facts.get("mean"), facts.get("std")]
    per_channel = whole and all(
        isinstance(v, list) and len(v) == shape[0] and all(_finite(x) for x in v) for v in numbers
    )
    return whole and named and per_channel


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _shape_text(shape: tuple[int, ...]) -> str:
    return "×".join(map(str, shape))


def _check_output_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"paths.output_dir: cannot create {path} ({err.strerror})") from None


def check_augment(specs: ListConfig, input_shape: tuple[int, ...]) -> None:
    """Each `data.augment` entry names a torchvision.transforms.v2 class and, built with its
    arguments, transforms a probe image of the data set's shape; together they keep the shape.
    The global RNG is left as it was (training draws the same numbers with or without this)."""
    with torch.random.fork_rng(devices=[]):
        x = torch.randint(0, 256, input_shape, dtype=torch.uint8)  # as batches hold them
        for i, spec in enumerate(plain(specs)):
            where = f"data.augment[{i}]"
            cls = check_arguments(spec, where)
            x = _applied(spec, where, cls, lambda t, x=x: t(x), augment.make_transform)
    if tuple(x.shape) != tuple(input_shape):
        raise ConfigError(
            f"data.augment: turns {_shape_text(input_shape)} images into {_shape_text(x.shape)} "
            f"(allowed: transforms that keep the shape, e.g. RandomCrop of size "
            f"{input_shape[-1]} with padding)"
        )


def check_callbacks(callbacks: DictConfig) -> None:
    """Each extra callback's arguments are its class's; a `monitor` names a metric the run
    logs (else ModelCheckpoint or EarlyStopping would fail at the first validation)."""
    for name, callback in callbacks.items():
        where = f"callbacks.{name}"
        check_arguments(callback, where)
        monitor = callback.get("monitor")
        if monitor is not None and monitor not in MONITORED:
            raise ConfigError(
                f"{where}.monitor: {monitor!r} is not a metric this run logs "
                f"(allowed: {', '.join(MONITORED)})"
            )


def check_schedule(cfg: DictConfig, info: data.DataInfo, probe: L.Trainer) -> None:
    """What Lightning checks only once fit runs, or never: a time limit that ends training
    before it starts, validation every k batches of an epoch shorter than k, and more CPU
    processes than cores."""
    from lightning.pytorch.accelerators import CPUAccelerator
    from lightning.pytorch.callbacks import Timer

    timer = next((c for c in probe.callbacks if isinstance(c, Timer)), None)
    if timer is not None and timer.time_remaining() <= 0:
        raise ConfigError(
            f"trainer.max_time: {plain(cfg.trainer.max_time)!r} ends training before it starts "
            "(allowed: a positive duration, e.g. 00:01:00:00 or {hours: 1})"
        )
    batches = training_batches(cfg, info, probe.world_size)
    every = cfg.trainer.val_check_interval
    validates = cfg.trainer.check_val_every_n_epoch is not None
    if isinstance(every, int) and not isinstance(every, bool) and validates and every > batches:
        raise ConfigError(
            f"trainer.val_check_interval: {every} is more than the {batches} training batches "
            f"of an epoch (allowed: 1..{batches}, a fraction of the epoch, or with "
            "trainer.check_val_every_n_epoch=null a count across epochs)"
        )
    cores = usable_cores()
    if isinstance(probe.accelerator, CPUAccelerator) and probe.num_devices > cores:
        raise ConfigError(
            f"trainer.devices: {probe.num_devices} CPU processes on {cores} cores "
            f"(allowed: 1..{cores})"
        )


def training_batches(cfg: DictConfig, info: data.DataInfo, world_size: int) -> int:
    """The training batches of one epoch of one process, as Lightning will count them."""
    images = math.ceil(training_images(plain(data.checks.typed(cfg.data)), info) / world_size)
    batches = math.ceil(images / cfg.data.batch_size)
    limit = cfg.trainer.overfit_batches or cfg.trainer.limit_train_batches
    if isinstance(limit, float):
        return max(1, int(batches * limit))
    return (
        min(batches, limit) if isinstance(limit, int) and not isinstance(limit, bool) else batches
    )


def check_fits(need: Footprint, cfg: DictConfig, info: data.DataInfo, probe: L.Trainer) -> None:
    """Training the net (weights, gradients, optimizer state, activations of a batch) fits into
    the memory of the device it trains on, once per process; ConfigError names the key that
    makes it too large: the widest block (or the architecture) when not even one image fits,
    else data.batch_size."""
    from lightning.pytorch.accelerators import CUDAAccelerator

    if isinstance(probe.accelerator, CUDAAccelerator):
        device = probe.strategy.root_device
        available, where = torch.cuda.mem_get_info(device)[0], f"GPU {device}"
    else:
        available, where = free_memory() // probe.num_devices, "this machine's memory"
    batch = cfg.data.batch_size
    if need.training_bytes(batch) <= available:
        return
    have = f"{where} has {available / 1e9:.1f} GB free"
    if need.training_bytes(1) > available:
        key = _widest(cfg.model, info.input_shape)
        raise ConfigError(
            f"{key}: the net has {need.params:,} parameters and needs "
            f"{need.training_bytes(1) / 1e9:,.1f} GB to train on one image; {have} "
            "(allowed: a smaller net)"
        )
    raise ConfigError(
        f"data.batch_size: {batch} images need {need.training_bytes(batch) / 1e9:,.1f} GB to "
        f"train this net; {have} (allowed: 1..{need.largest_batch(available)})"
    )


def _widest(model: DictConfig, input_shape: tuple[int, int, int]) -> str:
    """The key that sizes a net: model.arch, model.width when it scales the net up, else the
    `channels` of the widest conv block."""
    if model.kind != "cnn":
        return "model.arch"
    if model.width > 1:
        return "model.width"
    convs = [n for n in models.plan(model, input_shape).walk() if isinstance(n.block, Conv)]
    return f"{max(convs, key=lambda n: n.block.channels).path}.channels"


def check_optimization(cfg: DictConfig, net: nn.Module) -> None:
    """The optimizer and scheduler built for real on the net's (meta) parameters, the
    scheduler stepped a few epochs: torch's own range checks name the bad key."""
    params = list(net.parameters())
    optimizer_cls = check_arguments(cfg.optimizer, "optimizer", given_by_code=("params",))
    optimizer = _applied(cfg.optimizer, "optimizer", optimizer_cls, lambda f: f(params))
    if not cfg.scheduler:  # scheduler=none
        return
    scheduler_cls = check_arguments(cfg.scheduler, "scheduler", given_by_code=("optimizer",))

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
