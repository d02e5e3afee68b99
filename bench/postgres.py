"""Benchmark: what the instance storage adds per partition, SQLite against PostgreSQL.

`daydream run --offline` (zero-latency answers, so the time is Dagster's bookkeeping) on the
synthetic experiment of bench/overhead.py (60 generation tasks x 6 methods = 360 pairs), on these
instances, in turn, `--rounds` times (load from other work shifts figures between rounds more
than the order does), each with a fresh instance (a new database) and a fresh output folder:
  - sqlite: the project's dagster_home/dagster.yaml (pooled SQLite);
  - postgres: deploy/dagster.postgres.yaml as shipped (PooledPostgresStorage, synchronous_commit off);
  - postgres-durable: the same, every commit waiting for its flush (the `options` line removed);
  - postgres-stock: dagster-postgres's own `storage: postgres:` (a new connection per statement).
The server is a local one that the benchmark starts (tests/postgres.py) with fsync on, as a real
server runs, and password authentication over TCP.

Per configuration: wall seconds per partition of the generation and evaluation stages (what the
1.25x target is about), the PostgreSQL server's own CPU seconds, and the sessions opened.

    uv run python bench/postgres.py [--rounds 3] [--configs sqlite,postgres,...] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import REPO, fresh_home, machine, write_synthetic_experiment
from overhead import EXPERIMENT

sys.path.insert(0, str(REPO))
from tests.postgres import LocalPostgres  # noqa: E402

CONFIGS = ("sqlite", "postgres", "postgres-durable", "postgres-stock")
CLOCK = os.sysconf("SC_CLK_TCK")


def pg_config(label: str) -> dict:
    config = yaml.safe_load((REPO / "deploy" / "dagster.postgres.yaml").read_text())
    storage = config["storage"]["custom"]["config"]
    if label in ("postgres-durable", "postgres-stock"):
        del storage["postgres_db"]["params"]
    if label == "postgres-stock":
        config["storage"] = {"postgres": storage}
    return config


def server_cpu(server: LocalPostgres) -> float:
    """CPU seconds of the postmaster and every server process it has reaped (the sessions)."""
    pid = (server.folder / "data" / "postmaster.pid").read_text().split()[0]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / CLOCK


def one_run(tmp: Path, label: str, round_no: int, server: LocalPostgres, root: Path, workers: int | None) -> dict:
    home = tmp / f"{label}-{round_no}"
    env = {**os.environ, "DAYDREAM_DATA_ROOT": str(root), "DAGSTER_HOME": str(home)}
    env.pop("DAYDREAM_BACKEND", None)
    db_name = None
    if label == "sqlite":
        fresh_home(home)
    else:
        db_name = server.create_database("bench")
        env.update(server.env(db_name))
        # The offline instance's own dagster.yaml, so that each configuration runs as written
        # (daydream would write a stock home's offline instance as the pooled storage).
        (home / "offline").mkdir(parents=True)
        (home / "offline" / "dagster.yaml").write_text(yaml.safe_dump(pg_config(label)))
        env["DAGSTER_HOME"] = str(home / "offline")
    shutil.rmtree(root / "offline", ignore_errors=True)
    extra = ["--workers", str(workers)] if workers else []
    pg0, t0 = server_cpu(server), time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "daydreaming_dagster.runner.cli", "run", "--offline", *extra],
        env=env, capture_output=True, text=True, cwd=tmp,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    # Sessions end (and are reaped) a moment after the command exits.
    time.sleep(1)
    pg_cpu = server_cpu(server) - pg0
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    stages = _stages(out.stdout)
    (g, g_s, g_f), (e, e_s, e_f) = stages["generation"], stages["evaluation"]
    result = {
        "wall": wall,
        "per_partition": (g_s + e_s) / (g + e),
        "server_cpu": pg_cpu,
        "failed": g_f + e_f,
    }
    if db_name:
        query = "SELECT sessions FROM pg_stat_database WHERE datname = %s"
        result["sessions"] = server.query(query, params=(db_name,))[0][0]
    return result


def _stages(stdout: str) -> dict[str, tuple[int, float, int]]:
    pattern = r"(\w+): (\d+) ran, \d+ skipped, (\d+) failed in ([\d.]+) s"
    return {m[1]: (int(m[2]), float(m[4]), int(m[3])) for m in re.finditer(pattern, stdout)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    parser.add_argument("--workers", type=int, default=None, help="daydream run --workers (default: its own)")
    args = parser.parse_args()
    labels = args.configs.split(",")
    if unknown := set(labels) - set(CONFIGS):
        parser.error(f"unknown configuration(s) {', '.join(sorted(unknown))}; choose from {', '.join(CONFIGS)}")
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f} at the start")
    server = LocalPostgres.start(fsync=True)
    runs: dict[str, list[dict]] = {label: [] for label in labels}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            root = write_synthetic_experiment(tmp / "data", *EXPERIMENT)
            for round_no in range(args.rounds):
                for label in labels:
                    r = one_run(tmp, label, round_no, server, root, args.workers)
                    runs[label].append(r)
                    sessions = f", {r['sessions']} sessions" if "sessions" in r else ""
                    print(
                        f"round {round_no + 1} {label:17s} {r['wall']:6.1f} s; {r['per_partition']:.3f} s per partition "
                        f"(server CPU {r['server_cpu']:.1f} s{sessions})"
                        f"{'; %d failed and rerun' % r['failed'] if r['failed'] else ''}; load {os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
    finally:
        server.stop()

    def median(label: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[label])

    print(f"\nmedians over {args.rounds} round(s), per partition of the generation and evaluation stages:")
    base = labels[0]
    for label in labels:
        wall = median(label, "per_partition")
        print(
            f"  {label:17s} {wall:.3f} s per partition ({wall / median(base, 'per_partition'):.2f}x {base}); "
            f"whole command {median(label, 'wall'):.1f} s"
        )


if __name__ == "__main__":
    main()
