"""`fedswarm bench job`'s chain side: each job's transactions by kind (from escrow v2's events,
not the client's records) and the block-time goals.

Settlement is off the round's path: a job costs one funding, settlement batches, one completion,
one release (and the parties' withdrawals), never a transaction per unit, and a devnet mining
every 2 s (like Hedera) should leave the steady round wall within 25 % of one mining per
transaction.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from eth_account import Account

from fedswarm.ledger.escrow import EscrowV2
from fedswarm.ledger.escrow_books import funded_jobs, job_books
from fedswarm.ledger.escrow_types import JobStatusV2
from fedswarm.ledger.hedera import ValueUnits

RELEASE_GRACE_S = 30.0  # after a job's release time, how long the client's settler may take


def count_transactions(net: Any, cells: list[dict[str, Any]]) -> None:
    """Wait until every cell's job is released (or its release time + RELEASE_GRACE_S passed),
    then add ``transactions``, ``gas``, ``released`` and ``units_total`` to each cell.
    ``net`` is a started :class:`~fedswarm.bench.job.JobNetwork`; its cells ran in order."""
    chain = net.devnet.state["chain"]
    escrow = EscrowV2(chain["rpc_url"], chain["escrow_v2_address"], Account.create(),
                      units=ValueUnits.for_chain(chain), chain_id=int(chain["chain_id"]), deploy_block=int(chain["escrow_v2_deploy_block"]))
    events = escrow.read_events()
    funded = funded_jobs(events, net.client.info["address"])
    keys = [bytes.fromhex(c["job_key"].removeprefix("0x")) if c.get("job_key") else
            (funded[i] if i < len(funded) else None) for i, c in enumerate(cells)]
    for key in keys:
        if key is not None:
            _wait_released(escrow, key)
    events = escrow.read_events()
    starts = {bytes(e.args["jobKey"]): e.block_number for e in events if e.name == "JobFunded"}
    for i, (cell, key) in enumerate(zip(cells, keys, strict=True)):
        cell["units_total"] = sum(r["units"] for r in cell["per_round"])
        if key is None:
            cell.update(transactions=None, gas=None, released=False)
            continue
        nxt = keys[i + 1] if i + 1 < len(keys) else None
        books = job_books(escrow, key, events, withdrawals_until=starts.get(nxt) if nxt else None)
        cell.update(job_key="0x" + key.hex(), transactions=books.transactions, gas=books.gas,
                    released=books.released, balanced=books.balanced)


def _wait_released(escrow: EscrowV2, key: bytes) -> None:
    while True:
        view = escrow.job(key)
        if view.status in (JobStatusV2.RELEASED, JobStatusV2.NONE):
            return
        if time.time() > view.release_at + RELEASE_GRACE_S:
            return
        time.sleep(1.0)


def block_time_goals(cells: list[dict[str, Any]], block_times: Sequence[float], ratio_goal: float,
                     noop_round_goal_s: float) -> dict[str, Any]:
    """Steady round wall per block time and their ratio for each cell run at both, the noop
    steady round at the slowest block time, and whether any job had a transaction per unit."""
    fast, slow = min(block_times), max(block_times)
    walls: dict[str, dict[str, float | None]] = {}
    for c in cells:
        name = f"{c['model']} {c['mode']}" + (f" reexec {c['reexec_fraction']}" if c["reexec_fraction"] else "")
        walls.setdefault(name, {})[f"{c['block_time']:g}"] = c["round_wall_s"]["median"]
    ratio: dict[str, float | None] = {}
    for name, by_bt in walls.items():
        a, b = by_bt.get(f"{fast:g}"), by_bt.get(f"{slow:g}")
        if a is not None and b is not None:
            ratio[name] = round(b / a, 3) if a > 0 else None
    noop = walls.get("mlp85k noop", {}).get(f"{slow:g}")
    per_unit = [c for c in cells if not _no_tx_per_unit(c)]
    return {"round_wall_s_by_block_time": walls, "block_time_ratio": ratio,
            "block_time_ratio_ok": bool(ratio) and all(r is not None and r <= ratio_goal for r in ratio.values()),
            "noop_round_s": noop, "noop_round_ok": noop is not None and noop <= noop_round_goal_s,
            "no_tx_per_unit": not per_unit and all(c.get("transactions") for c in cells)}


def _no_tx_per_unit(cell: dict[str, Any]) -> bool:
    tx = cell.get("transactions") or {}
    per_job = tx.get("fund", 0) == 1 and tx.get("complete", 0) == 1 and tx.get("release", 0) <= 1
    unit_bound = tx.get("settle", 0) + tx.get("claim", 0) < max(2, cell.get("units_total", 0))
    return per_job and unit_bound
