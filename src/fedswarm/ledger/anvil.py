"""The devnet chain: anvil on 127.0.0.1 with ``--state`` persistence and the escrow deployed.

:func:`start_anvil` spawns anvil as a separate process, waits until it answers, deploys
FedSwarmEscrow (v1) and FedSwarmEscrowV2 once each (the deployments are recorded in the state
dir and survive restarts because anvil's ``--state`` file keeps the chain) and returns
``(popen, info)`` where ``info`` is the ``{"chain": {...}}`` block for ``devnet.json``. :func:`fund` gives a node's wallet some ETH
from the faucet account.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_utils import keccak
from web3 import Web3

from fedswarm.ledger.contract import load_artifact
from fedswarm.ledger.escrow_types import V2_CONTRACT_NAME
from fedswarm.ledger.hedera import ValueUnits
from fedswarm.tools import tool_path

CHAIN_ID = 31337
STATE_FILE = "anvil-state.json"
DEPLOYMENT_FILE = "deployment.json"
DEPLOYMENT_V2_FILE = "deployment-v2.json"
# The devnet's v2 deployment lets jobs use short claim windows (the contract's floor), so a demo
# job releases its reservations seconds after it closes; production deployments use 1 hour.
DEVNET_MIN_CLAIM_WINDOW = 10
LOG_FILE = "anvil.log"
# anvil's well-known dev keys (mnemonic "test test ... junk"): account 0 deploys, 1 is the faucet.
DEPLOYER_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
FAUCET_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
_LISTEN = re.compile(rb"Listening on ([0-9.]+):(\d+)")


class AnvilError(RuntimeError):
    """anvil could not be started or prepared; the message says why and what to do."""


def start_anvil(
    state_dir: Path, port: int = 0, block_time: float | None = None, timeout: float = 60.0,
    mixed: bool = False, host: str = "127.0.0.1",
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start anvil for the devnet under ``state_dir`` and make sure the contract is deployed.

    ``port`` 0 lets anvil pick a free port (read back from its banner, so no race).
    ``block_time`` (seconds) mimics Hedera's ~2 s blocks; None mines on every transaction.
    ``mixed`` with a ``block_time`` mines on every transaction and on the timer as well, so the
    chain's clock moves while no transaction comes (a time-gated call such as a release can
    then be estimated once its time has passed). ``host`` is the address anvil binds
    (loopback by default; a network test bed puts the devnet on a host of its own).
    Returns the process and ``{"chain": {rpc_url, chain_id, contract_address, deploy_block,
    escrow_v2_address, escrow_v2_deploy_block, escrow_v2_min_claim_window, deployer_key,
    faucet_key}}``. The caller stops the process (SIGTERM makes anvil write its
    state file; it also dumps every few seconds in case it is killed).
    """
    state_dir = Path(state_dir).expanduser()
    state_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(tool_path("anvil")),
        "--host", host,
        "--port", str(port),
        "--hardfork", "cancun",
        "--chain-id", str(CHAIN_ID),
        "--state", str(state_dir / STATE_FILE),
        "--state-interval", "2",
        "--accounts", "10",
        "--balance", "1000000",
    ]
    if block_time:
        cmd += ["--block-time", str(block_time)]
        if mixed:
            cmd.append("--mixed-mining")
    logf = open(state_dir / LOG_FILE, "ab")  # noqa: SIM115 (the reader thread owns it)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    found = threading.Event()
    addr: list[tuple[str, int]] = []

    def pump() -> None:
        # Copy anvil's output to its log file, noting the port it announces.
        assert proc.stdout is not None
        for line in proc.stdout:
            logf.write(line)
            logf.flush()
            if not found.is_set() and (m := _LISTEN.search(line)):
                addr.append((m.group(1).decode(), int(m.group(2))))
                found.set()
        logf.close()
        found.set()

    threading.Thread(target=pump, name="anvil-log", daemon=True).start()
    try:
        if not found.wait(timeout) or not addr:
            raise AnvilError(
                f"anvil did not start (exit {proc.poll()}); see {state_dir / LOG_FILE}"
            )
        rpc_url = f"http://{addr[0][0]}:{addr[0][1]}"
        w3 = _wait_ready(rpc_url, proc, timeout)
        contract, block = ensure_deployed(w3, state_dir)
        v2, v2_block = ensure_deployed_v2(w3, state_dir)
    except BaseException:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    info = {
        "chain": {
            "rpc_url": rpc_url,
            "chain_id": CHAIN_ID,
            "contract_address": contract,
            "deploy_block": block,
            "escrow_v2_address": v2,
            "escrow_v2_deploy_block": v2_block,
            "escrow_v2_min_claim_window": DEVNET_MIN_CLAIM_WINDOW,
            "deployer_key": DEPLOYER_KEY,
            "faucet_key": FAUCET_KEY,
            "pid": proc.pid,
        }
    }
    return proc, info


