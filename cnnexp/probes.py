"""What the config names, built for real on probes before any run opens, so torch's and
Lightning's own checks speak: the optimizer and scheduler on the net's (meta) parameters, the
transforms on a probe image, the Trainer with nothing to log; and what they check only once
training runs (or never): schedule, monitors, memory, cores.

A probe that fails blames the key whose default (from the target's signature) makes it pass.
"""

from __future__ import annotations

import inspect
import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import torch
from hydra.utils import instantiate
from torch import nn

from cnnexp import models
from cnnexp.data import augment
from cnnexp.data.checks import usable_cores
from cnnexp.data.sources import DataInfo, free_memory
from cnnexp.errors import ConfigError, first_line
from cnnexp.models.classifier import MONITORED
from cnnexp.models.footprint import Footprint
from cnnexp.schema import Config, TrainerConf
from cnnexp.targets import check_arguments

if TYPE_CHECKING:
    import lightning as L

PROBE_EPOCHS = 3  # scheduler steps tried: T_max=0 or step_size=0 fail at the first one


def check_augment(specs: list[dict], input_shape: tuple[int, ...]) -> None:
    """Each `data.augment` entry, built with its arguments, transforms a probe image of the
    data set's shape; together they keep the shape. The global RNG is left as it was (training
    draws the same numbers with or without this)."""
    with torch.random.fork_rng(devices=[]):
        x = torch.randint(0, 256, input_shape, dtype=torch.uint8)  # as batches hold them
        for i, spec in enumerate(specs):
            where = f"data.augment[{i}]"
            cls = check_arguments(spec, where)
            x = _applied(spec, where, cls, lambda t, x=x: t(x), augment.make_transform)
    if tuple(x.shape) != tuple(input_shape):
        raise ConfigError(
            f"data.augment: turns {shape_text(input_shape)} images into {shape_text(x.shape)} "
            f"(allowed: transforms that keep the shape, e.g. RandomCrop of size "
            f"{input_shape[-1]} with padding)"
        )


def check_callbacks(callbacks: dict[str, dict]) -> None:
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


def check_optimization(conf: Config, net: nn.Module) -> None:
    """The optimizer and scheduler built for real on the net's (meta) parameters, the
    scheduler stepped a few epochs: torch's own range checks name the bad key."""
    params = list(net.parameters())
    optimizer_cls = check_arguments(conf.optimizer, "optimizer", given_by_code=("params",))
    optimizer = _applied(conf.optimizer, "optimizer", optimizer_cls, lambda f: f(params))
    if not conf.scheduler:  # scheduler=none
        return
    scheduler_cls = check_arguments(conf.scheduler, "scheduler", given_by_code=("optimizer",))

    def stepped(factory: Callable) -> None:
        scheduler = factory(optimizer)
        for _ in range(PROBE_EPOCHS):
            scheduler.step()

    with warnings.catch_warnings():  # stepping before optimizer.step() warns
        warnings.simplefilter("ignore")
        _applied(conf.scheduler, "scheduler", scheduler_cls, stepped)


def check_trainer(trainer: TrainerConf) -> L.Trainer:
    """Lightning's own checks of the Trainer arguments, on a probe Trainer that logs nothing
    (returned); and no strategy that forks or spawns its workers (ddp_spawn, ddp_fork,
    ddp_notebook)."""
    import lightning as L
    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    quiet = logging.getLogger("lightning.pytorch")
    level, quiet.level = quiet.level, logging.ERROR
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probe = _applied(
                asdict(trainer),
                "trainer",
                L.Trainer,
                lambda make: make(logger=False, callbacks=[], enable_checkpointing=False),
                instantiate_with=lambda spec: _partial(L.Trainer, spec),
            )
    finally:
        quiet.level = level
    if isinstance(probe.strategy.launcher, _MultiProcessingLauncher):
        raise ConfigError(
            f"trainer.strategy: {trainer.strategy!r} starts its workers from inside this process, "
            "where the run's recording (its MLflow client, analysis callbacks, checkpoints) cannot "
            "follow them (allowed: ddp, which starts one process per device and is tested here; "
            "or one device)"
        )
    return probe


