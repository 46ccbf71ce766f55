"""In-process EVM (eth-tester + py-evm) with FedSwarmEscrow deployed, for the contract tests."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

from eth_tester import EthereumTester, PyEVMBackend
from eth_tester.exceptions import TransactionFailed
from web3 import Web3
from web3.logs import DISCARD

from fedswarm.ledger.contract import ContractArtifact, load_artifact, load_artifact_file

HERE = Path(__file__).resolve().parent
ATTACKER_ARTIFACT = HERE / "contracts" / "ReentrancyAttacker.json"
ZERO32 = b"\0" * 32


class Reverted(AssertionError):
    """A transaction reverted; ``reason`` is the decoded error (e.g. ``NotRegistered(...)``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class EscrowChain:
    """A fresh in-process chain, the escrow contract and helpers to transact and time-travel."""

    def __init__(self) -> None:
        self.tester = EthereumTester(PyEVMBackend())
        self.w3 = Web3(Web3.EthereumTesterProvider(self.tester))
        self.accounts: list[str] = list(self.w3.eth.accounts)
        self.artifact = load_artifact()
        self.escrow = self.deploy(self.artifact)
        self.address = self.escrow.address

    def deploy(self, art: ContractArtifact, *args: Any) -> Any:
        factory = self.w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
        tx_hash = factory.constructor(*args).transact({"from": self.accounts[0]})
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash)
        return self.w3.eth.contract(address=receipt["contractAddress"], abi=art.abi)

    def deploy_attacker(self) -> Any:
        return self.deploy(load_artifact_file(ATTACKER_ARTIFACT), self.address)

    def tx(self, call: Any, sender: str, value: int = 0) -> Any:
        """Send ``call`` from ``sender``; returns the receipt or raises :class:`Reverted`."""
        tx = call.build_transaction({"from": sender, "value": value, "gas": 3_000_000})
        try:
            # Dry-run on the tester itself: it hands back the raw revert data, which the web3
            # provider would flatten into a string.
            self.tester.call({k: tx[k] for k in ("from", "to", "value", "data", "gas")}, "pending")
        except TransactionFailed as exc:
            raise Reverted(self.decode_raw(exc)) from None
        tx_hash = self.w3.eth.send_transaction(tx)
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash)
        assert receipt["status"] == 1
        return receipt

    def decode_raw(self, exc: TransactionFailed) -> str:
        data = exc.args[0] if exc.args else b""
        while isinstance(data, Exception):  # eth-tester sometimes wraps the error
            data = data.args[0] if data.args else b""
        if isinstance(data, str) and data.startswith(("b'", 'b"')):
            # py-evm's backend renders the revert bytes as a Python literal (safe to parse).
            data = ast.literal_eval(data)
        if isinstance(data, bytes):
            return self.artifact.decode_revert(data)
        return str(data)

    def fn(self) -> Any:
        return self.escrow.functions

    def now(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def warp(self, seconds: int) -> None:
        """Move chain time forward (the next block gets the new timestamp). From the pending
        block's time, not the latest block's: on a loaded machine the pending block's wall-clock
        time can already be more than ``seconds`` past the latest block, and eth-tester refuses
        to travel backwards."""
        pending = int(self.tester.get_block_by_number("pending")["timestamp"])
        self.tester.time_travel(max(self.now() + seconds, pending + 1))

    def balance(self, address: str) -> int:
        return int(self.w3.eth.get_balance(address))

    def gas_cost(self, receipt: Any) -> int:
        return int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"])

    def events(self, receipt: Any, name: str) -> list[dict[str, Any]]:
        ev = getattr(self.escrow.events, name)()
        return [dict(e["args"]) for e in ev.process_receipt(receipt, errors=DISCARD)]

    def job(self, job_id: bytes) -> tuple[Any, ...]:
        return tuple(self.fn().job(job_id).call())

    def pending(self, address: str) -> int:
        return int(self.fn().pending(address).call())


def artifact_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
