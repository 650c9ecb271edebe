"""Config plumbing shared by every step: the user-facing error type, Hydra resolvers, validation."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A mistake in the user's config or environment: shown as one line, never a traceback."""


def repo_root() -> Path:
    """The checkout that holds conf/ (editable install), else the working directory."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "conf").is_dir() else Path.cwd()


def register_resolvers() -> None:
    """${repo_root:} and ${uid:} for conf/; safe to call more than once."""
    if not OmegaConf.has_resolver("repo_root"):
        OmegaConf.register_new_resolver("repo_root", lambda: str(repo_root()))
    if not OmegaConf.has_resolver("uid"):  # unique per process: jobs started in one second differ
        OmegaConf.register_new_resolver(
            "uid", lambda: f"{os.getpid()}-{uuid.uuid4().hex[:4]}", use_cache=True
        )


def check_keys(section: DictConfig | dict, where: str, allowed: Iterable[str]) -> None:
    """Raise ConfigError naming the first key of `section` that is not in `allowed`."""
    allowed = sorted(allowed)
    for key in section:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}: unknown key (allowed: {', '.join(allowed)})")


def one_of(value: object, where: str, allowed: Iterable[str]) -> str:
    """Return `value` if it names one of `allowed`, else raise a ConfigError listing them."""
    allowed = sorted(allowed)
    if value not in allowed:
        raise ConfigError(f"{where}: unknown value {value!r} (allowed: {', '.join(allowed)})")
    return str(value)
