"""What a config may instantiate: every `_target_` is checked before anything is called.

A config is data someone else may have written, and Hydra's `instantiate` calls whatever a
`_target_` names, nested ones too (a transform inside `v2.RandomApply(transforms=[...])`, an
argument of an optimizer). So before any section is instantiated, every `_target_` anywhere in
the config tree is resolved and must name a class of the base its section allows
(`ALLOWED_BASES`); anything else, a function like `os.system` included, is one line and nothing
is called. Resolving a dotted path imports its module, as Python's own `import` would.
"""

from __future__ import annotations

import inspect
import pydoc
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from omegaconf import DictConfig

from cnnexp.errors import ConfigError, join
from cnnexp.limits import check_mapping, plain

TARGET = "_target_"
# section -> (the class its targets must subclass, as a dotted path; an example for the line)
ALLOWED_BASES = {
    "data.augment": (
        "torchvision.transforms.v2.Transform",
        "torchvision.transforms.v2.RandomCrop, RandomHorizontalFlip, ColorJitter, RandAugment",
    ),
    "optimizer": ("torch.optim.Optimizer", "torch.optim.Adam"),
    "scheduler": ("torch.optim.lr_scheduler.LRScheduler", "torch.optim.lr_scheduler.StepLR"),
    "callbacks": ("lightning.pytorch.Callback", "lightning.pytorch.callbacks.EarlyStopping"),
}


def check_targets(values: Iterable[tuple[str, Any]]) -> None:
    """Raise ConfigError for the first `_target_` among a config's `values` (its `leaves`: the
    whole tree, nested too) that is not a class of its section's allowed base, or that sits in
    a section allowing none."""
    for where, target in find_targets(values):
        section = section_of(where)
        key = join(where, TARGET)
        if section is None:
            sections = ", ".join(ALLOWED_BASES)
            raise ConfigError(
                f"{key}: {target!r} is not allowed: nothing is built from this key "
                f"(allowed: _target_ only under {sections})"
            )
        target_class(target, key, section)


def section_of(where: str) -> str | None:
    """The section of ALLOWED_BASES that the path `where` lies in, or None: the items of
    data.augment and what they nest (`data.augment[0].transforms[1]`) lie in data.augment."""
    return next((s for s in ALLOWED_BASES if re.match(rf"{re.escape(s)}($|[.\[])", where)), None)


def find_targets(values: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    """(path of the mapping, its `_target_` value) for every mapping that has one."""
    for key, value in values:
        if key.rpartition(".")[2] == TARGET:
            yield key.removesuffix(TARGET).removesuffix("."), value


def target_class(target: Any, key: str, section: str) -> type:
    """The class `target` names, if it subclasses `section`'s allowed base; else ConfigError."""
    base_path, example = ALLOWED_BASES[section]
    try:
        found = pydoc.locate(str(target))  # None when nothing has that name
    except Exception:  # pydoc.ErrorDuringImport: the module itself failed to import
        found = None
    if found is None:
        raise ConfigError(
            f"{key}: cannot import {target!r} (allowed: a dotted path to a subclass of "
            f"{base_path}, e.g. {example})"
        ) from None
    if not (isinstance(found, type) and issubclass(found, pydoc.locate(base_path))):
        raise ConfigError(
            f"{key}: {target!r} is not allowed (allowed: a subclass of {base_path}, e.g. {example})"
        )
    return found


def check_arguments(
    section: DictConfig | Mapping, where: str, given_by_code: tuple[str, ...] = ()
) -> type:
    """A section `{_target_: Class, its arguments}` whose target `check_targets` allowed: the
    other keys must be arguments of the class's signature. Returns the class."""
    if not isinstance(section, DictConfig | Mapping) or TARGET not in section:
        shown = plain(section)
        raise ConfigError(
            f"{where}: {shown!r} is not allowed (allowed: {{_target_: a.dotted.Name, ...}})"
        )
    cls = pydoc.locate(section[TARGET])
    params = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        arguments = [k for k in section if not str(k).startswith("_")]  # values unresolved
        check_mapping(arguments, where, set(params) - set(given_by_code))
    return cls
