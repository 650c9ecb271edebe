"""Data: load a data set by name, split it (seeded, stratified), normalise, serve it from memory.

`build(cfg.data)` caches the prepared splits per process, so a multirun that reuses one data
config loads it once; batch size and augmentation do not take part in the cache key.
"""

from __future__ import annotations

import json
import logging
import time

from omegaconf import DictConfig

from cnnexp.config import plain
from cnnexp.data.augment import per_image
from cnnexp.data.checks import check, own_arguments, typed
from cnnexp.data.module import TensorDataModule
from cnnexp.data.sources import DATASETS, DataInfo
from cnnexp.data.splits import Splits, make_splits

__all__ = ["DATASETS", "DataInfo", "TensorDataModule", "build", "check"]

log = logging.getLogger(__name__)
_CACHE: dict[str, Splits] = {}
_CACHE_SIZE = 3  # prepared data sets kept per process (CIFAR-10 is ~0.7 GB as float32)


def build(cfg: DictConfig) -> TensorDataModule:
    """The TensorDataModule for a composed `cfg.data`; raises ConfigError for bad config."""
    check(cfg)
    data = plain(typed(cfg))
    splits = _prepared(data)
    augment = per_image(data["augment"], splits.mean, splits.std)
    return TensorDataModule(splits, data["batch_size"], augment)


def _prepared(data: dict) -> Splits:
    name = data["name"]
    key = json.dumps({k: v for k, v in data.items() if k not in ("batch_size", "augment")})
    if key in _CACHE:
        log.info("data %s: reused from cache", name)
        return _CACHE[key]
    start = time.perf_counter()
    splits = make_splits(DATASETS[name].load(**own_arguments(data)), data)
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))  # oldest first
    _CACHE[key] = splits
    sizes = "/".join(str(len(s[1])) for s in (splits.train, splits.val, splits.test))
    shape = "×".join(str(d) for d in splits.train[0].shape[1:])
    log.info(
        "data %s: loaded %s train/val/test images of %s, %d classes in %.1f s",
        name,
        sizes,
        shape,
        len(splits.class_names),
        time.perf_counter() - start,
    )
    return splits
