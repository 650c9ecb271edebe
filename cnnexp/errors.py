"""Every user mistake as one line `<key>: <what was wrong> (allowed: …)`, every run stopped from
outside (a diverged loss, a full disk, a tracking server gone) as one line saying how to go on.

`one_line(err)` turns our ConfigError and RunStopped, and what Hydra, OmegaConf and the OS raise
while composing the config or creating the job's output folder, into that line; anything else is
a bug (None). `exit_code(err)`: 2 for a mistake in the input, 1 for a run that stopped.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import re
import shutil
import traceback
from collections.abc import Iterable
from pathlib import Path

from hydra.errors import MissingConfigException, OverrideParseException, SearchPathException
from omegaconf import ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A mistake in the user's config or environment: shown as one line, never a traceback."""


def join(where: str, key: object) -> str:
    """The dotted name of `key` inside `where` ('' is the root)."""
    return f"{where}.{key}" if where else str(key)


def closest(value: object, names: Iterable[str]) -> str | None:
    """The one of `names` a typo of `value` most likely meant, if any is close enough: the
    'did you mean' of every one-line refusal."""
    close = difflib.get_close_matches(str(value), list(names), n=1, cutoff=0.6)
    return close[0] if close else None


def unknown_key(where: str, key: str, allowed: Iterable[str]) -> ConfigError:
    """'x.key: unknown key (did you mean x.k?; allowed: ...)'."""
    names = sorted(str(a) for a in allowed if not str(a).startswith("_"))
    close = closest(key, names)
    hint = f"did you mean {join(where, close)}?; " if close else ""
    return ConfigError(f"{join(where, key)}: unknown key ({hint}allowed: {', '.join(names)})")


_TYPE_WORDS = {"Integer": "an integer", "Float": "a number", "bool": "true or false"}
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
NO_SPACE_TEXTS = ("No space left on device", "database or disk is full", "file write failed")


class RunStopped(Exception):
    """A run stopped by something outside the code and the config (a diverged loss, a full
    disk, a tracking server that stopped answering): str() is the one line, saying what became
    of the run and how to continue it."""


class DiskFull(RunStopped):
    """A write found no space left on its device."""


def one_line(err: BaseException) -> str | None:
    """The one line for a user mistake or a stopped run, or None when `err` is neither."""
    if isinstance(err, ConfigError | RunStopped):
        return str(err)
    if isinstance(err, RecursionError):
        return _recursion_line(err)
    if isinstance(err, OverrideParseException):
        return f"{err.override}: cannot parse this override ({first_line(err.message)})"
    if isinstance(err, MissingConfigException):
        return _missing_option(err)
    if isinstance(err, SearchPathException):  # Hydra raises it for a --config-dir that is missing
        return f"--config-dir: {first_line(str(err))}"
    cause = _omegaconf_cause(err)
    if cause is not None:
        return _omegaconf_line(cause)
    text = str(err)
    found = re.search(r"An item is already at '([^']+)'", text)
    if found:
        key = found.group(1)
        return f"{key}: already in the config; set it without '+' ({key}=...)"
    if "Ambiguous value for argument" in text:
        override = re.search(r"argument '([^']+)'", text).group(1)
        return f"{override}: a comma list sweeps only with -m (or write a list: key=[a,b])"
    if isinstance(err, OSError) and err.filename:  # Hydra creating the job's output folder
        return f"paths.output_dir: cannot create {err.filename} ({err.strerror})"
    return _override_line(err)


def exit_code(err: BaseException) -> int:
    """The exit code of an error that has one line: 1 for a stopped run, 2 for bad input."""
    return 1 if isinstance(err, RunStopped) else 2


def no_space(err: BaseException) -> str | None:
    """'' or the file named when `err` (or what caused it) says a write found no space left on
    its device (the OS, sqlite or torch's checkpoint writer); None when it says nothing of it."""
    cause = err
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in NO_SPACE_ERRNOS:
            return str(cause.filename2 or cause.filename or "")  # a copy's target is filename2
        cause = cause.__cause__ or cause.__context__
    return "" if any(says(err, text) for text in NO_SPACE_TEXTS) else None


