"""`fedswarm devnet up|status|fund`: run the one-machine stand-in for Akave and Hedera.

``up`` starts the store, anvil (escrow deployed) and the topic log under ``--home`` (default
``~/.fedswarm/devnet``), prints their endpoints and stays in the foreground until Ctrl-C or
SIGTERM, then stops its children. Other shells reach it with the same ``--home`` (or
``FEDSWARM_DEVNET_HOME``).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import httpx

from fedswarm.devnet.services import (
    DEFAULT_BLOCK_TIME_S,
    SERVICES,
    DevnetError,
    endpoint_url,
    pid_alive,
)

DEFAULT_FUND_WEI = 1000 * 10**18
_CHECK_TIMEOUT_S = 3.0


def register(subparsers: Any) -> None:
    """Add ``devnet up|status|fund`` to the CLI."""
    devnet = subparsers.add_parser("devnet", help="local store + anvil + audit log on this machine")
    sub = devnet.add_subparsers(dest="devnet_command", metavar="ACTION")

    def home_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--home", type=Path, default=None,
                       help="devnet data and devnet.json (default ~/.fedswarm/devnet)")

    up = sub.add_parser("up", help="start the devnet and keep it running until Ctrl-C/SIGTERM")
    home_arg(up)
    up.add_argument("--fund", action="append", default=[], metavar="ADDR",
                    help="fund this address (or the wallet of this node home); repeatable")
    up.add_argument("--fund-wei", type=int, default=DEFAULT_FUND_WEI,
                    help=f"wei given to each --fund target (default {DEFAULT_FUND_WEI})")
    for name in SERVICES:
        up.add_argument(f"--{name}-port", type=int, default=None,
                        help=f"port of the {name} service (default: last run's, else any)")
    up.add_argument("--block-time", type=float, default=DEFAULT_BLOCK_TIME_S, metavar="SECONDS",
                    help=f"mine a block every SECONDS like Hedera (default {DEFAULT_BLOCK_TIME_S:g}; "
                         "0: mine on every transaction)")
    up.add_argument("--host", default="127.0.0.1",
                    help="address every service binds (default 127.0.0.1; another one only where other "
                         "machines or network namespaces must reach the devnet)")
    up.add_argument("--hedera-units", action="store_true",
                    help="Hedera's value units: the EVM holds tinybar and the RPC speaks weibar "
                         "(anvil behind a local relay); amounts given to the devnet are tinybar")
    up.set_defaults(func=cmd_up)

    st = sub.add_parser("status", help="check that each devnet endpoint answers")
    home_arg(st)
    st.add_argument("--json", action="store_true", help="print one JSON object")
    st.set_defaults(func=cmd_status)

    fund = sub.add_parser("fund", help="send devnet ETH from the faucet to an address")
    fund.add_argument("address", help="0x address, or a node home directory (its wallet)")
    fund.add_argument("--wei", type=int, required=True, help="amount in wei")
    home_arg(fund)
    fund.add_argument("--json", action="store_true", help="print one JSON object")
    fund.set_defaults(func=cmd_fund)

    devnet.set_defaults(func=lambda args: (devnet.print_help(), 2)[1])


def _home(args: argparse.Namespace) -> Path:
    from fedswarm.config import load_settings

    return load_settings(FEDSWARM_DEVNET_HOME=args.home).devnet_dir().resolve()


def _fail(msg: str) -> int:
    print(f"fedswarm: {msg}", file=sys.stderr)
    return 1


def resolve_fund_target(target: str) -> str:
    """An EVM address from ``target``: an address, or a node home holding ``wallet.key``."""
    from web3 import Web3

    if Web3.is_address(target):
        return str(Web3.to_checksum_address(target))
    path = Path(target).expanduser()
    if (path / "wallet.key").is_file():
        from fedswarm.identity import load_identity

        return load_identity(path).address
    raise DevnetError(f"{target!r} is neither an EVM address (0x + 40 hex digits) nor a node "
                      "home with a wallet.key")


# ---------------------------------------------------------------------- up


def cmd_up(args: argparse.Namespace) -> int:
    """Start the devnet, print its endpoints, run until SIGINT/SIGTERM/SIGHUP, then stop the
    children. Exit 1 if a service dies on its own (the others are stopped too)."""
    from rich.console import Console

    from fedswarm.devnet.services import Devnet

    if args.fund_wei <= 0:
        return _fail(f"--fund-wei must be a positive number of wei, got {args.fund_wei}")
    try:
        # Bad input changes nothing: resolve every target before starting anything.
        targets = [resolve_fund_target(t) for t in args.fund]
    except DevnetError as exc:
        return _fail(str(exc))
    ports = {s: p for s in SERVICES if (p := getattr(args, f"{s}_port")) is not None}

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    # Installed before starting, so a SIGTERM that arrives while services come up still ends
    # with every child stopped rather than orphaned.
    # SIGHUP too: closing the terminal should stop the devnet cleanly, not orphan anvil.
    old = {s: signal.signal(s, on_signal)
           for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    console = Console()
    try:
        try:
            devnet = Devnet.start(_home(args), ports, block_time=args.block_time, host=args.host,
                                  hedera_units=args.hedera_units)
        except DevnetError as exc:
            return _fail(str(exc))
        try:
            for address in targets:
                if stop.is_set():
                    break
                devnet.fund_node(address, args.fund_wei)
            if not stop.is_set():
                console.print(_endpoints_table(devnet.state, {n: True for n in SERVICES},
                                               title=f"devnet up in {devnet.start_seconds:.1f} s"))
                for address in targets:
                    console.print(f"funded {address} with {args.fund_wei} wei")
                console.print(f"other shells: --home {devnet.home}  (or FEDSWARM_DEVNET_HOME="
                              f"{devnet.home}); Ctrl-C stops the devnet")
                sys.stdout.flush()
            while not stop.wait(0.5):
                dead = devnet.dead_services()
                if dead and not stop.is_set():  # not the terminal's Ctrl-C reaching them
                    return _fail(f"devnet service(s) {', '.join(dead)} exited; see the logs "
                                 f"under {devnet.home}; stopping the rest")
            return 0
        except DevnetError as exc:
            return _fail(str(exc))
        finally:
            devnet.stop()
            console.print("devnet stopped", style="dim")
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


# ---------------------------------------------------------------------- status


def check_service(state: dict[str, Any], service: str) -> dict[str, Any]:
    """Probe one service of a devnet state: ``{"url", "pid", "alive", "answers", "detail"}``."""
    url = endpoint_url(state, service)
    pid = (state.get("pids") or {}).get(service)
    out: dict[str, Any] = {"url": url, "pid": pid, "alive": bool(pid) and pid_alive(int(pid)),
                           "answers": False, "detail": ""}
    if not url:
        out["detail"] = "not in devnet.json"
        return out
    try:
        if service == "chain":
            out.update(_check_chain(url, state.get("chain") or {}))
        else:
            path = "/healthz" if service == "store" else "/health"
            resp = httpx.get(url + path, timeout=_CHECK_TIMEOUT_S)
            out["answers"] = resp.status_code == 200
            out["detail"] = "ok" if out["answers"] else f"HTTP {resp.status_code}"
    except (httpx.HTTPError, ValueError, TypeError) as exc:
        out["detail"] = f"no answer ({type(exc).__name__})"
    return out


def _check_chain(url: str, chain: dict[str, Any]) -> dict[str, Any]:
    def rpc(method: str, params: list[Any]) -> Any:
        resp = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method,
                                     "params": params}, timeout=_CHECK_TIMEOUT_S)
        resp.raise_for_status()
        return resp.json().get("result")

    chain_id = int(rpc("eth_chainId", []), 16)
    if chain_id != int(chain.get("chain_id", -1)):
        return {"answers": False, "detail": f"chain id {chain_id}, expected {chain.get('chain_id')}"}
    addr = chain.get("contract_address")
    code = rpc("eth_getCode", [addr, "latest"]) if addr else None
    block = int(rpc("eth_blockNumber", []), 16)
    if not code or code == "0x":
        return {"answers": True, "detail": f"block {block}; NO CONTRACT at {addr}"}
    return {"answers": True, "detail": f"chain {chain_id}, block {block}, {_escrows(chain)}"}


def _escrows(chain: dict[str, Any]) -> str:
    """The escrow deployments and the block time, for the endpoints table."""
    bt = float(chain.get("block_time") or 0)
    return (f"escrow v2 {chain.get('escrow_v2_address')} (min claim window "
            f"{chain.get('escrow_v2_min_claim_window')} s), v1 {chain.get('contract_address')}, "
            + (f"a block every {bt:g} s" if bt else "a block per transaction"))


def cmd_status(args: argparse.Namespace) -> int:
    """Print whether each endpoint of the devnet at ``--home`` answers (exit 1 if any not)."""
    from fedswarm.config import load_devnet_state

    home = _home(args)
    state = load_devnet_state(home)  # ConfigError (one line) when there is none
    checks = {s: check_service(state, s) for s in SERVICES}
    ok = all(c["answers"] for c in checks.values())
    if args.json:
        print(json.dumps({"home": str(home), "ok": ok, "services": checks}))
        return 0 if ok else 1
    from rich.console import Console

    Console().print(_endpoints_table(state, {s: c["answers"] for s, c in checks.items()},
                                     details={s: c["detail"] for s, c in checks.items()},
                                     title=f"devnet at {home}: {'up' if ok else 'NOT all up'}"))
    return 0 if ok else 1


def _endpoints_table(state: dict[str, Any], up: dict[str, bool], *, title: str,
                     details: dict[str, str] | None = None) -> Any:
    from rich.table import Table

    chain = state.get("chain") or {}
    table = Table(title=title)
    for col in ("service", "endpoint", "pid", "state", "detail"):
        table.add_column(col)
    default_detail = {
        "store": f"data {(state.get('store') or {}).get('root', '')}",
        "chain": f"chain id {chain.get('chain_id')}, {_escrows(chain)}",
        "audit": f"db {(state.get('audit') or {}).get('db', '')}",
    }
    for s in SERVICES:
        pid = (state.get("pids") or {}).get(s)
        table.add_row(s, endpoint_url(state, s) or "-", str(pid or "-"),
                      "[green]up[/]" if up.get(s) else "[red]down[/]",
                      (details or {}).get(s) or default_detail[s])
    return table


# ---------------------------------------------------------------------- fund


def cmd_fund(args: argparse.Namespace) -> int:
    """Send ``--wei`` from the devnet faucet to ADDRESS (or a node home's wallet)."""
    from fedswarm.config import load_devnet_state
    from fedswarm.devnet.services import fund_address

    if args.wei <= 0:
        return _fail(f"--wei must be a positive number of wei, got {args.wei}")
    try:
        address = resolve_fund_target(args.address)
    except DevnetError as exc:
        return _fail(str(exc))
    home = _home(args)
    state = load_devnet_state(home)
    # A quick probe first: the funding client retries for ~20 s before giving up on a dead chain.
    probe = check_service(state, "chain")
    if not probe["answers"]:
        return _fail(f"the devnet chain at {probe['url']} does not answer ({probe['detail']}): "
                     f"start it with `fedswarm devnet up --home {home}`")
    try:
        tx = fund_address(state, address, args.wei)
    except DevnetError as exc:
        return _fail(str(exc))
    balance = _balance(state["chain"]["rpc_url"], address)
    if args.json:
        print(json.dumps({"address": address, "wei": args.wei, "tx_hash": tx, "balance": balance}))
    else:
        print(f"funded {address} with {args.wei} wei (tx {tx}); balance now {balance} wei")
    return 0


def _balance(url: str, address: str) -> int:
    resp = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_getBalance",
                                 "params": [address, "latest"]}, timeout=_CHECK_TIMEOUT_S)
    return int(resp.json()["result"], 16)
