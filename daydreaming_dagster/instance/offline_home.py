"""The offline instance's dagster.yaml: the same kind of storage as the user's DAGSTER_HOME.

`daydream --offline` keeps its own Dagster instance in `<DAGSTER_HOME>/offline`, so that dry-run
materializations never make a real partition look finished. That instance is configured from
the user's own `<DAGSTER_HOME>/dagster.yaml` (the project's when the home has none), changed only
as far as needed to keep it apart from the real instance:

- SQLite that follows DAGSTER_HOME (`base_dir: {env: DAGSTER_HOME}`, or Dagster's default): the
  file is copied as it is, and its databases land in the offline folder.
- PostgreSQL (`storage: postgres`, or the project's PooledPostgresStorage): the same server and
  database, in a schema of its own (`daydream_offline`, or `<schema>_offline`), written as
  PooledPostgresStorage (the only storage that creates its schema).
- Anything else (MySQL, another class, SQLite at a fixed path) is refused with one sentence:
  guessing how to separate it could record dry runs into the real instance.

An offline dagster.yaml that is already there is used as it is, if it names the same kind of
storage as the user's; otherwise the command refuses rather than switch storage silently."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

POOLED_PG = {"module": "daydreaming_dagster.instance.postgres", "class": "PooledPostgresStorage"}
# The same storage under the module path dagster.yaml files written before instance/ existed name.
POOLED_PG_MODULES = {POOLED_PG["module"], "daydreaming_dagster.orchestration.postgres_storage"}
OFFLINE_SCHEMA = "daydream_offline"
FOLLOWS_HOME = {"env": "DAGSTER_HOME"}


class OfflineInstanceError(ValueError):
    """The offline instance cannot get the same kind of storage as the user's; the message says why."""


def _storage_of(config: dict) -> tuple[str, Any]:
    """(kind, detail) of an instance config: kind is "sqlite", "postgresql" or a description of
    another storage; detail is the PostgreSQL config or the SQLite base_dirs."""
    storage = config.get("storage")
    if storage:
        ((name, body),) = storage.items()
        if name == "postgres":
            return "postgresql", dict(body or {})
        if name == "sqlite":
            return "sqlite", [(body or {}).get("base_dir")]
        if name == "custom" and body.get("module") in POOLED_PG_MODULES and body.get("class") == POOLED_PG["class"]:
            return "postgresql", dict(body.get("config") or {})
        if name == "custom":
            return f"custom storage {body.get('module')}.{body.get('class')}", None
        return name, None
    legacy = [config[k] for k in ("run_storage", "event_log_storage", "schedule_storage") if config.get(k)]
    classes = {str(part.get("class", "")) for part in legacy}
    if all("Sqlite" in c for c in classes):
        return "sqlite", [(part.get("config") or {}).get("base_dir", FOLLOWS_HOME) for part in legacy]
    return "storage classes " + ", ".join(sorted(classes)), None


def _kind_name(kind: str) -> str:
    return {"sqlite": "SQLite", "postgresql": "PostgreSQL"}.get(kind, kind)


def offline_config(config: dict, source: Path) -> dict | None:
    """The offline instance's config for a user instance `config` read from `source`; None means
    "copy the file as it is"."""
    kind, detail = _storage_of(config)
    if kind == "sqlite":
        fixed = [d for d in detail if d != FOLLOWS_HOME]
        if fixed:
            raise OfflineInstanceError(
                f"{source} keeps SQLite at the fixed path {fixed[0]!r}, which offline runs would share with real "
                f"ones; set base_dir to {{env: DAGSTER_HOME}} or write {source.parent / 'offline' / 'dagster.yaml'} "
                "yourself."
            )
        return None
    if kind == "postgresql":
        schema = detail.pop("schema", None)
        if schema is not None and not isinstance(schema, str):
            raise OfflineInstanceError(
                f"{source} takes its PostgreSQL schema from {schema!r}; offline runs need a literal schema "
                "name there to derive their own schema from it."
            )
        detail["schema"] = f"{schema}_offline" if schema else OFFLINE_SCHEMA
        rest = {
            k: v
            for k, v in config.items()
            if k not in ("storage", "run_storage", "event_log_storage", "schedule_storage")
        }
        return {"storage": {"custom": {**POOLED_PG, "config": detail}}, **rest}
    raise OfflineInstanceError(
        f"{source} uses {kind}, and daydream --offline knows how to keep dry runs apart only on SQLite or "
        f"PostgreSQL; write {source.parent / 'offline' / 'dagster.yaml'} yourself to choose where they go."
    )


def _read(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def prepare_offline_home(offline_home: Path, user_config: Path) -> None:
    """Give `offline_home` a dagster.yaml with the same kind of storage as `user_config` (see the
    module docstring), or check the one it has; raises OfflineInstanceError to refuse."""
    target = offline_home / "dagster.yaml"
    config = _read(user_config)
    if target.is_file():
        wanted, have = _storage_of(config)[0], _storage_of(_read(target))[0]
        if wanted != have:
            raise OfflineInstanceError(
                f"{target} uses {_kind_name(have)} but {user_config} uses {_kind_name(wanted)}; delete {target} "
                "to have daydream write one that matches (offline results are kept in files and reused)."
            )
        return
    adapted = offline_config(config, user_config)
    offline_home.mkdir(parents=True, exist_ok=True)
    if adapted is None:
        shutil.copy(user_config, target)
        return
    header = (
        f"# Written by `daydream --offline` from {user_config}: the same PostgreSQL server and database,\n"
        f"# in a schema of its own, so dry runs never mix with real ones. Delete it to have it written again.\n"
    )
    target.write_text(header + yaml.safe_dump(adapted, sort_keys=False), encoding="utf-8")
