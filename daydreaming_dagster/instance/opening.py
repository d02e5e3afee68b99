"""Opening DAGSTER_HOME's instance when several processes start at once, and repairing one that
an earlier version let break.

Dagster's SQLite storages create their database, and stamp its schema version, when they first
open it; two processes doing that at once can both stamp it (measured: two `daydream run`s on a
fresh DAGSTER_HOME left `alembic_version` with two rows, and every later command failed with
"more than one head present"). Every daydream process therefore opens the instance under one lock
file in DAGSTER_HOME, and the project's storages (sqlite_storage.py) create their databases under
a lock of their own, which also covers `dagster dev` and the `dagster` CLI."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..store.files import exclusive_lock

INSTANCE_LOCK = ".daydream-instance.lock"


class BrokenInstanceError(RuntimeError):
    """The instance's storage is in a state Dagster refuses to open; str() says how to repair it."""


@contextmanager
def creating(db_path: str | Path) -> Iterator[None]:
    """Hold the lock under which one SQLite database of the instance is created or migrated."""
    db_path = Path(db_path)
    with exclusive_lock(db_path.parent / f".{db_path.name}.init.lock"):
        yield


def _home() -> Path:
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        raise BrokenInstanceError("DAGSTER_HOME is not set; daydream sets it, so run through `daydream`.")
    return Path(home)


def open_instance(ref: object | None = None):
    """DAGSTER_HOME's DagsterInstance (from `ref` when given), opened by one process at a time.

    Raises BrokenInstanceError, with the repair in one sentence, when a database of the instance
    records more than one schema version. (Dagster is imported here, not at the top: the CLI
    imports this module for its error class and must start fast.)"""
    import dagster as dg

    home = _home()
    with exclusive_lock(home / INSTANCE_LOCK):
        try:
            return dg.DagsterInstance.from_ref(ref) if ref is not None else dg.DagsterInstance.get()
        except Exception as exc:
            broken = version_table_faults(home)
            if broken:
                raise BrokenInstanceError(broken_message(home, broken)) from exc
            raise


def _versions(db: Path) -> list[str] | None:
    """The rows of a database's alembic_version table; None when it has none or is not SQLite."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
            return [row[0] for row in conn.execute("SELECT version_num FROM alembic_version")]
    except sqlite3.Error:
        return None


def version_table_faults(home: Path) -> dict[Path, list[str]]:
    """The instance databases whose alembic_version table holds more than one version."""
    faults = {}
    for db in sorted(Path(home).rglob("*.db")):
        versions = _versions(db)
        if versions is not None and len(versions) > 1:
            faults[db] = versions
    return faults


def broken_message(home: Path, faults: dict[Path, list[str]]) -> str:
    db, versions = next(iter(faults.items()))
    return (
        f"The Dagster instance in {home} was left broken by two processes that created it at once (before "
        f"daydream serialized that): {db.relative_to(home)} records {len(versions)} schema versions "
        f"({', '.join(versions)}); repair it with `daydream repair-instance`"
        f"{' --offline' if home.name == 'offline' else ''}, which keeps the version its tables were created at."
    )


def _head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from ..compat import ALEMBIC_SCRIPTS_LOCATION

    config = Config()
    config.set_main_option("script_location", ALEMBIC_SCRIPTS_LOCATION)
    return ScriptDirectory.from_config(config).get_current_head()


def repair_version_tables(home: Path) -> list[str]:
    """Keep only the current schema version in every database that records several; one line per
    repaired database. A database whose versions do not include the current one is not touched
    (BrokenInstanceError says what to do then)."""
    head = _head_revision()
    repaired = []
    with exclusive_lock(Path(home) / INSTANCE_LOCK):
        for db, versions in version_table_faults(home).items():
            # The race stamps the tables that one process created at the current version a second
            # time, with an older version; the tables are at the current one.
            if head not in versions:
                raise BrokenInstanceError(
                    f"{db} records schema versions {', '.join(versions)}, none of them this Dagster's ({head}); "
                    "move the file aside (Dagster recreates it empty) or restore it from a backup."
                )
            with sqlite3.connect(db, timeout=30) as conn:
                conn.execute("DELETE FROM alembic_version WHERE version_num != ?", (head,))
            repaired.append(f"{db}: kept schema version {head}, removed {', '.join(v for v in versions if v != head)}")
    return repaired
