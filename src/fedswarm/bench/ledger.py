"""`fedswarm bench ledger`: transactions/s and latency to receipt on anvil, through our Ledger
client and through a minimal raw web3.py loop in the same run, plus the audit-log numbers
(:func:`fedswarm.bench.audit.run`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from eth_account import Account
from web3 import Web3

from fedswarm.bench import audit


def _summary(latencies: list[float], wall: float) -> dict[str, float]:
    lat = sorted(latencies)
    return {
        "tx": len(lat),
        "tx_per_s": round(len(lat) / wall, 1),
        "latency_ms_p50": round(statistics.median(lat) * 1000, 2),
        "latency_ms_p95": round(lat[int(0.95 * (len(lat) - 1))] * 1000, 2),
    }


def bench_client(chain: dict[str, Any], n: int) -> dict[str, float]:
    """``n`` createJob transactions through :class:`~fedswarm.ledger.evm.Ledger`."""
    from fedswarm.ledger.evm import Ledger
    from fedswarm.ledger.hedera import ValueUnits

    ledger = Ledger(chain["rpc_url"], chain["contract_address"], Account.from_key(chain["deployer_key"]),
                    units=ValueUnits.for_chain(chain))
    deadline = int(time.time()) + 3600
    ledger.create_job(os.urandom(32), b"\0" * 32, deadline, 60, 1)  # warm caches (chain id, nonce)
    lat: list[float] = []
    t0 = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        ledger.create_job(os.urandom(32), b"\0" * 32, deadline, 60, 1)
        lat.append(time.perf_counter() - t)
    return _summary(lat, time.perf_counter() - t0)


def bench_raw(chain: dict[str, Any], n: int) -> dict[str, float]:
    """The floor: pre-encoded calls, cached nonce/chain id/gas price, fixed gas, tight polling."""
    from fedswarm.ledger.contract import load_artifact
    from fedswarm.ledger.hedera import ValueUnits

    w3 = Web3(Web3.HTTPProvider(chain["rpc_url"]))
    units = ValueUnits.for_chain(chain)
    acct = Account.from_key(chain["faucet_key"])
    contract = w3.eth.contract(address=chain["contract_address"], abi=load_artifact().abi)
    nonce = w3.eth.get_transaction_count(acct.address, "pending")
    gas_price = w3.eth.gas_price
    deadline = int(time.time()) + 3600
    lat: list[float] = []
    t0 = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        data = contract.functions.createJob(os.urandom(32), b"\0" * 32, deadline, 60)._encode_transaction_data()
        tx = {"to": contract.address, "data": data, "value": units.to_rpc(1), "gas": 200_000,
              "gasPrice": gas_price, "nonce": nonce, "chainId": int(chain["chain_id"])}
        h = w3.eth.send_raw_transaction(acct.sign_transaction(tx).raw_transaction)
        while True:
            try:
                w3.eth.get_transaction_receipt(h)
                break
            except Exception:
                time.sleep(0.001)
        nonce += 1
        lat.append(time.perf_counter() - t)
    return _summary(lat, time.perf_counter() - t0)


def run(quick: bool = False, workdir: Path | None = None) -> dict[str, Any]:
    """Start a scratch anvil, run both loops, stop it; returns the numbers."""
    from fedswarm.ledger.anvil import start_anvil

    n = 50 if quick else 300
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        proc, info = start_anvil(Path(tmp) / "anvil")
        try:
            chain = info["chain"]
            out: dict[str, Any] = {
                "chain": "anvil",
                "ledger_client": bench_client(chain, n),
                "raw_web3": bench_raw(chain, n),
            }
        finally:
            proc.terminate()
            proc.wait(10)
    out["audit"] = audit.run(quick)
    return out


def main(args: argparse.Namespace) -> int:
    """Entry point of ``fedswarm bench ledger``."""
    # The audit bench talks HTTP through httpx, which logs every request at INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    workdir = Path(args.workdir) if getattr(args, "workdir", None) else None
    if workdir:
        workdir.mkdir(parents=True, exist_ok=True)
    result = run(bool(getattr(args, "quick", False)), workdir)
    if getattr(args, "json", False):
        print(json.dumps(result))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="ledger on anvil (createJob, waited to receipt)")
    for col in ("path", "tx", "tx/s", "p50 ms", "p95 ms"):
        table.add_column(col)
    for name in ("ledger_client", "raw_web3"):
        r = result[name]
        table.add_row(name, str(r["tx"]), str(r["tx_per_s"]), str(r["latency_ms_p50"]), str(r["latency_ms_p95"]))
    console = Console()
    console.print(table)
    if result.get("audit") is not None:
        console.print({"audit": result["audit"]})
    return 0
