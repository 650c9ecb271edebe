"""The typed schema: the trainer schema is exactly lightning.Trainer's signature, and every
preset of every group composes into its schema."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import lightning as L
import pytest

from cnnexp.schema import DATA_SCHEMAS, TRAINER_SET_BY_CNNEXP, TrainerConf
from tests.conftest import CONF, typed_cfg


def test_trainer_schema_is_lightnings_signature_with_its_defaults() -> None:
    signature = inspect.signature(L.Trainer).parameters
    expected = {n: p.default for n, p in signature.items() if n not in TRAINER_SET_BY_CNNEXP}
    fields = {f.name: f.default for f in dataclasses.fields(TrainerConf)}
    assert fields == expected


PRESETS = [f"{g}={p.stem}" for g in ("model", "data", "trainer") for p in (CONF / g).glob("*.yaml")]


@pytest.mark.parametrize("choice", sorted(PRESETS))
def test_every_preset_composes_into_its_schema(choice: str, tmp_path: Path) -> None:
    extra = ["data.path=/tmp"] if choice == "data=image_folder" else []
    cfg = typed_cfg(choice, *extra, f"paths.output_dir={tmp_path}")  # checks every setting
    assert isinstance(cfg.data, tuple(DATA_SCHEMAS.values()))
