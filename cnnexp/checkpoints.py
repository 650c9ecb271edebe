"""Checkpoints are input too: loaded with weights_only=True only (tensors and plain data, so a
crafted file cannot run code), and the net one describes checked like a config before anything
is built from it."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch

from cnnexp import models
from cnnexp.data.sources import free_memory
from cnnexp.errors import ConfigError, one_line
from cnnexp.models.classifier import INFERENCE_KEY, RUN_ID_KEY
from cnnexp.models.footprint import footprint, meta_net
from cnnexp.typed import typed_model

MAX_SIDE = 100_000  # pixels and channels of a stored input shape cnnexp accepts


def read_checkpoint(path: Path) -> dict:
    """A checkpoint's contents, loaded with weights_only=True (tensors and plain data only)."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (any file: the unpickler raises what its bytes make
        # it raise, IndexError and KeyError included)
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        refused = [line for line in lines if line.startswith("Unsupported")]  # torch's reason
        why = (refused or lines or [type(err).__name__])[0][:200]
        raise ConfigError(
            f"resume: {path} is not a checkpoint that loads safely with weights_only=True ({why})"
        ) from None
    if not isinstance(state, dict) or not state.get(RUN_ID_KEY):
        raise ConfigError(f"resume: checkpoint {path} names no MLflow run (not written by cnnexp)")
    return state


def check_stored_net(state: dict, source: str) -> tuple[Any, dict]:
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
        model = typed_model(facts["model"])
        models.kind(model).check(model, shape)
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
