"""The devnet in Hedera's value units (`fedswarm devnet up --hedera-units`): anvil behind the units
relay, so the EVM holds tinybar and the RPC speaks weibar. A node's funding, balances, a job's
deposit, a deployment and restarts all go through ValueUnits; one that did not would be off by
10^10 here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from web3 import Web3

from fedswarm.cli import main as cli_main
from fedswarm.devnet import Devnet, ensure_funded
from fedswarm.identity import load_identity
from fedswarm.ledger.escrow_types import JobTerms
from fedswarm.ledger.factory import make_escrow
from fedswarm.ledger.hedera import WEIBAR_PER_TINYBAR
from fedswarm.tools import ToolMissing, tool_path

pytestmark = pytest.mark.slow
HBAR = 10**8  # tinybar

try:
    tool_path("anvil")
except ToolMissing:
    pytest.skip("anvil not installed: run `make tools`", allow_module_level=True)


def _evm(chain: dict, address: str) -> int:
    """The balance the EVM holds (anvil itself, behind the relay)."""
    return int(Web3(Web3.HTTPProvider(chain["anvil_url"])).eth.get_balance(Web3.to_checksum_address(address)))


def _rpc(chain: dict, address: str) -> int:
    """The balance the relay shows, as Hedera's relay does: weibar."""
    return int(Web3(Web3.HTTPProvider(chain["rpc_url"])).eth.get_balance(Web3.to_checksum_address(address)))


def test_hedera_units_devnet_funds_deploys_and_keeps_hashes_across_a_restart(tmp_path: Path, capsys) -> None:
    home = tmp_path / "devnet"
    net = Devnet.start(home, block_time=0, hedera_units=True)
    try:
        chain = net.state["chain"]
        assert chain["value_units"] == "hedera" and chain["rpc_url"] != chain["anvil_url"]
        assert set(net.pids) == {"store", "chain", "audit", "relay"}
        settings = net.settings()
        ident = load_identity(tmp_path / "node")

        # The faucet tops a node up in contract units (tinybar here).
        sent = ensure_funded(settings, ident.address, min_wei=5 * HBAR, target_wei=7 * HBAR)
        assert sent == 7 * HBAR == _evm(chain, ident.address)
        assert _rpc(chain, ident.address) == 7 * HBAR * WEIBAR_PER_TINYBAR
        assert ensure_funded(settings, ident.address, min_wei=5 * HBAR) == 0

        # The node's escrow client: balances and a deposit in tinybar, fees taken in tinybar.
        escrow = make_escrow(settings, ident)
        assert escrow.units.name == "hedera" and escrow.balance() == 7 * HBAR
        held_before = _evm(chain, escrow.contract_address)
        terms = JobTerms(ident.address, escrow.chain_time() + 3600, 60, 10, HBAR, 4)
        funded = escrow.fund(1, terms, [], amount=2 * HBAR + 3)
        assert escrow.job(funded.job_key).escrow == 2 * HBAR + 3
        assert _evm(chain, escrow.contract_address) == held_before + 2 * HBAR + 3
        fee = funded.receipt.fee
        assert 0 < fee < HBAR and escrow.balance() == 5 * HBAR - 3 - fee == _evm(chain, ident.address)

        # Deploying through the relay: the code read back matches the artifact.
        capsys.readouterr()
        assert cli_main(["ledger", "deploy", "--devnet-home", str(home), "--json"]) == 0
        dep = json.loads(capsys.readouterr().out)
        assert Web3.is_address(dep["contract_address"]) and dep["tx_hash"].startswith("0x")
    finally:
        net.stop()

    # A restart on the same home keeps the units and answers for the client's old hashes.
    net = Devnet.start(home, block_time=0, hedera_units=True)
    try:
        chain = net.state["chain"]
        assert chain["value_units"] == "hedera"
        w3 = Web3(Web3.HTTPProvider(chain["rpc_url"]))
        r = w3.eth.get_transaction_receipt(funded.receipt.tx_hash)
        assert r["transactionHash"].to_0x_hex() == funded.receipt.tx_hash and r["status"] == 1
        tx = w3.eth.get_transaction(funded.receipt.tx_hash)
        assert tx["value"] == (2 * HBAR + 3) * WEIBAR_PER_TINYBAR
        assert make_escrow(net.settings(), ident).job(funded.job_key).escrow == 2 * HBAR + 3
    finally:
        net.stop()
