"""validate(cfg): the composed config as typed sections, once, after every mistake we can find
before data loads or a run opens, each as one ConfigError line naming the key.

Types, ranges and allowed values come from the schema (cnnexp/typed.py converts and checks
them); here the checks that need meaning: the data set's metadata, shapes through the net, the
memory it takes, and the optimizer, scheduler, transforms, callbacks and Trainer built on
probes (cnnexp/probes.py).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from cnnexp import data, models, probes
from cnnexp.data.sources import DataInfo
from cnnexp.errors import ConfigError
from cnnexp.models.footprint import footprint, meta_net
from cnnexp.schema import Config
from cnnexp.typed import typed_config


def validate(cfg: DictConfig) -> Config:
    """The checked, typed config of a training; ConfigError for the first problem found. Loads
    no data, allocates no weights (the net is built on the meta device), opens no run, and calls
    nothing a `_target_` names before every target was checked."""
    conf = typed_config(cfg)
    check_output_dir(Path(conf.paths.output_dir))
    info = data.check(conf.data)
    probes.check_augment(conf.data.augment, info.input_shape)
    probes.check_callbacks(conf.callbacks)
    probe = probes.check_trainer(conf.trainer)
    kind = models.kind(conf.model)
    kind.check(conf.model, info.input_shape)
    net = meta_net(conf.model, info.input_shape, len(info.class_names)) if kind.trains else None
    probes.check_schedule(conf, info, probe)
    if net is not None:
        probes.check_fits(footprint(net, info.input_shape), conf, info, probe)
        probes.check_optimization(conf, net)
    from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator

    trains_on = probe.accelerator
    if conf.data.device == "gpu" and not isinstance(trains_on, CUDAAccelerator):
        raise ConfigError(
            f"data.device: gpu, but the Trainer runs on {type(trains_on).__name__} "
            "(allowed: auto, cpu; or a GPU Trainer, e.g. trainer=gpu)"
        )
    if getattr(conf.model, "compile", False) and isinstance(trains_on, CPUAccelerator):
        probes.check_cpp_compiler()
    return conf


def validate_applying(cfg: DictConfig) -> tuple[Config, DataInfo | None]:
    """task=eval|predict, before any checkpoint, store or data is read: the typed config with
    resume= and predict.path given; eval: the Trainer and the data set's metadata."""
    conf = typed_config(cfg)
    if not conf.resume:
        raise ConfigError(
            f"resume: no value given (task={conf.task} needs resume=<run id or checkpoint file>)"
        )
    check_output_dir(Path(conf.paths.output_dir))
    if conf.task == "predict":
        if not conf.predict.path:
            raise ConfigError(
                "predict.path: no value given (set predict.path=<folder of images or one image>)"
            )
        return conf, None
    probes.check_trainer(conf.trainer)
    return conf, data.check(conf.data)


def check_applies(conf: Config, trained: dict, source: str, info: DataInfo) -> None:
    """Eval's data set (`info`) has the input shape and class count of the trained net
    (`trained`: a checkpoint's inference facts)."""
    shape, classes = tuple(trained["input_shape"]), len(trained["class_names"])
    if (tuple(info.input_shape), len(info.class_names)) != (shape, classes):
        text = probes.shape_text
        raise ConfigError(
            f"data: {conf.data.name} has {text(info.input_shape)} images of "
            f"{len(info.class_names)} classes, the net in {source} takes {text(shape)} "
            f"images of {classes} classes (allowed: a data set of that shape and class count)"
        )


def check_output_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"paths.output_dir: cannot create {path} ({err.strerror})") from None
