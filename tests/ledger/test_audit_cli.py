"""`fedswarm audit ...` against a real devnet topic log (devnet.json written like `devnet up`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedswarm.cli import main
from fedswarm.config import load_settings, write_devnet_state
from fedswarm.identity import load_identity
from fedswarm.ledger.audit_factory import make_audit_log
from fedswarm.ledger.auditserver import start_audit_server


@pytest.fixture()
def devnet(tmp_path: Path) -> Iterator[Path]:
    proc, info = start_audit_server(tmp_path / "audit.db")
    try:
        write_devnet_state(tmp_path, info)
        yield tmp_path
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_create_submit_tail_verify(devnet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: a topic via the CLI, messages via the factory-made log
    assert main(["audit", "topic", "create", "--memo", "cli", "--home", str(devnet),
                 "--node-home", str(tmp_path / "node")]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("TOPIC_ID=0.0.")
    topic = line.removeprefix("TOPIC_ID=")
    settings = load_settings(FEDSWARM_DEVNET_HOME=str(devnet))
    log = make_audit_log(settings, load_identity(tmp_path / "node"))
    for i in range(5):
        log.submit(topic, {"i": i})
    # Execute / Assert: tail verifies and exits when caught up
    assert main(["audit", "tail", topic, "--home", str(devnet), "--no-follow"]) == 0
    out = capsys.readouterr().out
    assert out.count("✓ verified") == 5
    assert main(["audit", "tail", topic, "--home", str(devnet), "--no-follow", "--from", "2"]) == 0
    assert capsys.readouterr().out.count("✓ verified") == 3
    # save a page, verify it, tamper with it
    assert main(["audit", "page", topic, "--home", str(devnet)]) == 0
    page = json.loads(capsys.readouterr().out)
    saved = tmp_path / "page.json"
    saved.write_text(json.dumps(page))
    assert main(["audit", "verify", str(saved), "--prev-hash", "00" * 48]) == 0
    assert "OK: 5 messages" in capsys.readouterr().out
    page["messages"][3]["payer_account_id"] = "0.0.7"
    saved.write_text(json.dumps(page))
    assert main(["audit", "verify", str(saved), "--prev-hash", "00" * 48]) == 1
    assert "sequence 4" in capsys.readouterr().out
    assert main(["audit", "verify", str(saved), "--prev-hash", "abc"]) != 0