def check_schedule(conf: Config, info: DataInfo, probe: L.Trainer) -> None:
    """What Lightning checks only once fit runs, or never: a time limit that ends training
    before it starts, validation every k batches of an epoch shorter than k, and more CPU
    processes than cores."""
    from lightning.pytorch.accelerators import CPUAccelerator
    from lightning.pytorch.callbacks import Timer

    timer = next((c for c in probe.callbacks if isinstance(c, Timer)), None)
    if timer is not None and timer.time_remaining() <= 0:
        raise ConfigError(
            f"trainer.max_time: {conf.trainer.max_time!r} ends training before it starts "
            "(allowed: a positive duration, e.g. 00:01:00:00 or {hours: 1})"
        )
    batches = training_batches(conf, info, probe.world_size)
    every = conf.trainer.val_check_interval
    validates = conf.trainer.check_val_every_n_epoch is not None
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


def training_batches(conf: Config, info: DataInfo, world_size: int) -> int:
    """The training batches of one epoch of one process, as Lightning will count them."""
    images = math.ceil(info.n_train / world_size)  # data.check counted them
    batches = math.ceil(images / conf.data.batch_size)
    limit = conf.trainer.overfit_batches or conf.trainer.limit_train_batches
    if isinstance(limit, float):
        return max(1, int(batches * limit))
    whole = isinstance(limit, int) and not isinstance(limit, bool)
    return min(batches, limit) if whole else batches


def check_fits(need: Footprint, conf: Config, info: DataInfo, probe: L.Trainer) -> None:
    """Training the net (weights, gradients, optimizer state, activations of a batch) fits into
    the memory of the device it trains on, once per process."""
    from lightning.pytorch.accelerators import CUDAAccelerator

    if isinstance(probe.accelerator, CUDAAccelerator):
        device = probe.strategy.root_device
        available, where = torch.cuda.mem_get_info(device)[0], f"GPU {device}"
    else:
        available, where = free_memory() // probe.num_devices, "this machine's memory"
    fits(need, conf.model, info.input_shape, conf.data.batch_size, available, where)


def fits(
    need: Footprint, model: Any, input_shape: tuple, batch: int, available: int, where: str
) -> None:
    """ConfigError unless training `need` on batches of `batch` fits in `available` bytes,
    naming the key that makes it too large: the widest block (or the architecture) when not
    even one image fits, else data.batch_size."""
    if need.training_bytes(batch) <= available:
        return
    have = f"{where} has {available / 1e9:.1f} GB free"
    if need.training_bytes(1) > available:
        key = models.kind(model).size_key(model, input_shape)
        raise ConfigError(
            f"{key}: the net has {need.params:,} parameters and needs "
            f"{need.training_bytes(1) / 1e9:,.1f} GB to train on one image; {have} "
            "(allowed: a smaller net)"
        )
    raise ConfigError(
        f"data.batch_size: {batch} images need {need.training_bytes(batch) / 1e9:,.1f} GB to "
        f"train this net; {have} (allowed: 1..{need.largest_batch(available)})"
    )


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


def shape_text(shape: tuple[int, ...]) -> str:
    return "×".join(map(str, shape))


def _partial(cls: Callable, spec: dict) -> Callable:
    return lambda **more: cls(**{**spec, **more})


def _applied(
    spec: dict,
    where: str,
    target: Callable,
    use: Callable[[Callable], Any],
    instantiate_with: Callable[[dict], Callable] | None = None,
) -> Any:
    """use(factory) for the section `spec`; on failure, blame the first key whose default (from
    the target's signature) makes it pass, else the one key holding an integer <= 0 (a step size
    or period of 0 divides by zero), else the section."""
    make = instantiate_with or instantiate
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
