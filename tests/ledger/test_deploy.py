"""`fedswarm ledger deploy` against a real anvil: the contract lands, its runtime code is the
artifact's (immutables aside), and the command prints CONTRACT_ID and the deployment block."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from hexbytes import HexBytes
from web3 import Web3

from fedswarm.config import write_devnet_state
from fedswarm.ledger.anvil import start_anvil
from fedswarm.ledger.contract import load_artifact
from fedswarm.ledger.deploy import deploy, immutable_mask, long_zero_id, runtime_matches
from fedswarm.ledger.escrow import EscrowV2
from fedswarm.tools import ToolMissing, tool_path

try:
    tool_path("anvil")
    HAVE_ANVIL = True
except ToolMissing:
    HAVE_ANVIL = False


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    if not HAVE_ANVIL:
        pytest.skip("anvil not installed: run `make tools`")
    home = tmp_path_factory.mktemp("devnet")
    proc, info = start_anvil(home / "anvil")
    write_devnet_state(home, info)
    try:
        yield home, info["chain"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_cli_deploys_v2_and_prints_json(devnet: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    from fedswarm.cli import main

    home, chain = devnet
    assert main(["ledger", "deploy", "--devnet-home", str(home), "--json", "--min-claim-window", "42"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"contract_address", "contract_id", "block", "tx_hash"}
    w3 = Web3(Web3.HTTPProvider(chain["rpc_url"]))
    receipt = w3.eth.get_transaction_receipt(out["tx_hash"])
    assert receipt["contractAddress"] == out["contract_address"] and receipt["blockNumber"] == out["block"]
    escrow = EscrowV2(rpc_url=chain["rpc_url"], contract_address=out["contract_address"],
                      account=Account.create(), chain_id=int(chain["chain_id"]))
    assert escrow.min_claim_window() == 42  # the constructor argument reached the contract
    assert main(["ledger", "deploy", "--devnet-home", str(home), "--contract", "v1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("CONTRACT_ID=0x") and "at block" in text


def test_runtime_check_refuses_other_code(devnet: tuple[Path, dict[str, Any]]) -> None:
    _, chain = devnet
    w3 = Web3(Web3.HTTPProvider(chain["rpc_url"]))
    dep = deploy(w3, Account.from_key(chain["faucet_key"]), min_claim_window=60)
    artifact = load_artifact("FedSwarmEscrowV2")
    code = bytes(w3.eth.get_code(dep.contract_address))
    assert runtime_matches(artifact, code)
    assert code != bytes(HexBytes(artifact.deployed_bytecode))  # immutables were filled in
    mask = immutable_mask(artifact.deployed_bytecode)
    tampered = bytearray(code)
    i = next(k for k, m in enumerate(mask) if not m)
    tampered[i] ^= 0xFF
    assert not runtime_matches(artifact, bytes(tampered))
    assert not runtime_matches(artifact, code[:-1])


def test_long_zero_ids() -> None:
    assert long_zero_id("0x00000000000000000000000000000000000004d2") == "0.0.1234"
    assert long_zero_id("0x" + "11" * 20) is None
