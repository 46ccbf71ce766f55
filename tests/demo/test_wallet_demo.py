"""`fedswarm demo --wallet`: one real job (bootstrap, client, trainers and the devnet as
processes) submitted and paid by a separate wallet through the HTTP API the browser uses,
reused for every assertion (about 70 s on 2 cores: 2 trainers, 2 rounds, a block per
transaction). Plus the plaintext scanner the demo's own check relies on (fast)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fedswarm.demo.wallet_demo import plaintext_copies


def test_plaintext_scan_finds_copies_and_tensor_bytes(tmp_path: Path) -> None:
    header = b'{"w":{"dtype":"F32","shape":[32],"data_offsets":[0,128]}}'
    plain = len(header).to_bytes(8, "little") + header + bytes(range(128))
    out = tmp_path / "out.safetensors"
    out.write_bytes(plain)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "innocent.bin").write_bytes(b"x" * 500)
    assert plaintext_copies(tmp_path, plain, exclude={out}) == []
    (tmp_path / "a" / "copy.safetensors").write_bytes(plain)
    (tmp_path / "a" / "tensors.raw").write_bytes(b"prefix" + bytes(range(128)) + b"suffix")
    assert plaintext_copies(tmp_path, plain, exclude={out}) == ["a/copy.safetensors", "a/tensors.raw"]


@pytest.mark.slow
def test_demo_wallet_pays_and_alone_reads_the_result(tmp_path: Path) -> None:
    from fedswarm.demo import run_demo

    report = run_demo(trainers=2, rounds=2, workdir=tmp_path, quiet=True, block_time=0, wallet=True)
    assert report["ok"], report.get("error") or report.get("wallet_checks")
    checks = report["wallet_checks"]
    assert all(checks.values()), checks
    # payer is the wallet, operator the node, and they differ
    assert report["payer"] != report["operator"]
    assert report["escrow"]["released"] and report["escrow"]["balanced"]
    # the node's balance moved by gas only; the wallet got back what was not paid
    assert 0 < report["operator_spent_wei"] == report["operator_fees_wei"] < report["escrow"]["deposited_wei"] // 2
    assert report["payer_refund_wei"] == report["escrow"]["refunded_wei"] > 0
    assert report["stranger_status"] == 403
    # the client ran as a delegate: its --public-api URL reached the bootstrap's mesh summary
    assert report["delegate_api"] and report["delegate_api"].startswith("http://127.0.0.1:")
    result = report["result"]
    assert result["decrypted_by"] == "wallet" and result["plaintext_copies"] == []
    assert result["node_plaintext_status"] == 409
    assert hashlib.sha256(Path(result["path"]).read_bytes()).hexdigest() == result["sha256"]
