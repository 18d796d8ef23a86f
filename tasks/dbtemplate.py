"""Migrated, never used SQLite databases of MLflow and Prefect, one per library version, in the user's cache: a new
home's database starts as a copy instead of running the migrations again (Prefect's take ~12 s of CPU, MLflow's ~2 s,
on every fresh MULTISTEP_HOME, `make stack` and `make ui`). Standard library only: the CLI's server process reads it
before it imports Prefect."""

import os
import shutil
import sqlite3
from contextlib import closing
from importlib.metadata import version
from pathlib import Path


def path(library: str) -> Path:
    """The template of `library` ("mlflow" or "prefect") at its installed version (migrations belong to a version), in
    MULTISTEP_CACHE, by default ~/.cache/multistep."""
    cache = (
        os.environ.get("MULTISTEP_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "multistep"
    )
    return Path(cache) / f"{library}-{version(library)}.db"


def seed(db: Path, library: str) -> bool:
    """Copy the template to `db` when `db` does not exist and the template does; whether it did."""
    template = path(library)
    if db.exists() or not template.exists():
        return False
    db.parent.mkdir(parents=True, exist_ok=True)
    partial = db.with_name(f"{db.name}.{os.getpid()}.seed")
    shutil.copyfile(template, partial)
    os.replace(partial, db)  # whoever opens `db` meanwhile finds none or a whole one
    return True


def keep(db: Path, library: str, clear: str = "") -> None:
    """Keep a just-migrated `db` as the template, after the SQL `clear` (rows that belong to one home) on the copy."""
    template = path(library)
    template.parent.mkdir(parents=True, exist_ok=True)
    partial = template.with_name(f"{template.name}.{os.getpid()}")
    with closing(sqlite3.connect(db)) as source, closing(sqlite3.connect(partial)) as copy:
        source.backup(copy)  # consistent even while the source is in WAL mode
        if clear:
            copy.executescript(clear)
        copy.execute("PRAGMA journal_mode=DELETE")  # one file, whatever mode the source was in
    os.replace(partial, template)  # two first homes at once each write their own, and either is whole
