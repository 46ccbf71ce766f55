"""The Hedera paths against recorded relay and mirror-node responses (tests/ledger/fixtures/hedera,
each naming its source), served from 127.0.0.1 to the real client code: deploy through web3's
HTTPProvider, the audit reader through the mirror REST API. Each error ends as one line."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3

from fedswarm.ledger.audit import AuditError
from fedswarm.ledger.audit_hedera import HederaAuditLog
from fedswarm.ledger.contract import load_artifact
from fedswarm.ledger.deploy import DeployError, deploy
from fedswarm.ledger.escrow import EscrowV2
from fedswarm.ledger.evm import LedgerError
from fedswarm.ledger.hedera import ValueUnits

FIXTURES = Path(__file__).parent / "fixtures" / "hedera"
TX_HASH = "0x" + "5e" * 32


def fixture(name: str) -> dict[str, Any]:
    data = json.loads((FIXTURES / name).read_text())
    assert data["_source"]  # every recorded response says where its shape comes from
    return data


class Recorded:
    """What the fake relay/mirror answers: JSON-RPC methods from ``rpc`` maps (``*`` for all),
    GET paths from mirror fixtures; later fixtures win."""

    def __init__(self) -> None:
        self.rpc: dict[str, dict[str, Any]] = {}
        self.rpc_status = 200
        self.paths: dict[str, tuple[int, Any]] = {}
        self.default_get: tuple[int, Any] | None = None
        self.sender = ""

    def load_rpc(self, name: str) -> None:
        data = fixture(name)
        self.rpc.update(data["rpc"])
        self.rpc_status = data.get("http_status", self.rpc_status)

    def load_get(self, name: str, *, everywhere: bool = False) -> None:
        data = fixture(name)
        answer = (data.get("http_status", 200), data["body"])
        if everywhere:
            self.default_get = answer
        else:
            self.paths[data["path"]] = answer


@pytest.fixture()
def recorded() -> Iterator[tuple[Recorded, str]]:
    state = Recorded()
    runtime = load_artifact("FedSwarmEscrowV2").deployed_bytecode

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            answer = state.rpc.get(req["method"]) or state.rpc.get("*")
            if answer is None:
                self._send(200, {"jsonrpc": "2.0", "id": req["id"],
                                 "error": {"code": -32601, "message": "Unsupported JSON-RPC method"}})
                return
            text = json.dumps(answer).replace("$TX_HASH", TX_HASH).replace("$FROM", state.sender)
            text = text.replace("$ARTIFACT_RUNTIME", runtime)
            self._send(state.rpc_status, {"jsonrpc": "2.0", "id": req["id"], **json.loads(text)})

        def do_GET(self) -> None:  # noqa: N802
            hit = state.paths.get(self.path) or state.paths.get(self.path.split("?")[0]) or state.default_get
            self._send(*(hit or (404, {"_status": {"messages": [{"message": "Not found"}]}})))

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _deploy(url: str, state: Recorded) -> Any:
    account = Account.create()
    state.sender = account.address.lower()
    w3 = Web3(Web3.HTTPProvider(url, exception_retry_configuration=None))
    return deploy(w3, account, chain_id=296, receipt_timeout=5, mirror_url=url)


def test_deploy_through_recorded_relay_gets_contract_id_from_mirror(recorded: tuple[Recorded, str]) -> None:
    state, url = recorded
    state.load_rpc("relay_deploy_ok.json")
    state.load_get("mirror_contract.json")
    dep = _deploy(url, state)
    assert dep.contract_id == "0.0.5005" and dep.block == 0x1B7A3E and dep.tx_hash == TX_HASH


@pytest.mark.parametrize(("name", "line"), [
    ("relay_insufficient_payer_balance.json",
     "the paying account has too little HBAR (INSUFFICIENT_PAYER_BALANCE): top it up"),
    ("relay_invalid_signature.json", "the network refused the signature (INVALID_SIGNATURE): sign with the ECDSA key"),
    ("relay_contract_revert.json", "the contract reverted (CONTRACT_REVERT_EXECUTED): NotRegistered"),
    ("relay_throttled_429.json", "the relay is throttling requests (HTTP 429 / rate limit): wait a minute"),
])
def test_relay_errors_are_one_line(recorded: tuple[Recorded, str], name: str, line: str) -> None:
    state, url = recorded
    state.load_rpc("relay_deploy_ok.json")
    state.load_rpc(name)
    with pytest.raises(DeployError) as err:
        _deploy(url, state)
    text = str(err.value)
    assert "\n" not in text and line in text, text


def test_audit_reader_follows_mirror_links_next(recorded: tuple[Recorded, str]) -> None:
    state, url = recorded
    state.load_get("mirror_topic_messages_page1.json")
    state.load_get("mirror_topic_messages_page2.json")
    log = HederaAuditLog(None, None, network="testnet", mirror_url=url)
    raw = list(log.iter_raw("0.0.7777"))
    assert [m["sequence_number"] for m in raw] == [1, 2]
    assert [m.json()["state"] for m in log.iter_messages("0.0.7777")] == ["joined", "training"]


@pytest.mark.parametrize(("name", "line"), [
    ("mirror_throttled_429.json", "429 Too many requests"),
    ("mirror_invalid_limit_400.json", "400 Invalid parameter: limit"),
])
def test_mirror_errors_are_one_line(recorded: tuple[Recorded, str], name: str, line: str) -> None:
    state, url = recorded
    state.load_get(name, everywhere=True)
    log = HederaAuditLog(None, None, network="testnet", mirror_url=url)
    with pytest.raises(AuditError) as err:
        log.read("0.0.7777")
    assert "\n" not in str(err.value) and line in str(err.value)


@pytest.mark.parametrize(("name", "line"), [
    ("relay_insufficient_payer_balance.json",
     "withdraw: the paying account has too little HBAR (INSUFFICIENT_PAYER_BALANCE): top it up"),
    ("relay_invalid_signature.json",
     "withdraw: the network refused the signature (INVALID_SIGNATURE): sign with the ECDSA key"),
    ("relay_contract_revert.json", "withdraw reverted: NotRegistered"),
    ("relay_throttled_429.json", "the relay is throttling requests (HTTP 429 / rate limit): wait a minute"),
])
def test_a_nodes_escrow_calls_fail_in_one_line(recorded: tuple[Recorded, str], name: str, line: str) -> None:
    """What a trainer or client sees when its own transaction (a withdrawal here) meets each
    recorded relay error."""
    state, url = recorded
    state.load_rpc("relay_deploy_ok.json")
    state.load_rpc(name)
    account = Account.create()
    state.sender = account.address.lower()
    escrow = EscrowV2(url, "0x" + "12" * 20, account, units=ValueUnits.hedera(), chain_id=296,
                      receipt_timeout=5, retries=0)
    with pytest.raises(LedgerError) as err:
        escrow.withdraw()
    text = str(err.value)
    assert "\n" not in text and line in text, text
