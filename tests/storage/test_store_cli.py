"""`fedswarm store put|get|presign` against a running devnet store found through ``--home``."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from fedswarm.cli import main
from fedswarm.config import write_devnet_state

from .conftest import RunningLocalStore, SeaweedS3


@pytest.fixture
def devnet_home(local_store: RunningLocalStore, tmp_path: Path) -> Path:
    """A devnet home whose devnet.json points at the running store (as `devnet up` writes)."""
    home = tmp_path / "devnet"
    write_devnet_state(home, local_store.info)
    return home


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_put_then_get_round_trip(devnet_home: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    data = secrets.token_bytes(2_000_000)
    src = tmp_path / "my data.bin"
    src.write_bytes(data)
    # Execute
    code, out, err = run(capsys, "store", "put", str(src), "--home", str(devnet_home),
                         "--ttl", "120")
    assert code == 0, err
    key, url = out.strip().splitlines()
    assert key == "uploads/my_data.bin"
    dst = tmp_path / "back.bin"
    code, out, err = run(capsys, "store", "get", url, "-o", str(dst), "--home", str(devnet_home))
    # Assert
    assert code == 0, err
    assert dst.read_bytes() == data


def test_put_with_key_and_json(devnet_home: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"abc")
    code, out, _ = run(capsys, "store", "put", str(src), "--key", "jobs/j/x", "--json",
                       "--home", str(devnet_home))
    assert code == 0
    obj = json.loads(out)
    assert obj["key"] == "jobs/j/x" and obj["size"] == 3
    assert httpx.get(obj["url"]).content == b"abc"


def test_presign_put_then_get(devnet_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, put_url, _ = run(capsys, "store", "presign", "res/u1", "--put", "--max-bytes", "10",
                           "--home", str(devnet_home))
    assert code == 0
    put_url = put_url.strip()
    assert httpx.put(put_url, content=b"x" * 11).status_code == 413
    assert httpx.put(put_url, content=b"x" * 10).status_code == 201
    code, get_url, _ = run(capsys, "store", "presign", "res/u1", "--home", str(devnet_home))
    assert code == 0 and httpx.get(get_url.strip()).content == b"x" * 10


def test_errors_are_one_line(devnet_home: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "store", "put", str(tmp_path / "nope"), "--home", str(devnet_home))
    assert code != 0 and err.count("\n") == 1 and "not a file" in err
    code, _, err = run(capsys, "store", "presign", "../etc", "--home", str(devnet_home))
    assert code != 0 and err.count("\n") == 1
    code, _, err = run(capsys, "store", "presign", "k", "--home", str(tmp_path / "no-devnet"))
    assert code != 0 and "devnet up" in err and err.count("\n") == 1
    # A tampered URL: refused, nothing written.
    code, url, _ = run(capsys, "store", "presign", "k", "--home", str(devnet_home))
    dst = tmp_path / "out.bin"
    code, _, err = run(capsys, "store", "get", url.strip() + "0", "-o", str(dst),
                       "--home", str(devnet_home))
    assert code != 0 and "403" in err and err.count("\n") == 1
    assert not dst.exists()


def test_get_respects_max_bytes(devnet_home: Path, local_store: RunningLocalStore, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    local_store.client.put("cap/k", b"z" * 5000)
    url = local_store.client.presign_get("cap/k", 60)
    dst = tmp_path / "o.bin"
    code, _, err = run(capsys, "store", "get", url, "-o", str(dst), "--max-bytes", "100")
    assert code != 0 and not dst.exists()


@pytest.mark.slow
def test_cli_subprocess_against_s3(seaweedfs: SeaweedS3, tmp_path: Path) -> None:
    """The real entry point in a child process, S3 backend chosen by environment."""
    src = tmp_path / "f.bin"
    src.write_bytes(b"through s3")
    env = {
        "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
        "AWS_ACCESS_KEY_ID": seaweedfs.access_key, "AWS_SECRET_ACCESS_KEY": seaweedfs.secret_key,
        "FEDSWARM_S3_ENDPOINT": seaweedfs.endpoint, "FEDSWARM_S3_REGION": seaweedfs.region,
        "FEDSWARM_S3_BUCKET": "cli-bucket",
    }
    put = subprocess.run([sys.executable, "-m", "fedswarm.cli", "store", "put", str(src)],
                         env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert put.returncode == 0, put.stderr
    key, url = put.stdout.strip().splitlines()
    dst = tmp_path / "back.bin"
    get = subprocess.run([sys.executable, "-m", "fedswarm.cli", "store", "get", url, "-o", str(dst)],
                         env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert get.returncode == 0, get.stderr
    assert dst.read_bytes() == b"through s3"
