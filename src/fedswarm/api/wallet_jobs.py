"""What the job API adds for wallet users: who may see a job, the chain block of
``GET /api/v1/node``, and the funding, refund and result blocks of a job's detail."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from fedswarm.api.app import principal_of
from fedswarm.api.guard import Refusal
from fedswarm.roles.client import ClientRole, EscrowRecord, JobRecord
from fedswarm.roles.client.records import NODE_OWNER
from fedswarm.wallet_envelope import ENVELOPE

HEDERA_CHAINS = {295: "mainnet", 296: "testnet", 297: "previewnet"}


def check_owner(request: Request, job: JobRecord) -> JobRecord:
    """``job`` if the caller may see and control it: the node's credentials see every job, a
    wallet session only its own (403 otherwise)."""
    principal = principal_of(request)
    if principal.kind == "wallet" and principal.owner != job.owner:
        raise Refusal(403, "not-owner", f"job {job.job_id} belongs to another account")
    return job


def visible(request: Request, jobs: list[JobRecord]) -> list[JobRecord]:
    """The jobs the caller may list."""
    principal = principal_of(request)
    return [j for j in jobs if principal.kind != "wallet" or j.owner == principal.owner]


def chain_info(role: ClientRole) -> dict[str, Any]:
    """The ``chain`` block of ``GET /api/v1/node``: which chain, its currency and the decimals
    of amounts (contract units) and of transaction values, the explorer's URL template."""
    esc = role.escrow
    chain_id = int(esc.get_chain_id())
    hedera_units = esc.units.rpc_per_contract_unit != 1
    if role.settings.is_devnet:
        name = "devnet"
    elif chain_id in HEDERA_CHAINS:
        name = f"hedera-{HEDERA_CHAINS[chain_id]}"
    else:
        name = f"evm-{chain_id}"
    explorer = (f"https://hashscan.io/{HEDERA_CHAINS[chain_id]}/transaction/{{tx}}"
                if chain_id in HEDERA_CHAINS and not role.settings.is_devnet else None)
    return {"id": chain_id, "name": name, "currency": "HBAR" if hedera_units or chain_id in HEDERA_CHAINS else "ETH",
            "amount_decimals": 8 if hedera_units else 18, "value_decimals": 18, "explorer_tx": explorer,
            "contract": esc.contract_address, "operator": role.identity.address}


def wallet_detail(job: JobRecord, esc: EscrowRecord) -> dict[str, Any]:
    """Owner, funding call (while it matters), refund and result blocks of a job's detail."""
    refunds = [tx for tx in esc.txs if tx.kind in ("complete", "cancel", "release")]
    out: dict[str, Any] = {
        "owner": job.owner,
        "funding": job.funding if job.owner != NODE_OWNER else None,
        "refund": {"wei": str(esc.refunded_wei),
                   "released_at": int(esc.released_at) if esc.released_at else None,
                   "available_at": esc.release_at,
                   "tx": refunds[-1].tx_hash if refunds else None},
    }
    if job.result_key:
        wallet = job.owner != NODE_OWNER
        out["result"] = {"key": job.result_key, "sha256": job.result_sha256,
                         "plain_sha256": job.result_plain_sha256 if wallet else None,
                         "envelope": ENVELOPE if wallet else "fedswarm-box-v1",
                         "key_origin": job.terms.result_key_origin, "size": job.result_size}
    else:
        out["result"] = None
    return out
