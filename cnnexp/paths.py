"""Where cnnexp finds its configs and writes its outputs, and the resolvers conf/ uses for them."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parent


def checkout() -> Path | None:
    """The source tree cnnexp runs from (a clone, `pip install -e`); None for an installed wheel,
    which carries conf/ inside the package as cnnexp/conf (see setup.py)."""
    return None if (PACKAGE_DIR / "conf").is_dir() else PACKAGE_DIR.parent


def config_dir() -> Path:
    """The primary config dir: the checkout's conf/, else the copy inside the installed package."""
    return (checkout() or PACKAGE_DIR) / "conf"


def repo_root() -> Path:
    """Where `paths.root_dir` (and so outputs/) defaults to: the checkout, else the working dir."""
    return checkout() or Path.cwd()


def job_output_dir(cfg: Any) -> Path:
    """This job's Hydra output dir (or, outside Hydra, a fresh one under paths.output_dir)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.paths.output_dir, "runs", f"direct-{time.strftime('%Y%m%d-%H%M%S')}-{uid()}")


def uid() -> str:
    """A short id no two folders made in the same second share, in one process or several."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


def register_resolvers() -> None:
    """${repo_root:} and ${uid:} for conf/; safe to call more than once."""
    if not OmegaConf.has_resolver("repo_root"):
        OmegaConf.register_new_resolver("repo_root", lambda: str(repo_root()))
    if not OmegaConf.has_resolver("uid"):  # one value per composed config (cached on its root)
        OmegaConf.register_new_resolver("uid", uid, use_cache=True)


def write_whole(file: Path, text: str) -> None:
    """`text` into `file` (its folder made), which no reader ever sees half-written: written
    beside it under a name of this process's own, then renamed over it."""
    file.parent.mkdir(parents=True, exist_ok=True)
    partial = file.with_name(f".{file.name}.{os.getpid()}.partial")
    partial.write_text(text)
    os.replace(partial, file)
