"""Benchmark: the offline sample (`data/1_raw`) run by `daydream run --offline` on local disk and on
a local S3 server (moto's standalone server on 127.0.0.1, the tests' server), back to back,
`--repeat` times, each with a fresh Dagster instance and fresh outputs. Prints the walls (process
start to exit) and the load average. The S3 figure is an upper bound for a real bucket's request
count and a lower one for its latency: moto answers in-process in Python on this machine.

    uv run python bench/object_store.py [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, fresh_home, machine

ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


def load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def start_s3() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-p", str(port), "-H", "127.0.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("moto_server did not start")


def upload(endpoint: str, bucket: str, raw: Path) -> None:
    import boto3

    client = boto3.session.Session().client("s3", endpoint_url=endpoint, **{
        "aws_access_key_id": "bench", "aws_secret_access_key": "bench", "region_name": "us-east-1"})
    client.create_bucket(Bucket=bucket)
    for path in sorted(p for p in raw.rglob("*") if p.is_file()):
        client.put_object(Bucket=bucket, Key=f"sample/1_raw/{path.relative_to(raw).as_posix()}", Body=path.read_bytes())


def timed(root: str, home: Path, env: dict) -> float:
    argv = [sys.executable, "-m", "daydreaming_dagster.runner.cli", "run", "--offline", "--data-root", root]
    started = time.time()
    out = subprocess.run(argv, env={**os.environ, **env, "DAGSTER_HOME": str(home)}, capture_output=True, text=True)
    wall = time.time() - started
    if out.returncode != 0:
        raise RuntimeError(f"{root} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    server, endpoint = start_s3()
    env = {**ENV, "AWS_ENDPOINT_URL": endpoint}
    print(f"machine: {machine()}; offline sample: {REPO / 'data' / '1_raw'}")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            for i in range(args.repeat):
                local = tmp / f"local{i}"
                shutil.copytree(REPO / "data" / "1_raw", local / "1_raw")
                bucket = f"daydream-bench-{i}"
                upload(endpoint, bucket, REPO / "data" / "1_raw")
                before = load()
                disk = timed(str(local), fresh_home(tmp / f"home-local{i}"), env)
                s3 = timed(f"s3://{bucket}/sample", fresh_home(tmp / f"home-s3{i}"), env)
                print(f"run {i + 1}: local disk {disk:6.1f} s   local S3 server {s3:6.1f} s   "
                      f"(x{s3 / disk:.2f}; load average {before} -> {load()})")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
