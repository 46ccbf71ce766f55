"""`fedswarm ledger balance|withdraw|release|job`: a node's money and jobs on the escrow.

New jobs live on FedSwarmEscrowV2 (the devnet's ``escrow_v2_address``, Hedera's
``CONTRACT_ID``); the first escrow (v1) is kept for jobs funded before v2. ``--contract ADDR``
points any command at another deployment, v1 or v2, e.g. to withdraw a balance left on an old
contract. ``release`` may be sent by anyone once the job's release time has passed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedswarm.config import ConfigError, Settings
from fedswarm.identity import Identity
from fedswarm.ledger.escrow import EscrowV2
from fedswarm.ledger.escrow_types import JobStatusV2
from fedswarm.ledger.evm import Ledger, LedgerError


def register(subparsers: Any) -> None:
    """Add the ``ledger`` command group."""
    p = subparsers.add_parser("ledger", help="escrow contract: balances, withdrawals, jobs")
    sub = p.add_subparsers(dest="ledger_cmd", metavar="ACTION", required=True)

    def common(q: argparse.ArgumentParser, home_required: bool = False) -> None:
        q.add_argument("--home", required=home_required, default=None,
                       help="node home directory (its wallet key; default ~/.fedswarm/client)")
        q.add_argument("--devnet-home", type=Path, default=None,
                       help="devnet home (default FEDSWARM_DEVNET_HOME or ~/.fedswarm/devnet)")
        q.add_argument("--contract", default=None, metavar="ADDR",
                       help="escrow deployment to use (default: the current v2 escrow)")
        q.add_argument("--json", action="store_true", help="print one JSON object")

    bal = sub.add_parser("balance", help="the wallet's balance and its withdrawable credit on each escrow")
    common(bal)
    bal.set_defaults(func=_balance)

    wd = sub.add_parser("withdraw", help="move the node's credit on the escrow(s) to its wallet")
    common(wd, home_required=True)
    wd.set_defaults(func=_withdraw)

    rel = sub.add_parser("release", help="return what a job still holds to its payer (anyone, after its release time)")
    rel.add_argument("job_key", metavar="JOBKEY", help="the v2 job key: 0x + 64 hex digits")
    common(rel)
    rel.set_defaults(func=_release)

    job = sub.add_parser("job", help="a job's escrow state on chain (v2 job key; v1 with --contract)")
    job.add_argument("job_key", metavar="JOBKEY",
                     help="0x + 64 hex digits (v1 with --contract: also a job name, hashed with keccak)")
    common(job)
    job.set_defaults(func=_job)

    from fedswarm.ledger.deploy import register_deploy  # the deploy command lives with deploy()

    register_deploy(sub)


# ---------------------------------------------------------------------- plumbing


def _settings(args: argparse.Namespace) -> Settings:
    from fedswarm.config import load_settings

    return load_settings(FEDSWARM_HOME=args.home, FEDSWARM_DEVNET_HOME=args.devnet_home)


def _identity(args: argparse.Namespace, settings: Settings) -> Identity:
    from fedswarm.identity import load_identity

    home = Path(args.home).expanduser() if args.home else settings.node_home("client")
    return load_identity(home)


def _deployments(settings: Settings) -> dict[str, str]:
    """Known escrow deployments by label: ``{"v2": addr, "v1": addr}`` (v1 only on the devnet,
    where devnet.json records both)."""
    if settings.is_devnet:
        chain = settings.devnet_state().get("chain") or {}
        return {k: chain[f] for k, f in (("v2", "escrow_v2_address"), ("v1", "contract_address"))
                if chain.get(f)}
    return {"v2": settings.contract_id or ""}


def _escrow(args: argparse.Namespace, settings: Settings, identity: Identity,
            address: str | None = None) -> EscrowV2:
    from fedswarm.ledger.factory import make_escrow

    base = make_escrow(settings, identity)
    target = address or args.contract
    if not target or target.lower() == base.contract_address.lower():
        return base
    return EscrowV2(rpc_url=base.rpc_url, contract_address=_address(target), account=base.account,
                    units=base.units, chain_id=base.chain_id, receipt_timeout=base.receipt_timeout)


def _address(text: str) -> str:
    from web3 import Web3

    if not Web3.is_address(text):
        raise ConfigError(f"--contract {text!r} is not an EVM address (0x + 40 hex digits)")
    return str(Web3.to_checksum_address(text))


def _kind(escrow: EscrowV2) -> str:
    """``v1``, ``v2`` or ``none`` (no code) for the deployment ``escrow`` points at."""
    from fedswarm.ledger.contract import load_artifact

    code = bytes(escrow.w3.eth.get_code(escrow.contract_address))
    if not code:
        return "none"
    if "0x" + code.hex() == load_artifact().deployed_bytecode.lower():
        return "v1"
    return "v2"


def _job_key(text: str) -> bytes:
    t = text.strip().lower().removeprefix("0x")
    if len(t) != 64 or any(c not in "0123456789abcdef" for c in t):
        raise ConfigError(f"{text!r} is not a job key: give 0x followed by 64 hex digits "
                          "(`fedswarm job status JOB --json` shows it as job_key)")
    return bytes.fromhex(t)


def _when(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "-"


def _fail(exc: Exception) -> int:
    print(f"fedswarm ledger: {exc}", file=sys.stderr)
    return 1


def _print(out: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(out))
        return
    for k, v in out.items():
        print(f"{k:18} {v}")


# ---------------------------------------------------------------------- balance, withdraw


def _balance(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
        identity = _identity(args, settings)
        escrow = _escrow(args, settings, identity)
        targets = ({"contract": escrow.contract_address} if args.contract
                   else _deployments(settings))
        pending = {label: _escrow(args, settings, identity, addr).pending()
                   for label, addr in targets.items() if addr}
        out = {"address": escrow.address, "wallet": escrow.balance(),
               **{f"pending_{label}": amount for label, amount in pending.items()},
               "contracts": targets}
    except (LedgerError, ConfigError, ValueError) as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"address   {out['address']}\nwallet    {out['wallet']}")
        for label, amount in pending.items():
            print(f"pending   {amount} on {label} {targets[label]}")
    return 0


def _withdraw(args: argparse.Namespace) -> int:
    """Withdraw the credit on ``--contract`` (v1 or v2), else on every known deployment."""
    try:
        settings = _settings(args)
        identity = _identity(args, settings)
        targets = ({"contract": _address(args.contract)} if args.contract
                   else _deployments(settings))
        done: list[dict[str, Any]] = []
        for addr in targets.values():
            escrow = _escrow(args, settings, identity, addr)
            kind = _kind(escrow)
            if kind == "none":
                raise ConfigError(f"no escrow contract at {addr}: check --contract and the network")
            # v1 and v2 share withdraw() and pending(address), so one client serves both.
            amount = escrow.pending()
            if amount == 0:
                done.append({"contract": addr, "kind": kind, "withdrawn": 0, "tx": None})
                continue
            receipt = escrow.withdraw()
            done.append({"contract": addr, "kind": kind, "withdrawn": amount, "tx": receipt.tx_hash})
    except (LedgerError, ConfigError, ValueError) as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps({"address": identity.address, "withdrawals": done}))
        return 0
    for d in done:
        if d["withdrawn"]:
            print(f"withdrew {d['withdrawn']} from {d['kind']} escrow {d['contract']} to "
                  f"{identity.address} (tx {d['tx']})")
        else:
            print(f"nothing to withdraw on {d['kind']} escrow {d['contract']} for {identity.address}")
    return 0


# ---------------------------------------------------------------------- release, job


def _release(args: argparse.Namespace) -> int:
    """Send ``release`` for a v2 job; a one-line error saying when if it is too early."""
    try:
        key = _job_key(args.job_key)
        settings = _settings(args)
        escrow = _escrow(args, settings, _identity(args, settings))
        if _kind(escrow) != "v2":
            raise ConfigError(f"{escrow.contract_address} is not a v2 escrow: only v2 jobs are released "
                              "(v1 jobs pay out through withdraw)")
        view = escrow.job(key)
        if view.status == JobStatusV2.NONE:
            raise ConfigError(f"no job 0x{key.hex()} on escrow {escrow.contract_address}")
        if view.status == JobStatusV2.RELEASED:
            raise ConfigError(f"job 0x{key.hex()} was already released; its payer withdraws the refund "
                              "with `fedswarm ledger withdraw`")
        # The contract wants block time > release time; a new block is stamped about now.
        now = max(int(time.time()), escrow.chain_time())
        if now <= view.release_at:
            raise ConfigError(
                f"job 0x{key.hex()} cannot be released before {_when(view.release_at + 1)} "
                f"(in {view.release_at + 1 - now} s: closed {_when(view.close_at)} + settle window "
                f"{view.settle_window} s + claim window {view.claim_window} s); try again then")
        before = view.escrow
        receipt = escrow.release(key)
    except (LedgerError, ConfigError, ValueError) as exc:
        return _fail(exc)
    out = {"job_key": "0x" + key.hex(), "refund": before, "payer": view.payer, "tx": receipt.tx_hash}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"released job 0x{key.hex()}: {before} back to its payer {view.payer}'s withdrawable "
              f"credit (tx {receipt.tx_hash})")
    return 0


def _job(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
        escrow = _escrow(args, settings, _identity(args, settings))
        kind = _kind(escrow)
        if kind == "none":
            raise ConfigError(f"no escrow contract at {escrow.contract_address}: check --contract")
        if kind == "v1":
            return _job_v1(args, escrow)
        key = _job_key(args.job_key)
        view = escrow.job(key)
        if view.status == JobStatusV2.NONE:
            raise ConfigError(f"no job 0x{key.hex()} on escrow {escrow.contract_address}")
        out: dict[str, Any] = {
            "job_key": "0x" + key.hex(), "contract": escrow.contract_address,
            "payer": view.payer, "operator": view.operator, "status": view.status.name.lower(),
            "deadline": view.deadline, "close_at": view.close_at,
            "settle_window": view.settle_window, "claim_window": view.claim_window,
            "release_at": view.release_at, "escrow": view.escrow, "free": view.free,
            "reserved": view.reserved, "price_cap": view.price_cap, "unit_budget": view.unit_budget,
            "units_registered": view.units_registered, "units_done": view.units_done,
        }
        if view.status == JobStatusV2.RELEASED:
            from fedswarm.ledger.escrow_books import job_books

            books = job_books(escrow, key, with_gas=False)
            out["released_refund"] = books.released_refund
            out["refunded_total"] = books.refunded
    except (LedgerError, ConfigError, ValueError) as exc:
        return _fail(exc)
    if not args.json:
        for k in ("deadline", "close_at", "release_at"):
            out[k] = f"{out[k]} ({_when(out[k])})"
    _print(out, args.json)
    return 0


def _job_v1(args: argparse.Namespace, escrow: EscrowV2) -> int:
    """A job on the first escrow (v1), for jobs funded before v2."""
    from fedswarm.ledger.evm import job_id_from

    job_id = job_id_from(args.job_key)
    ledger = Ledger(rpc_url=escrow.rpc_url, contract_address=escrow.contract_address,
                    account=escrow.account, units=escrow.units, chain_id=escrow.chain_id)
    info = ledger.job(job_id)
    out = {
        "job_id": "0x" + job_id.hex(), "contract": escrow.contract_address, "owner": info.owner,
        "status": info.status.name.lower(), "deadline": info.deadline,
        "settle_window": info.settle_window, "commits": info.commits,
        "spec_hash": "0x" + info.spec_hash.hex(), "escrow": info.escrow,
        "reserved": info.reserved, "outstanding": info.outstanding,
    }
    _print(out, args.json)
    return 0 if info.status.value else 1