def _wait_ready(rpc_url: str, proc: subprocess.Popen[bytes], timeout: float) -> Web3:
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 5}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AnvilError(f"anvil exited with {proc.returncode} while starting")
        try:
            if w3.eth.chain_id == CHAIN_ID:
                return w3
        except Exception:
            pass
        time.sleep(0.1)
    raise AnvilError(f"anvil at {rpc_url} did not answer within {timeout:.0f} s")


def ensure_deployed(w3: Web3, state_dir: Path) -> tuple[str, int]:
    """Return ``(contract_address, deploy_block)``, deploying only if the address recorded in
    ``state_dir`` holds no code or other code (a fresh chain, or a recompiled contract)."""
    artifact = load_artifact()
    record_path = Path(state_dir) / DEPLOYMENT_FILE
    if record_path.exists():
        try:
            rec = json.loads(record_path.read_text())
            code = w3.eth.get_code(Web3.to_checksum_address(rec["contract_address"]))
            if "0x" + bytes(code).hex() == artifact.deployed_bytecode.lower():
                return rec["contract_address"], int(rec["deploy_block"])
        except (ValueError, KeyError):
            pass  # unreadable record: deploy afresh
    deployer = Account.from_key(DEPLOYER_KEY)
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    tx = factory.constructor().build_transaction(
        {
            "from": deployer.address,
            "nonce": w3.eth.get_transaction_count(deployer.address, "pending"),
            "chainId": CHAIN_ID,
        }
    )
    signed = deployer.sign_transaction(tx)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60, poll_latency=0.05)
    if receipt["status"] != 1:
        raise AnvilError("deploying FedSwarmEscrow failed on anvil; see the anvil log")
    rec = {
        "contract_address": receipt["contractAddress"],
        "deploy_block": int(receipt["blockNumber"]),
        "source_sha256": artifact.source_sha256,
    }
    tmp = record_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=2))
    os.replace(tmp, record_path)
    return rec["contract_address"], rec["deploy_block"]


def ensure_deployed_v2(
    w3: Web3, state_dir: Path, min_claim_window: int = DEVNET_MIN_CLAIM_WINDOW
) -> tuple[str, int]:
    """Return ``(address, deploy_block)`` of FedSwarmEscrowV2, deploying it unless the record in
    ``state_dir`` names code deployed from the current artifact with the same constructor
    argument. The runtime code holds immutables (EIP-712 domain, claim window), so the record
    keeps the creation code's hash and the deployed code's hash rather than comparing with the
    artifact's deployedBytecode."""
    artifact = load_artifact(V2_CONTRACT_NAME)
    creation = keccak(hexstr=artifact.bytecode).hex()
    record_path = Path(state_dir) / DEPLOYMENT_V2_FILE
    if record_path.exists():
        try:
            rec = json.loads(record_path.read_text())
            code = bytes(w3.eth.get_code(Web3.to_checksum_address(rec["contract_address"])))
            if (rec["creation_sha3"] == creation and rec["runtime_sha3"] == keccak(code).hex()
                    and int(rec["min_claim_window"]) == min_claim_window and code):
                return rec["contract_address"], int(rec["deploy_block"])
        except (ValueError, KeyError):
            pass  # unreadable record: deploy afresh
    deployer = Account.from_key(DEPLOYER_KEY)
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    tx = factory.constructor(min_claim_window).build_transaction(
        {
            "from": deployer.address,
            "nonce": w3.eth.get_transaction_count(deployer.address, "pending"),
            "chainId": CHAIN_ID,
        }
    )
    signed = deployer.sign_transaction(tx)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60, poll_latency=0.05)
    if receipt["status"] != 1:
        raise AnvilError("deploying FedSwarmEscrowV2 failed on anvil; see the anvil log")
    code = bytes(w3.eth.get_code(receipt["contractAddress"]))
    rec = {
        "contract_address": receipt["contractAddress"],
        "deploy_block": int(receipt["blockNumber"]),
        "min_claim_window": min_claim_window,
        "creation_sha3": creation,
        "runtime_sha3": keccak(code).hex(),
        "source_sha256": artifact.source_sha256,
    }
    tmp = record_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=2))
    os.replace(tmp, record_path)
    return rec["contract_address"], rec["deploy_block"]


def fund(chain: dict[str, Any], address: str, wei: int) -> str:
    """Send ``wei`` contract units (wei; tinybar on a devnet in Hedera units) from the devnet
    faucet to ``address``; returns the transaction hash.

    ``chain`` is the ``"chain"`` block of devnet.json. Safe to call from several processes at
    once: the Ledger's nonce manager resyncs and retries when another sender took the nonce.
    """
    from fedswarm.ledger.evm import Ledger

    faucet = Ledger(
        rpc_url=chain["rpc_url"],
        contract_address=chain["contract_address"],
        account=Account.from_key(chain["faucet_key"]),
        units=ValueUnits.for_chain(chain),
        chain_id=int(chain["chain_id"]),
        retries=8,
    )
    return faucet.transfer(address, wei).tx_hash