def says(err: BaseException, text: str) -> bool:
    """Whether `err` or what caused it has `text` in its message."""
    while err is not None:
        if text in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def free_space(path: Path) -> str:
    """'<n> free of <size>' of the file system `path` (or its nearest existing parent) is on."""
    path = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    usage = shutil.disk_usage(path)
    return f"{_size(usage.free)} free of {_size(usage.total)}"


def _size(n: int) -> str:
    """Bytes in the largest unit that keeps a whole number: 512 KB, 75 GB."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 * 10 or unit == "GB":
            return f"{n:,.0f} {unit}"
        n /= 1024
    return ""


def _recursion_line(err: RecursionError) -> str | None:
    """A config file that contains itself (a YAML alias inside its own anchor, `&b [*b]`)
    recurses without end while Hydra loads it: the line names the file."""
    loading = [  # Hydra's repository, then the file source, which knows the file's full path
        frame.f_locals.get("full_path") or frame.f_locals.get("config_path")
        for frame, _ in traceback.walk_tb(err.__traceback__)
        if frame.f_code.co_name == "load_config"
    ]
    if not any(loading):
        return None
    return (
        f"{[p for p in loading if p][-1]}: this config nests itself without end (a YAML alias "
        "inside its own anchor?) (allowed: a config that ends: write the repeated part out, "
        "or use `repeat:` for blocks)"
    )


def _override_line(err: BaseException) -> str | None:
    """An error OmegaConf raises unwrapped while Hydra applies an override, e.g. a key under a
    list (`data.augment.enabled=true` where data.augment is a list): the line names the key."""
    for frame, _ in traceback.walk_tb(err.__traceback__):
        if frame.f_code.co_name == "_apply_overrides_to_config" and "override" in frame.f_locals:
            key, cfg = frame.f_locals["override"].key_or_group, frame.f_locals.get("cfg")
            parts = key.split(".")
            for end in range(1, len(parts)):
                prefix = ".".join(parts[:end])
                if cfg is not None and isinstance(OmegaConf.select(cfg, prefix), ListConfig):
                    return (
                        f"{key}: {prefix} is a list, it has no key {parts[end]!r} "
                        f"(allowed: the whole list, {prefix}=[...], or an item, {prefix}.0=...)"
                    )
            return f"{key}: cannot set this key ({first_line(str(err))})"
    return None


def first_line(text: str) -> str:
    """The first non-blank line of `text`, stripped ('' if none)."""
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


def resume_hint(run_id: str, overrides: str = "<same overrides>") -> str:
    """How to continue a run, as every message that stops one says it."""
    return f"continue it with: python -m cnnexp {overrides} resume={run_id}"


def _omegaconf_cause(err: BaseException) -> OmegaConfBaseException | None:
    while err is not None:
        if isinstance(err, OmegaConfBaseException) and getattr(err, "full_key", None):
            return err
        err = err.__cause__ or err.__context__
    return None


def _omegaconf_line(err: OmegaConfBaseException) -> str:
    key, msg = err.full_key, first_line(err.msg or str(err))
    missing = re.match(r"Key '([^']+)' (?:not in|is not in struct)", msg)
    if missing:
        where = key.rpartition(".")[0]
        cls = getattr(err, "object_type", None)
        names = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
        if getattr(err, "parent_node", None) is not None and not names:
            names = list(err.parent_node.keys())
        return str(unknown_key(where, missing.group(1), names))
    bad = re.match(
        r"Value '(.*)' (?:of type '(\w+)' could not be converted to|is not a valid) (\w+)", msg
    )
    if bad:
        value, given, wanted = bad.groups()
        shown = value if given in ("int", "float") else repr(value)
        return f"{key}: {shown} is not allowed (allowed: {_TYPE_WORDS.get(wanted, wanted)})"
    return f"{key}: {msg}"


def _missing_option(err: MissingConfigException) -> str:
    text = str(err)
    found = re.search(r"Could not find '([^']+)'", text)
    if not found:
        return first_line(text)
    group, _, option = found.group(1).rpartition("/")
    options = re.findall(r"^\t(\S+)$", text, flags=re.MULTILINE)
    allowed = ", ".join(o for o in options if not o.startswith("_"))
    return f"{group or 'config'}: unknown option {option!r} (allowed: {allowed or 'see --help'})"
