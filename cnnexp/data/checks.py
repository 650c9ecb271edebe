"""`check(cfg.data)`: every data-config mistake as a one-line ConfigError, before any data loads."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cnnexp.config import ConfigError, check_keys, one_of
from cnnexp.data.shapes import SHAPES
from cnnexp.data.sources import DATASETS, OFFICIAL_TEST

COMMON_KEYS = (
    "name",
    "batch_size",
    "split_seed",
    "val_fraction",
    "test_fraction",
    "train_size",
    "normalize",
    "augment",
)
AUGMENT_KEYS = ("enabled", "degrees", "translate", "scale")


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _fraction(v: Any) -> bool:
    return _number(v) and 0 < v < 1


def _shape_names(v: Any) -> bool:
    return isinstance(v, list) and 0 < len(v) == len(set(v)) and all(s in SHAPES for s in v)


def _train_size(v: Any) -> bool:
    return v is None or (_int(v) and v > 0) or (isinstance(v, float) and 0 < v <= 1)


RULES: dict[str, tuple[Callable[[Any], bool], str]] = {  # key -> (test, what is allowed)
    "batch_size": (lambda v: _int(v) and v > 0, "an integer > 0"),
    "split_seed": (_int, "an integer"),
    "val_fraction": (_fraction, "a number in (0, 1)"),
    "train_size": (_train_size, "null, an integer > 0 or a fraction in (0, 1]"),
    "root": (lambda v: isinstance(v, str) and v != "", "a directory path"),
    "download": (lambda v: isinstance(v, bool), "true or false"),
    "verify": (lambda v: isinstance(v, bool), "true or false"),
    "n_samples": (lambda v: _int(v) and v > 0, "an integer > 0"),
    "image_size": (lambda v: _int(v) and v >= 4, "an integer >= 4"),
    "classes": (_shape_names, f"a list of distinct names from {', '.join(sorted(SHAPES))}"),
    "generator_seed": (_int, "an integer"),
    "noise": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "path": (lambda v: Path(str(v)).is_dir(), "an existing folder with one subfolder per class"),
    "channels": (lambda v: v in (1, 3), "1 or 3"),
}


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"data.{key}: {value!r} is not allowed (allowed: {allowed})")


def check(cfg: DictConfig) -> None:
    """Raise ConfigError for a bad data config, without loading data (keys, values, paths)."""
    name = one_of(cfg.get("name"), "data.name", DATASETS)
    own_keys = list(inspect.signature(DATASETS[name]).parameters)
    check_keys(cfg, "data", [*COMMON_KEYS, *own_keys])
    missing = [key for key in cfg if OmegaConf.is_missing(cfg, key)]  # left as ??? in the YAML
    if missing:
        raise ConfigError(f"data.{missing[0]}: no value given (set data.{missing[0]}=...)")
    data = OmegaConf.to_container(cfg, resolve=True)
    _need(data, [*COMMON_KEYS, *own_keys], "data")
    for key, (test, allowed) in RULES.items():
        if key in data:
            _require(test(data[key]), key, data[key], allowed)
    _check_test_fraction(name, data["val_fraction"], data["test_fraction"])
    _check_normalize(data["normalize"])
    _check_augment(data["augment"])


def _need(section: dict, keys: list[str], where: str) -> None:
    for key in keys:
        if key not in section:
            raise ConfigError(f"{where}.{key}: missing (add it to the data config)")


def _check_test_fraction(name: str, val: float, test: float | None) -> None:
    if name in OFFICIAL_TEST:
        _require(test is None, "test_fraction", test, f"null: {name} has an official test split")
        return
    _require(_fraction(test), "test_fraction", test, "a number in (0, 1)")
    if val + test >= 1:
        raise ConfigError(
            f"data.test_fraction: {test} with data.val_fraction {val} leaves no training set "
            "(allowed: val_fraction + test_fraction < 1)"
        )


def _check_normalize(norm: Any) -> None:
    if norm in ("auto", "none"):
        return
    allowed = "auto, none or {mean: [...], std: [...]} with one number per channel"
    _require(isinstance(norm, dict), "normalize", norm, allowed)
    check_keys(norm, "data.normalize", ["mean", "std"])
    mean, std = norm.get("mean"), norm.get("std")
    for key, values in (("mean", mean), ("std", std)):
        ok = isinstance(values, list) and len(values) > 0 and all(_number(v) for v in values)
        _require(ok, f"normalize.{key}", values, "a non-empty list of numbers")
    _require(len(std) == len(mean), "normalize.std", std, "as many values as normalize.mean")
    _require(all(s > 0 for s in std), "normalize.std", std, "numbers > 0")


def _check_augment(aug: Any) -> None:
    _require(isinstance(aug, dict), "augment", aug, "{enabled, degrees, translate, scale}")
    check_keys(aug, "data.augment", AUGMENT_KEYS)
    _need(aug, list(AUGMENT_KEYS), "data.augment")
    _require(isinstance(aug["enabled"], bool), "augment.enabled", aug["enabled"], "true or false")
    degrees, translate, scale = aug["degrees"], aug["translate"], aug["scale"]
    _require(_number(degrees) and 0 <= degrees <= 180, "augment.degrees", degrees, "0..180")
    _require(_number(translate) and 0 <= translate < 1, "augment.translate", translate, "[0, 1)")
    pair = isinstance(scale, list) and len(scale) == 2 and all(_number(s) for s in scale)
    ok = pair and 0 < scale[0] <= scale[1]
    _require(ok, "augment.scale", scale, "[low, high] with 0 < low <= high")
