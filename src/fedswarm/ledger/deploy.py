"""Deploy the escrow contract to a network and check what landed: `fedswarm ledger deploy`.

One path for anvil and Hedera: the creation transaction is built from the committed artifact,
signed locally (Hedera's JSON-RPC relay cannot sign) and sent raw; the receipt gives the
address and block; the runtime code read back must be the artifact's ``deployedBytecode``
except where the compiler left zeros for immutables (the v2 escrow's EIP-712 domain and claim
window are filled in by the constructor). On Hedera the contract's ``0.0.N`` id is asked of the
mirror node (``GET /api/v1/contracts/{address}``); a long-zero address converts directly.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import TransactionNotFound

from fedswarm.ledger.contract import ContractArtifact, load_artifact
from fedswarm.ledger.escrow_types import V2_CONTRACT_NAME
from fedswarm.ledger.hedera import explain_relay_error

CONTRACTS = {"v2": V2_CONTRACT_NAME, "v1": "FedSwarmEscrow"}
PRODUCTION_MIN_CLAIM_WINDOW = 3600  # a trainer has at least an hour to claim on a real network
HEDERA_GAS_CAP = 15_000_000  # per-transaction gas limit of Hedera's EVM at the time of writing
_IMMUTABLE_RUN = 32  # solc writes an immutable's slot as 32 zero bytes in deployedBytecode


class DeployError(RuntimeError):
    """Deployment failed or deployed something else; the message says what to do."""


@dataclass(frozen=True)
class Deployment:
    """Where the contract landed (``contract_id``: Hedera's ``0.0.N`` when known)."""

    contract: str
    contract_address: str
    contract_id: str | None
    block: int
    tx_hash: str
    min_claim_window: int | None

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` object."""
        return asdict(self)


def immutable_mask(deployed_hex: str) -> list[bool]:
    """Per byte of the artifact's runtime code: whether it may differ once deployed (inside a
    run of at least 32 zero bytes, where solc leaves immutables to the constructor)."""
    code = bytes(HexBytes(deployed_hex))
    mask = [False] * len(code)
    i = 0
    while i < len(code):
        if code[i] != 0:
            i += 1
            continue
        j = i
        while j < len(code) and code[j] == 0:
            j += 1
        if j - i >= _IMMUTABLE_RUN:
            mask[i:j] = [True] * (j - i)
        i = j
    return mask


def runtime_matches(artifact: ContractArtifact, code: bytes) -> bool:
    """Whether deployed ``code`` is the artifact's runtime code, immutables aside."""
    expected = bytes(HexBytes(artifact.deployed_bytecode))
    if len(code) != len(expected):
        return False
    mask = immutable_mask(artifact.deployed_bytecode)
    return all(a == b or mask[i] for i, (a, b) in enumerate(zip(expected, code, strict=True)))


def long_zero_id(address: str) -> str | None:
    """``0.0.N`` when ``address`` is a long-zero EVM address (shard and realm 0), else None."""
    raw = bytes(HexBytes(address))
    if len(raw) == 20 and raw[:12] == bytes(12):
        return f"0.0.{int.from_bytes(raw[12:], 'big')}"
    return None


def mirror_contract_id(mirror_url: str, address: str, timeout: float = 30.0) -> str | None:
    """The contract's ``0.0.N`` from the mirror node (None when it does not know it yet)."""
    try:
        r = httpx.get(f"{mirror_url.rstrip('/')}/api/v1/contracts/{address.lower()}", timeout=timeout)
        if r.status_code != 200:
            return None
        value = r.json().get("contract_id")
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def deploy(
    w3: Web3,
    account: LocalAccount,
    *,
    contract: str = "v2",
    min_claim_window: int = PRODUCTION_MIN_CLAIM_WINDOW,
    chain_id: int | None = None,
    receipt_timeout: float = 120.0,
    gas_cap: int | None = None,
    mirror_url: str | None = None,
) -> Deployment:
    """Deploy escrow ``contract`` (``v2``: with ``min_claim_window``; ``v1``) signed by
    ``account``, wait for the receipt, check the runtime code; ``mirror_url`` (Hedera) names
    the mirror node asked for the ``0.0.N`` id."""
    if contract not in CONTRACTS:
        raise DeployError(f"unknown contract {contract!r}: use v2 or v1")
    artifact = load_artifact(CONTRACTS[contract])
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    ctor = factory.constructor(min_claim_window) if contract == "v2" else factory.constructor()
    try:
        chain_id = chain_id or int(w3.eth.chain_id)
        tx: dict[str, Any] = {
            "from": account.address, "chainId": chain_id, "value": 0,
            "data": ctor.data_in_transaction,
            "nonce": w3.eth.get_transaction_count(account.address, "pending"),
            "gasPrice": int(w3.eth.gas_price),
        }
        gas = int(w3.eth.estimate_gas(tx) * 1.2)
        tx["gas"] = min(gas, gas_cap) if gas_cap else gas
        tx_hash = w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
    except DeployError:
        raise
    except Exception as exc:  # web3 raises many types; the relay's text says what happened
        raise DeployError(f"deploying {artifact.name} failed: {explain_relay_error(exc)}") from None
    receipt = _wait_receipt(w3, tx_hash, receipt_timeout)
    if int(receipt["status"]) != 1:
        raise DeployError(f"deploying {artifact.name} reverted (tx {HexBytes(tx_hash).to_0x_hex()}):"
                          " the gas limit or the constructor argument is wrong")
    address = Web3.to_checksum_address(receipt["contractAddress"])
    code = _read_code(w3, address, receipt_timeout)
    if not runtime_matches(artifact, code):
        raise DeployError(f"the code at {address} is not {artifact.name} from this release"
                          " (runtime bytecode differs beyond immutables): do not use it")
    contract_id = long_zero_id(address) or (mirror_contract_id(mirror_url, address) if mirror_url else None)
    return Deployment(contract, address, contract_id, int(receipt["blockNumber"]),
                      HexBytes(tx_hash).to_0x_hex(), min_claim_window if contract == "v2" else None)


def _wait_receipt(w3: Web3, tx_hash: bytes, timeout: float) -> Any:
    # Hedera's receipts come from the mirror node seconds after consensus: poll gently.
    deadline, delay = time.monotonic() + timeout, 0.05
    while True:
        try:
            receipt = w3.eth.get_transaction_receipt(tx_hash)
            if receipt is not None:
                return receipt
        except TransactionNotFound:
            pass
        if time.monotonic() > deadline:
            raise DeployError(f"no receipt for {HexBytes(tx_hash).to_0x_hex()} after {timeout:.0f} s:"
                              " look the transaction up on the explorer before deploying again")
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)


def _read_code(w3: Web3, address: str, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        code = bytes(w3.eth.get_code(address))  # type: ignore[arg-type]
        if code or time.monotonic() > deadline:
            return code
        time.sleep(1.0)  # the mirror node may not have the contract yet


# ---------------------------------------------------------------- `fedswarm ledger deploy`


def register_deploy(sub: Any) -> None:
    """Add ``ledger deploy`` to the ``ledger`` sub-parsers."""
    p = sub.add_parser("deploy", help="deploy the escrow contract to the configured network and print CONTRACT_ID")
    p.add_argument("--devnet-home", type=Path, default=None,
                   help="devnet home (default FEDSWARM_DEVNET_HOME or ~/.fedswarm/devnet)")
    p.add_argument("--contract", choices=sorted(CONTRACTS), default="v2", help="which escrow (default v2)")
    p.add_argument("--min-claim-window", type=int, default=None,
                   help="v2's floor on a job's claim window in seconds (default 3600; devnet 10)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: contract_address, contract_id, block, tx_hash")
    p.set_defaults(func=run_deploy)


def run_deploy(args: argparse.Namespace) -> int:
    """Deploy with the devnet's faucet key (devnet) or OPERATOR_KEY through the relay (Hedera)."""
    from eth_account import Account

    from fedswarm.config import load_settings
    from fedswarm.ledger.anvil import DEVNET_MIN_CLAIM_WINDOW
    from fedswarm.ledger.factory import evm_signer
    from fedswarm.ledger.hedera import MIRROR_URLS, HederaConfigError, chain_id_for, relay_url_for

    settings = load_settings(FEDSWARM_DEVNET_HOME=args.devnet_home)
    try:
        if settings.is_devnet:
            chain = settings.devnet_state().get("chain") or {}
            rpc, account = chain["rpc_url"], Account.from_key(chain["faucet_key"])
            chain_id, mirror, cap = int(chain["chain_id"]), None, None
            window = args.min_claim_window or DEVNET_MIN_CLAIM_WINDOW
        else:
            rpc, account = relay_url_for(settings.network, settings.relay_url), evm_signer(settings, None)
            chain_id, cap = chain_id_for(settings.network), HEDERA_GAS_CAP
            mirror = settings.mirror_url or MIRROR_URLS[settings.network]
            window = args.min_claim_window or PRODUCTION_MIN_CLAIM_WINDOW
        w3 = Web3(Web3.HTTPProvider(rpc, request_kwargs={"timeout": 60}))
        dep = deploy(w3, account, contract=args.contract, min_claim_window=window, chain_id=chain_id,
                     gas_cap=cap, mirror_url=mirror)
    except (DeployError, HederaConfigError, KeyError) as exc:
        print(f"fedswarm: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(dep.to_json()))
        return 0
    print(f"CONTRACT_ID={dep.contract_id or dep.contract_address}")
    print(f"  address {dep.contract_address}" + (f"  id {dep.contract_id}" if dep.contract_id else ""))
    if mirror and not dep.contract_id:
        print(f"  the mirror node has no 0.0.N id yet: look it up later at {mirror}/api/v1/contracts/{dep.contract_address}")
    print(f"  deployed {CONTRACTS[dep.contract]} at block {dep.block} (tx {dep.tx_hash})"
          + (f", min claim window {dep.min_claim_window} s" if dep.min_claim_window else ""))
    print(f"CONTRACT_BLOCK={dep.block}")
    print("  set CONTRACT_ID and CONTRACT_BLOCK on every node: event scans start at that block")
    return 0
