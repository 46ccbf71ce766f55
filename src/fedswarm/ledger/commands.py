"""`fedswarm ledger balance|withdraw|job`: look at and move a node's money on the escrow."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``ledger`` command group."""
    p = subparsers.add_parser("ledger", help="escrow contract: balances, withdrawals, jobs")
    sub = p.add_subparsers(dest="ledger_cmd", metavar="ACTION", required=True)

    bal = sub.add_parser("balance", help="the node wallet's balance and its withdrawable credit")
    bal.add_argument("--home", default=None, help="node home directory (its wallet key)")
    bal.add_argument("--json", action="store_true", help="print one JSON object")
    bal.set_defaults(func=_balance)

    wd = sub.add_parser("withdraw", help="move the node's pending credit to its wallet")
    wd.add_argument("--home", required=True, help="node home directory (its wallet key)")
    wd.set_defaults(func=_withdraw)

    job = sub.add_parser("job", help="a job's escrow state on chain")
    job.add_argument("job_id", help="0x + 64 hex digits, or a job name (hashed with keccak)")
    job.add_argument("--home", default=None, help="node home directory")
    job.add_argument("--json", action="store_true", help="print one JSON object")
    job.set_defaults(func=_job)


def _ledger(args: argparse.Namespace):
    from fedswarm.config import load_settings
    from fedswarm.identity import load_identity
    from fedswarm.ledger.factory import make_ledger

    settings = load_settings(FEDSWARM_HOME=args.home)
    home = Path(args.home).expanduser() if args.home else settings.node_home("client")
    return make_ledger(settings, load_identity(home))


def _fail(exc: Exception) -> int:
    print(f"fedswarm ledger: {exc}", file=sys.stderr)
    return 1


def _balance(args: argparse.Namespace) -> int:
    from fedswarm.ledger.evm import LedgerError

    try:
        ledger = _ledger(args)
        out = {"address": ledger.address, "wallet": ledger.balance(), "pending": ledger.pending()}
    except LedgerError as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"address {out['address']}\nwallet  {out['wallet']}\npending {out['pending']}")
    return 0


def _withdraw(args: argparse.Namespace) -> int:
    from fedswarm.ledger.evm import LedgerError

    try:
        ledger = _ledger(args)
        amount = ledger.pending()
        if amount == 0:
            print("nothing to withdraw: no pending credit for " + ledger.address)
            return 0
        receipt = ledger.withdraw()
    except LedgerError as exc:
        return _fail(exc)
    print(f"withdrew {amount} to {ledger.address} (tx {receipt.tx_hash})")
    return 0


def _job(args: argparse.Namespace) -> int:
    from fedswarm.ledger.evm import LedgerError, job_id_from

    try:
        job_id = job_id_from(args.job_id)
        info = _ledger(args).job(job_id)
    except (LedgerError, ValueError) as exc:
        return _fail(exc)
    out = {
        "job_id": "0x" + job_id.hex(),
        "owner": info.owner,
        "status": info.status.name.lower(),
        "deadline": info.deadline,
        "settle_window": info.settle_window,
        "commits": info.commits,
        "spec_hash": "0x" + info.spec_hash.hex(),
        "escrow": info.escrow,
        "reserved": info.reserved,
        "outstanding": info.outstanding,
    }
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:14} {v}")
    return 0 if info.status.value else 1
