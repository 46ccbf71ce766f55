"""`fedswarm node ...`, `fedswarm keys ...` and `fedswarm demo` (the network-level commands)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fedswarm.config import load_settings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    node = sub.add_parser("node", help="run a bootstrap, client or trainer node")
    node.add_argument("role", choices=["bootstrap", "client", "trainer"])
    node.add_argument("--home", type=Path, default=None, help="keys and state (default ~/.fedswarm/<role>)")
    node.add_argument("--listen", default=None, help="libp2p multiaddr (default /ip4/127.0.0.1/tcp/0; bootstrap: tcp/4001)")
    node.add_argument("--api", default=None, help="HTTP API HOST:PORT (default 127.0.0.1:0 = any free port)")
    node.add_argument("--bootstrap", action="append", default=None, help="bootstrap multiaddr with /p2p/<id> (repeatable; env BOOTSTRAP_ADDR)")
    node.add_argument("--devnet-home", type=Path, default=None, help="devnet directory (devnet.json) for store/ledger/audit endpoints")
    node.add_argument("--price-wei", type=int, default=None, help="trainer: asking price per work unit, in wei")
    node.add_argument("--no-gpu", action="store_true", help="trainer: never use a GPU")
    node.add_argument("--worker-idle", type=float, default=None, metavar="SECONDS",
                      help="trainer: stop the training worker after this long without work (default 120; 0 = keep it warm)")
    node.add_argument("--max-settle-window", type=int, default=None, metavar="SECONDS",
                      help="trainer: refuse jobs whose settle window (how long the client may hold our pay "
                           "before we claim it ourselves) is longer (default 86400)")
    node.add_argument("--max-client-rejection-rate", type=float, default=None, metavar="RATE",
                      help="trainer: do not bid for clients whose operator rejected more than this share "
                           "of at least 20 settled units on the escrow (default 0.5)")
    node.add_argument("--receipt-skew", type=int, default=None, metavar="SECONDS",
                      help="trainer: accept receipts issued at most this far from our clock (default 60)")
    node.add_argument("--public-api", default=None, metavar="URL",
                      help="client: the public URL of this node's API, advertised in the mesh summary so wallet "
                           "users can pick it as their delegate; wallet routes then answer any origin "
                           "(env FEDSWARM_PUBLIC_API)")
    node.add_argument("--heartbeat", type=float, default=None, help="heartbeat interval in seconds (default 1)")
    node.add_argument("--peer-timeout", type=float, default=None, help="seconds of silence before a peer is unresponsive (default 4)")
    node.set_defaults(func=cmd_node)

    keys = sub.add_parser("keys", help="show this node's identity")
    keys_sub = keys.add_subparsers(dest="keys_cmd", required=True)
    show = keys_sub.add_parser("show", help="print peer id, EVM address and box public key (creates keys if missing)")
    show.add_argument("--home", type=Path, default=None)
    show.add_argument("--name", default="client", help="node name under ~/.fedswarm when --home is not given")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_keys_show)


def cmd_node(args: argparse.Namespace, **role_classes: type) -> int:
    """Run the node until interrupted. ``role_classes`` (``trainer_cls=...``) swap a role's class:
    ``python -m fedswarm.testing.node`` passes its fault-injecting doubles this way."""
    import trio

    from fedswarm.api.runtime import run_node
    from fedswarm.protocol.messages import Role

    role = Role(args.role)
    default_listen = "/ip4/127.0.0.1/tcp/4001" if role == Role.BOOTSTRAP else None
    settings = load_settings(FEDSWARM_HOME=args.home, FEDSWARM_LISTEN=args.listen or default_listen,
                             FEDSWARM_API=args.api, FEDSWARM_DEVNET_HOME=args.devnet_home)
    home = settings.node_home(args.role)
    bootstrap = args.bootstrap or ([settings.bootstrap_addr] if settings.bootstrap_addr else [])
    if role != Role.BOOTSTRAP and not bootstrap:
        print("fedswarm: a client or trainer needs --bootstrap MULTIADDR (or BOOTSTRAP_ADDR)", file=sys.stderr)
        return 2
    opts = {"price_wei": args.price_wei, "allow_gpu": not args.no_gpu, "worker_idle_s": args.worker_idle,
            "max_settle_window_s": args.max_settle_window, "receipt_skew_s": args.receipt_skew,
            "max_client_rejection_rate": args.max_client_rejection_rate,
            "heartbeat_interval": args.heartbeat, "peer_timeout": args.peer_timeout,
            "public_api": args.public_api}
    trio.run(lambda: run_node(role, settings, home, bootstrap, **role_classes, **opts))
    return 0


def cmd_keys_show(args: argparse.Namespace) -> int:
    from fedswarm.identity import load_identity

    settings = load_settings(FEDSWARM_HOME=args.home)
    ident = load_identity(settings.node_home(args.name))
    out = {"peer_id": ident.peer_id, "address": ident.address, "box_public": ident.box_public_hex,
           "home": str(ident.home)}
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:11} {v}")
    return 0
