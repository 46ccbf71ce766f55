"""``python -m fedswarm.testing.node ROLE --fault FAULT [the flags of fedswarm node]``.

The normal node (same flags, same runtime, same ``node.json``) with its role replaced by a
fault-injecting double: ``trainer --fault poison|lazy|sybil-lazy|copy|copy-source|inflate-samples|reverse``
(:mod:`.faults`) or
``client --fault never-settle`` (:mod:`.client`). ``fedswarm.roles.launcher`` starts it when
given ``fault=...``; ``fedswarm node`` itself has no ``--fault``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fedswarm.commands_node import cmd_node
from fedswarm.commands_node import register as register_node
from fedswarm.testing.faults import ClientFault, TrainerFault, faulty_trainer_class


def build_parser() -> argparse.ArgumentParser:
    """The ``fedswarm node`` parser, plus ``--fault`` (required)."""
    parser = argparse.ArgumentParser(prog="python -m fedswarm.testing.node",
                                     description="a fedswarm node whose role injects a fault")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    parser.add_argument("--log-json", action="store_true", help="JSON-lines logs")
    sub = parser.add_subparsers(dest="command", required=True)
    register_node(sub)
    node = sub.choices["node"]
    faults = [f.value for f in TrainerFault] + [f.value for f in ClientFault]
    node.add_argument("--fault", required=True, choices=faults,
                      help="trainer: poison, lazy, sybil-lazy, copy, copy-source, inflate-samples, "
                           "reverse; client: never-settle, misregister-price, misregister-absent")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``ROLE --fault F ...`` and run the node with the faulty role until interrupted."""
    from fedswarm.config import ConfigError
    from fedswarm.logs import setup_logging

    parser = build_parser()
    args = parser.parse_args(["node", *(sys.argv[1:] if argv is None else argv)])
    if args.role == "trainer" and args.fault in {f.value for f in TrainerFault}:
        classes: dict[str, type] = {"trainer_cls": faulty_trainer_class(args.fault)}
    elif args.role == "client" and args.fault in {f.value for f in ClientFault}:
        from fedswarm.testing.client import CLIENT_DOUBLES  # imports the client role only here

        classes = {"client_cls": CLIENT_DOUBLES[ClientFault(args.fault)]}
    else:
        parser.error(f"a {args.role} node has no fault {args.fault!r}")
    setup_logging(args.log_level, bool(args.log_json))
    try:
        return int(cmd_node(args, **classes) or 0)
    except ConfigError as exc:
        print(f"fedswarm: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
