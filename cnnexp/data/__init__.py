"""Data: load a data set by name as uint8 images, split it (seeded, stratified), serve batches
that are normalised (and augmented) on the device they train on.

`build(conf.data)` caches the prepared splits per process, so a multirun that reuses one data
config loads it once; batch size, augmentation, workers and device do not take part in the key,
a folder's files do (a notebook that changes them between runs gets the new images).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

from cnnexp.data.augment import per_image
from cnnexp.data.checks import check
from cnnexp.data.images import Images
from cnnexp.data.module import TensorDataModule
from cnnexp.data.sources import DATASETS, DataInfo
from cnnexp.data.splits import Splits, make_splits
from cnnexp.schema import DataConf

__all__ = ["DATASETS", "DataInfo", "Images", "TensorDataModule", "build", "check"]

log = logging.getLogger(__name__)
_CACHE: dict[str, Splits] = {}
_CACHE_SIZE = 3  # prepared data sets kept per process (CIFAR-10 is 184 MB as uint8)
SERVING_KEYS = ("batch_size", "augment", "num_workers", "device")  # not part of the data


def build(data: DataConf) -> TensorDataModule:
    """The TensorDataModule for a typed, checked `data` section."""
    splits = _prepared(data)
    augment = per_image(data.augment)
    return TensorDataModule(splits, data.batch_size, augment, data.num_workers, data.device)


def _prepared(data: DataConf) -> Splits:
    name, source = data.name, DATASETS[data.name]
    key = json.dumps(
        {k: v for k, v in dataclasses.asdict(data).items() if k not in SERVING_KEYS}
        | {"version": source.version(data) if source.version else None}
    )
    if key in _CACHE:
        log.info("data %s: reused from cache", name)
        return _CACHE[key]
    start = time.perf_counter()
    splits = make_splits(source.load(**source.arguments(data)), data)
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))  # oldest first
    _CACHE[key] = splits
    sizes = "/".join(str(len(s[1])) for s in (splits.train, splits.val, splits.test))
    shape = "×".join(str(d) for d in splits.train[0].shape[1:])
    held = "in memory" if splits.train[0].in_memory else "on disk, read per batch"
    log.info(
        "data %s: %s train/val/test uint8 images of %s, %d classes, %s; ready in %.1f s",
        name,
        sizes,
        shape,
        len(splits.class_names),
        held,
        time.perf_counter() - start,
    )
    return splits
