"""`check(conf.data)`: data-config mistakes that need meaning, before any data loads.

Keys, types and ranges are the schema's (cnnexp/schema.py, checked by cnnexp/typed.py); here:
fractions that leave every split non-empty, `train_size`, `normalize`,
and each synthetic set's own layout. Returns the data set's metadata. (`data.augment` is
checked in cnnexp/probes.py, which builds its transforms for real.)
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import torch

from cnnexp.data.shapes import SHAPES, check_pair_layout
from cnnexp.data.sources import DATASETS, DataInfo, free_memory
from cnnexp.errors import ConfigError
from cnnexp.schema import DataConf


def check(data: DataConf) -> DataInfo:
    """Raise ConfigError for a bad (typed) data config; return the data set's metadata. Loads
    nothing."""
    if data.name == "shapes":
        _require(_distinct_shapes(data.classes, 2), "classes", data.classes, _SHAPE_TEXT)
    if data.name == "shapes_pair":
        check_pair_layout(data.marks, data.mark_size, data.distance, data.image_size)
    info = DATASETS[data.name].info(data)
    _check_placement(data)
    _check_fractions(data, info)
    _check_normalize(data.normalize, info.input_shape[0])
    _check_machine(data, info)
    return dataclasses.replace(info, n_train=training_images(data, info))


def usable_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _check_machine(data: DataConf, info: DataInfo) -> None:
    """What this machine can hold and run: every worker is a process with its own copy of torch
    (hundreds of MB), and a set held whole must fit into the memory free now."""
    most = 2 * usable_cores()
    _require(
        data.num_workers <= most,
        "num_workers",
        data.num_workers,
        f"0..{most}, two per CPU core here",
    )
    source = DATASETS[data.name]
    if source.streams and data.in_memory is not True:
        return  # too large a set stays on disk (data.in_memory=auto)
    size, free = info.n_images * math.prod(info.input_shape), free_memory()
    if size > free:
        key = "in_memory" if source.streams else next(k for k in SIZE_KEYS if hasattr(data, k))
        raise ConfigError(
            f"data.{key}: {getattr(data, key)} needs {size / 1e9:.1f} GB of uint8 images in "
            f"memory, {free / 1e9:.1f} GB are free (allowed: a data set that fits"
            + (", or false: read from disk per batch)" if source.streams else ")")
        )


SIZE_KEYS = ("n_samples", "image_size", "train_size")  # the first a data set has is named
_SHAPE_TEXT = f"a list of 2+ distinct names from {', '.join(sorted(SHAPES))}"


def _distinct_shapes(names: list, least: int) -> bool:
    return len(names) >= least and len(set(names)) == len(names) and set(names) <= set(SHAPES)


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"data.{key}: {value!r} is not allowed (allowed: {allowed})")


def _check_placement(data: DataConf) -> None:
    """Only a data set read image by image can stay on disk; data.device=gpu needs CUDA."""
    if data.in_memory is False and not DATASETS[data.name].streams:
        streaming = ", ".join(name for name, source in DATASETS.items() if source.streams)
        whole = f"auto or true; {data.name} loads whole, false is for {streaming}"
        _require(False, "in_memory", False, whole)
    if data.device == "gpu":
        _require(torch.cuda.is_available(), "device", "gpu", "auto or cpu: no CUDA device seen")
        on_disk = "auto or cpu with data.in_memory=false"
        _require(data.in_memory is not False, "device", "gpu", on_disk)


def training_images(data: DataConf, info: DataInfo) -> int:
    """How many images the training split holds (as cnnexp/data/splits.py cuts it)."""
    n, val, test = info.n_images, data.val_fraction, data.test_fraction
    n_train = n - round(val * n) - (round(test * n) if test is not None else 0)
    size = data.train_size
    if size is None:
        return n_train
    return size if isinstance(size, int) else max(1, round(size * n_train))


def _check_fractions(data: DataConf, info: DataInfo) -> None:
    """Every split gets at least one image per class; train_size fits the training split."""
    val, test, classes = data.val_fraction, data.test_fraction, len(info.class_names)
    if test is None and not info.official_test:
        _require(False, "test_fraction", None, f"a number in (0, 1): {data.name} has no test set")
    if test is not None and val + test >= 1:
        raise ConfigError(
            f"data.test_fraction: {test} with data.val_fraction {val} leaves no training set "
            "(allowed: val_fraction + test_fraction < 1)"
        )
    n = info.n_images
    for key, share in (("val_fraction", val), ("test_fraction", test)):
        if share is not None and round(share * n) < classes:
            _require(False, key, share, f"a share of the {n} images holding >= {classes} images")
    n_train = n - round(val * n) - (round(test * n) if test is not None else 0)
    size = data.train_size
    whole = isinstance(size, int) and not isinstance(size, bool) and 1 <= size <= n_train
    share = isinstance(size, float) and 0 < size <= 1
    allowed = f"null, an integer in 1..{n_train} (the training images) or a fraction in (0, 1]"
    _require(size is None or whole or share, "train_size", size, allowed)


def _check_normalize(norm: Any, channels: int) -> None:
    if norm in ("auto", "none"):
        return
    allowed = f"auto, none or {{mean: [...], std: [...]}} with {channels} number(s) each"
    _require(isinstance(norm, dict) and set(norm) == {"mean", "std"}, "normalize", norm, allowed)
    for key in ("mean", "std"):
        values = norm[key]
        numbers = isinstance(values, list) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values
        )
        _require(numbers and len(values) == channels, f"normalize.{key}", values, allowed)
    _require(all(s > 0 for s in norm["std"]), "normalize.std", norm["std"], "numbers > 0")
