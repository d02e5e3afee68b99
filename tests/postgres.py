"""A real PostgreSQL server for the tests (and bench/postgres.py), started from Debian's binaries.

`LocalPostgres.start()` runs initdb and pg_ctl into a new temporary folder, listening on 127.0.0.1
only, on a free port, with password (scram-sha-256) authentication, so connections are made the way
a deployment makes them. PostgreSQL refuses to run as root: as root (CI, this machine) the server
runs as `nobody`, through `runuser`. `stop()` stops it and deletes the folder.

Fixture `postgres` (session-scoped): the server, or a skip naming why it could not start (missing
binaries or the `postgres` extra). With CI=true it fails instead: CI must exercise PostgreSQL."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

SUPERUSER = "daydream"
RUN_AS_WHEN_ROOT = "nobody"


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot be started here; the message says why."""


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise PostgresUnavailable(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb; `apt-get install -y postgresql`)"
        )
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalPostgres:
    """A running server: connect as `user`/`password` to 127.0.0.1:`port`."""

    folder: Path
    bin_dir: Path
    port: int
    user: str
    password: str
    run_as: str | None

    @classmethod
    def start(cls, fsync: bool = False) -> LocalPostgres:
        """A new server; `fsync` as a real server has it (the tests do without: throwaway data)."""
        try:
            import psycopg2  # noqa: F401
        except ImportError as exc:
            raise PostgresUnavailable("psycopg2 is not installed (`uv sync --extra postgres`)") from exc
        bin_dir = _bin_dir()
        run_as = RUN_AS_WHEN_ROOT if os.geteuid() == 0 else None
        # Not under pytest's tmp folder: that one is private to root, and the server user must reach it.
        folder = Path(tempfile.mkdtemp(prefix="daydream-pg-"))
        server = cls(folder, bin_dir, _free_port(), SUPERUSER, uuid.uuid4().hex, run_as)
        try:
            server._init_and_start(fsync)
        except BaseException:
            server.stop()
            raise
        return server

    def _as_server_user(self, *args: str) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", self.run_as, "--"] if self.run_as else []
        proc = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise PostgresUnavailable(f"{Path(args[0]).name} failed: {(proc.stderr or proc.stdout).strip()[-2000:]}")
        return proc

    def _init_and_start(self, fsync: bool) -> None:
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
        pwfile = self.folder / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.run_as:
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        data = self.folder / "data"
        self._as_server_user(
            str(self.bin_dir / "initdb"), "-D", str(data), "-U", self.user, f"--pwfile={pwfile}",
            "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        pwfile.unlink()
        # The socket in our own folder (not /var/run/postgresql).
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} -c max_connections=200"
        if not fsync:
            options += " -c fsync=off"
        self._as_server_user(
            str(self.bin_dir / "pg_ctl"), "-D", str(data), "-l", str(self.folder / "server.log"),
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self) -> None:
        data = self.folder / "data"
        if (data / "postmaster.pid").exists():
            try:
                self._as_server_user(str(self.bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
            except PostgresUnavailable:
                pass
        shutil.rmtree(self.folder, ignore_errors=True)

    def connect(self, dbname: str = "postgres"):
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password, dbname=dbname)
        conn.autocommit = True
        return conn

    def create_database(self, prefix: str = "daydream") -> str:
        """A new, empty database; its name."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        self.query(f'CREATE DATABASE "{name}"')
        return name

    def query(self, sql: str, dbname: str = "postgres", params: tuple = ()) -> list[tuple]:
        conn = self.connect(dbname)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def env(self, dbname: str) -> dict[str, str]:
        """The variables deploy/dagster.postgres.yaml reads, for database `dbname`."""
        return {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USER": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": dbname,
        }


@pytest.fixture(scope="session")
def postgres():
    try:
        server = LocalPostgres.start()
    except PostgresUnavailable as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI must test PostgreSQL, and it cannot start: {exc}")
        pytest.skip(f"PostgreSQL cannot be started here: {exc}")
    yield server
    server.stop()
