"""A new sqlite MLflow store in a fraction of a second: a copy of an empty store made once.

MLflow creates a new sqlite store by running every Alembic migration it ships (10-13 s on these
machines); an existing store opens in 0.03 s. So the first store a machine sees is made once in
the user's cache (`$CNNEXP_CACHE`, else `$XDG_CACHE_HOME/cnnexp`, else ~/.cache/cnnexp), named by
the MLflow version whose migrations made it, and every new store after that is a copy (0.1 s).
`make install` makes it, so a fresh machine's first run does
not pay either. An existing store is never touched; a copy is written beside its target and renamed
into place, so a reader never sees half a store.
MLflow gives the template's experiment 0 (Default) an artifact location under the directory it
was made in; each copy points it under its own store's directory instead (mlartifacts/0).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import mlflow
from filelock import FileLock
from mlflow.tracking import MlflowClient


def cache_dir() -> Path:
    root = os.environ.get("CNNEXP_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "cnnexp"
    )
    return Path(root)


def template_path() -> Path:
    """The empty store of this MLflow version (its migrations decide the schema)."""
    return cache_dir() / f"mlflow-{mlflow.__version__}-empty.db"


def make_template() -> Path:
    """The template store, migrated by MLflow itself the first time (one process at a time)."""
    template = template_path()
    if template.is_file():
        return template
    template.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{template}.lock"):
        if not template.is_file():
            part = template.with_suffix(f".{os.getpid()}.part")
            part.unlink(missing_ok=True)
            MlflowClient(f"sqlite:///{part}").search_experiments()  # runs the migrations
            part.replace(template)
    return template


def seed_store(db: Path) -> None:
    """Make `db` a new empty MLflow store by copying the template, unless it exists."""
    if db.exists():
        return
    try:
        template = make_template()
    except OSError:  # no writable cache: MLflow makes the store itself, slowly
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    part = db.with_name(f".{db.name}.{os.getpid()}.part")
    try:
        shutil.copyfile(template, part)  # a full disk raises here: no half store is left
        with closing(sqlite3.connect(part)) as db_file, db_file:
            db_file.execute(
                "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                (str(db.parent.resolve() / "mlartifacts" / "0"),),
            )
        _move_into_place(part, db)
    finally:
        part.unlink(missing_ok=True)


def _move_into_place(part: Path, db: Path) -> None:
    """`part` becomes `db`, unless another process made `db` meanwhile (then theirs stays)."""
    try:
        os.link(part, db)
    except FileExistsError:
        pass
    except OSError:  # a file system without hard links
        if not db.exists():
            part.replace(db)
