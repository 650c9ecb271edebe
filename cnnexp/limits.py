"""A key's limits, said once as field metadata of the typed schema (`setting(default, ge=1)`),
and the one checker that enforces them; the other checks every config value passes (known key,
finite number) and the walk over a config tree they share.

The keys, types and defaults themselves live in cnnexp/schema.py.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import UnionType
from typing import Any, Union, get_args, get_origin

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from cnnexp.errors import ConfigError, closest, join, unknown_key


def setting(
    default: Any = dataclasses.MISSING,
    *,
    factory: Any = None,
    **bounds: Any,
) -> Any:
    """A dataclass field whose value must lie within `bounds` (see `limits`), checked by
    `check_settings`; `factory` makes a fresh list/dict default per instance."""
    meta = limits(**bounds)
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def limits(
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Sequence[Any] | None = None,
    also: Sequence[Any] | None = None,
    share: bool = False,
) -> dict[str, Any]:
    """A key's limits as field metadata: a range (ge, gt, le, lt) or `choices`; `also`: values
    allowed outside the range (-1 for "no limit"); `share`: a float is a share of the whole, in
    the range and at most 1 (an integer is a count in the range)."""
    given = {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "also": also}
    return {k: v for k, v in given.items() if v is not None} | ({"share": True} if share else {})


_BOUNDS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b)}
_BOUNDS |= {"le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}


def allowed_text(field: dataclasses.Field) -> str:
    """What a field accepts, in words: 'an integer >= 1', 'one of: relu, tanh', 'true or false'."""
    meta, kind = field.metadata, _base_type(field.type)
    if "choices" in meta:
        return ", ".join(_yaml_text(c) for c in meta["choices"])
    noun = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    bounds = " and ".join(f"{sign} {meta[k]}" for k, (sign, _) in _BOUNDS.items() if k in meta)
    kind = int if meta.get("share") else float if kind is Any and bounds else kind
    text = f"{noun.get(kind, 'a value')} {bounds}".strip()
    if meta.get("share"):
        text += f", or a fraction {bounds} and <= 1"
    extra = [_yaml_text(v) for v in meta.get("also", ())] + (
        ["null"] if _optional(field.type) else []
    )
    return f"{text}, or {' or '.join(extra)}" if extra else text


def check_keys(node: DictConfig, where: str = "") -> None:
    """Every key of a typed config node (recursively) is a field of its schema: OmegaConf lets
    `+key=` add one that converting to the schema's class would silently drop."""
    cls = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(cls):
        fields = {f.name for f in dataclasses.fields(cls)}
        for key in node:
            if key not in fields:
                raise unknown_key(where, key, fields)
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            check_keys(child, join(where, key))


def check_settings(obj: Any, where: str = "") -> None:
    """Every field of a schema instance (recursively) lies in its range/choices; raise
    ConfigError naming the first key that does not."""
    for field in dataclasses.fields(obj):
        key, value = join(where, field.name), getattr(obj, field.name)
        if dataclasses.is_dataclass(value):
            check_settings(value, key)
        else:
            check_value(value, field, key)


def check_value(value: Any, field: dataclasses.Field, key: str) -> None:
    """ConfigError unless `value` lies in `field`'s range/choices (a close choice suggested)."""
    if _within(value, field.metadata):
        return
    choices = [str(c) for c in field.metadata.get("choices", ())]
    close = closest(value, choices)
    hint = f"did you mean {close!r}?; " if close and isinstance(value, str) else ""
    raise ConfigError(
        f"{key}: {_show(value)} is not allowed ({hint}allowed: {allowed_text(field)})"
    )


def from_mapping(cls: type, raw: Mapping, where: str) -> Any:
    """An instance of dataclass `cls` from a plain mapping (e.g. one YAML block): unknown keys,
    missing required keys, simple types and `setting` ranges checked; ConfigError names the key."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    check_mapping(raw, where, fields)
    for name, field in fields.items():
        key = join(where, name)
        required = (
            field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        )
        if name not in raw:
            if required:
                raise ConfigError(f"{key}: missing (allowed: {allowed_text(field)})")
            continue
        value = raw[name]
        if not _has_type(value, field.type):
            raise ConfigError(
                f"{key}: {_show(value)} is not allowed (allowed: {allowed_text(field)})"
            )
        check_value(value, field, key)
    return cls(**raw)


def check_mapping(raw: Mapping, where: str, allowed: Iterable[str]) -> None:
    """Raise ConfigError (with a did-you-mean) for the first key of `raw` not in `allowed`."""
    allowed = list(allowed)
    for key in raw:
        if key not in allowed:
            raise unknown_key(where, key, allowed)


def one_of(value: object, where: str, allowed: Iterable[str]) -> str:
    """Return `value` if it names one of `allowed`, else raise a ConfigError listing them."""
    allowed = sorted(allowed)
    if value not in allowed:
        close = closest(value, allowed)
        hint = f"did you mean {close!r}?; " if close else ""
        raise ConfigError(f"{where}: unknown value {value!r} ({hint}allowed: {', '.join(allowed)})")
    return str(value)


def plain(node: Any) -> Any:
    """A config node as plain Python (dicts, lists, values), interpolations resolved."""
    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _within(value: Any, meta: Mapping[str, Any]) -> bool:
    if value is None:
        return True  # the type (Optional or not) was checked by OmegaConf already
    if "choices" in meta:
        values = value if isinstance(value, ListConfig | list) else [value]
        return all(_chosen(v, meta["choices"]) for v in values)
    if _chosen(value, meta.get("also", ())):
        return True
    bounds = [(check, meta[k]) for k, (_, check) in _BOUNDS.items() if k in meta]
    if bounds and (isinstance(value, bool) or not isinstance(value, int | float)):
        return False
    if meta.get("share") and isinstance(value, float) and not value <= 1:
        return False
    return all(check(value, bound) for check, bound in bounds)


def check_finite(values: Iterable[tuple[str, Any]]) -> None:
    """No number among a config's `values` (its `leaves`) is NaN or infinite: torch and
    Lightning accept most of them, and a run would train on garbage (lr=inf) or not at all
    (gamma=nan)."""
    for key, value in values:
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}: {value} is not allowed (allowed: a finite number)")


def leaves(node: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, value) of every value in a config tree, list items as `path[i]`,
    interpolations resolved; a value that is missing (`???`) or cannot be resolved yet
    (`${hydra:...}` outside a job) is skipped: nothing can use it either."""
    if isinstance(node, DictConfig | ListConfig):
        keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
        for key in keys:
            if OmegaConf.is_missing(node, key):  # `???`: check_settings names it
                continue
            try:
                value = node[key]
            except InterpolationResolutionError:
                continue
            yield from leaves(
                value, join(where, key) if isinstance(key, str) else f"{where}[{key}]"
            )
    else:
        yield where, node


def _has_type(value: Any, tp: Any) -> bool:
    if value is None:
        return _optional(tp) or tp is Any
    kind = _base_type(tp)
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return not isinstance(kind, type) or isinstance(value, kind)


def _optional(tp: Any) -> bool:
    return get_origin(tp) in (Union, UnionType) and type(None) in get_args(tp)


def _base_type(tp: Any) -> Any:
    if _optional(tp):
        rest = [a for a in get_args(tp) if a is not type(None)]
        return rest[0] if len(rest) == 1 else Any
    return tp


def _chosen(value: Any, choices: Sequence[Any]) -> bool:
    """`value` is one of `choices`; true and false are not 1 and 0."""
    return any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in choices)


def _yaml_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _show(value: Any) -> str:
    return repr(plain(value))
