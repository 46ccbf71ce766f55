"""`fedswarm ...`: one entry point; each layer registers its own sub-commands.

A layer exposes ``register(subparsers)`` in its ``commands`` module; the command function is
stored as ``func`` on the parsed namespace and returns an exit code. Benchmarks live in the
``fedswarm.bench`` package, one module per layer with ``main(args) -> int``, and are reached as
``fedswarm bench LAYER``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules providing `register(subparsers)`; each keeps heavy imports (torch...) inside its
# command functions so that building the parser stays fast.
COMMAND_MODULES = [
    "fedswarm.commands_node",
    "fedswarm.devnet.commands",
    "fedswarm.storage.commands",
    "fedswarm.ledger.commands",
    "fedswarm.ledger.audit_commands",
    "fedswarm.learning.commands",
    "fedswarm.commands_job",
]

# `fedswarm bench NAME` -> the module (in the bench package, above every layer) whose main runs it.
BENCH_LAYERS = {
    "p2p": "fedswarm.bench.p2p",
    "storage": "fedswarm.bench.storage",
    "ledger": "fedswarm.bench.ledger",
    "learning": "fedswarm.bench.learning",
    "job": "fedswarm.bench.job",
    "all": "fedswarm.bench.all",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedswarm", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default INFO)")
    parser.add_argument("--log-json", action="store_true", default=None, help="JSON-lines logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for modname in COMMAND_MODULES:
        # every layer exists: a module that fails to import is a bug and stops the CLI loudly
        importlib.import_module(modname).register(sub)

    bench = sub.add_parser("bench", help="benchmarks of one layer against the machine's limits")
    bench.add_argument("layer", choices=sorted(BENCH_LAYERS))
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    bench.add_argument("--workdir", default=None, help="where scratch files go")
    bench.add_argument("--only", default=None, metavar="PARTS",
                       help="bench all: comma-separated parts to run (cells, warm, limits, scale; default all)")
    bench.add_argument("--scale", default=None, metavar="COUNTS",
                       help="bench all: trainer counts of the scale series (default 8,16,32; --quick: 8)")
    bench.set_defaults(func=_run_bench)
    return parser


def _run_bench(args: argparse.Namespace) -> int:
    mod = importlib.import_module(BENCH_LAYERS[args.layer])
    return int(mod.main(args) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    from fedswarm.config import ConfigError
    from fedswarm.logs import setup_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    setup_logging(args.log_level or "INFO", bool(args.log_json))
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"fedswarm: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
