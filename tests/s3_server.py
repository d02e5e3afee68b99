"""A local S3-compatible server for the object-storage tests: moto's standalone server (the
`moto[server]` dev dependency) as a subprocess on a free port of 127.0.0.1, started once per test
session and stopped at its end. Each test gets its own bucket (fixture `s3`), and the environment
boto3 reads (dummy credentials, AWS_ENDPOINT_URL pointing at the server), for this process and for
the CLI processes a test starts."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Dummy credentials: moto accepts any. The secret is distinctive so tests can grep for it.
ACCESS_KEY = "AKIADAYDREAMTEST0001"
SECRET_KEY = "daydream-test-secret-5e1f0a9c7b3d"


@dataclass
class S3Server:
    endpoint: str
    env: dict[str, str]
    bucket: str = ""
    _client: object = field(default=None, repr=False, compare=False)

    def client(self):
        # One client per server: building one loads botocore's endpoint data (~0.1 s of CPU), which
        # the checks that read every object of a bucket paid once per object.
        if self._client is None:
            import boto3

            self._client = boto3.session.Session().client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                                                          aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
        return self._client

    def url(self, prefix: str = "") -> str:
        return f"s3://{self.bucket}/{prefix}".rstrip("/")

    def upload(self, folder: Path, prefix: str) -> str:
        """Copy the local `folder` to `s3://<bucket>/<prefix>/`; returns that URL."""
        client = self.client()
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            client.put_object(Bucket=self.bucket, Key=f"{prefix}/{path.relative_to(folder).as_posix()}", Body=path.read_bytes())
        return self.url(prefix)

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", ()))

    def read(self, key: str) -> bytes:
        return self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    port = _free_port()
    server = Path(sys.executable).with_name("moto_server")
    process = subprocess.Popen([str(server), "-p", str(port), "-H", "127.0.0.1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, "moto_server did not start"
            time.sleep(0.1)
    env = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        yield S3Server(endpoint, env)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def s3(s3_server, monkeypatch) -> S3Server:
    """A fresh bucket `daydream-test-<n>` on the session's server, with boto3's environment set."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    server = S3Server(s3_server.endpoint, s3_server.env, f"daydream-test-{uuid.uuid4().hex[:12]}")
    server.client().create_bucket(Bucket=server.bucket)
    return server


__all__ = ["S3Server", "ACCESS_KEY", "SECRET_KEY"]
