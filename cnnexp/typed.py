"""The composed config as the schema's dataclasses, converted once.

Hydra composes a DictConfig; `typed_config` checks what holds for any value (no `???` left, no
`_target_` outside what its section may build, no NaN or infinite number), turns it into an
instance of cnnexp.schema.Config (model and data as their own schema's class, `model.blocks` as
parsed blocks) and checks every key's limits. Everything after it takes typed sections.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cnnexp.errors import ConfigError
from cnnexp.limits import check_finite, check_keys, check_settings, leaves
from cnnexp.models.graph import parse_blocks
from cnnexp.schema import DATA_SCHEMAS, MODEL_SCHEMAS, CnnModelConf, Config
from cnnexp.targets import check_targets


def typed_config(cfg: DictConfig) -> Config:
    """`cfg` as a checked Config; ConfigError names the first key that is wrong."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]}: no value given (set {missing[0]}=...)")
    check_keys(cfg)
    values = list(leaves(cfg))  # (dotted path, value): the tree walked once for both checks
    check_finite(values)
    check_targets(values)  # after the keys: a target under a key no schema has is never imported
    conf = OmegaConf.to_object(cfg)
    conf.data = typed_section("data", conf.data, data_schema(conf.data))
    conf.model = typed_section("model", conf.model, model_schema(conf.model))
    if not conf.logger.experiment_name:
        raise ConfigError("logger.experiment_name: empty (allowed: a non-empty name)")
    check_settings(conf)
    return conf


def typed_model(raw: dict) -> Any:
    """A model section given as plain data (a checkpoint stores one) as its checked schema."""
    model = typed_section("model", raw, model_schema(raw))
    check_settings(model, "model")
    return model


def typed_section(key: str, section: Any, schema: type) -> Any:
    """`section` as an instance of `schema` (a user's YAML may lack `defaults:`, a checkpoint
    holds plain data); a block graph's blocks parsed."""
    if not isinstance(section, schema):
        node = OmegaConf.merge({key: OmegaConf.structured(schema)}, {key: section})
        check_keys(node)
        check_finite(leaves(node))
        section = OmegaConf.to_object(node[key])
    if isinstance(section, CnnModelConf):
        section = dataclasses.replace(section, blocks=parse_blocks(section.blocks))
    return section


def data_schema(data: Any) -> type:
    """The schema of the data set `data` names; ConfigError for an unknown one, or a name that
    is not its schema's (set data=<name> to choose a data set)."""
    name = _get(data, "name")
    schema = type(data)
    if name not in DATA_SCHEMAS or (schema in DATA_SCHEMAS.values() and schema.name != name):
        raise ConfigError(
            f"data.name: {name!r} is not allowed; choose a data set with data=<name> "
            f"(allowed: {', '.join(DATA_SCHEMAS)})"
        )
    return DATA_SCHEMAS[name]


def model_schema(model: Any) -> type:
    kind = _get(model, "kind")
    if kind not in MODEL_SCHEMAS:
        raise ConfigError(
            f"model.kind: {kind!r} is not allowed (allowed: {', '.join(MODEL_SCHEMAS)})"
        )
    return MODEL_SCHEMAS[kind]


def _get(section: Any, key: str) -> Any:
    return section.get(key) if isinstance(section, dict) else getattr(section, key, None)
