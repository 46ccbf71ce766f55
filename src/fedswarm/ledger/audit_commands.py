"""`fedswarm audit ...`: create topics, tail a topic live with verification, check saved pages."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any

from fedswarm.ledger.runninghash import HASH_SIZE, ZERO_HASH


def register(subparsers: Any) -> None:
    """Add ``audit tail``, ``audit verify``, ``audit page`` and ``audit topic create``."""
    audit = subparsers.add_parser("audit", help="the audit topic log (HCS / devnet)")
    sub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--home", default=None, help="devnet home (default ~/.fedswarm/devnet)")
        p.add_argument("--network", default=None, help="devnet, testnet, mainnet, previewnet")

    tail = sub.add_parser("tail", help="print a topic's messages live, verifying the hash chain")
    tail.add_argument("topic", help="topic id 0.0.N")
    tail.add_argument("--from", dest="from_seq", type=int, default=0,
                      help="start after this sequence number (its hash is the anchor)")
    tail.add_argument("--prev-hash", default=None, help="running hash (hex) before --from")
    tail.add_argument("--no-follow", action="store_true", help="stop when caught up")
    tail.add_argument("--interval", type=float, default=1.0, help="poll interval in seconds")
    common(tail)
    tail.set_defaults(func=_tail)

    verify = sub.add_parser("verify", help="check a saved mirror-node page; exit 1 if it fails")
    verify.add_argument("file", help="JSON file: a mirror page or a list of messages")
    verify.add_argument("--prev-hash", default=ZERO_HASH.hex(),
                        help="running hash (hex) before the first message (default: new topic)")
    verify.add_argument("--prev-seq", type=int, default=None, help="sequence number before it")
    verify.set_defaults(func=_verify)

    page = sub.add_parser("page", help="print one mirror-node page as JSON (to save and verify)")
    page.add_argument("topic")
    page.add_argument("--after", type=int, default=0)
    page.add_argument("--limit", type=int, default=100)
    common(page)
    page.set_defaults(func=_page)

    topic = sub.add_parser("topic", help="topics")
    tsub = topic.add_subparsers(dest="topic_command", metavar="ACTION", required=True)
    create = tsub.add_parser("create", help="create a topic and print TOPIC_ID=<id> (no submit key: readers check signed envelopes)")
    create.add_argument("--memo", default="")
    create.add_argument("--node-home", default=None, help="node home whose key signs (devnet)")
    common(create)
    create.set_defaults(func=_create)


def _log(args: argparse.Namespace, with_identity: bool = False) -> Any:
    import logging

    from fedswarm.config import load_settings
    from fedswarm.ledger.audit_factory import make_audit_log

    # httpx logs every request at INFO: one line per poll would drown the tail output.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    overrides: dict[str, Any] = {"FEDSWARM_DEVNET_HOME": args.home, "network": args.network}
    settings = load_settings(**overrides)
    identity = None
    if with_identity and settings.is_devnet:
        from fedswarm.identity import load_identity

        node_home = Path(args.node_home) if args.node_home else settings.node_home("cli")
        identity = load_identity(node_home)
    return make_audit_log(settings, identity)


def _parse_hash(text: str) -> bytes:
    try:
        value = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        value = b""
    if len(value) != HASH_SIZE:
        from fedswarm.config import ConfigError

        raise ConfigError(f"--prev-hash must be {HASH_SIZE} bytes of hex (96 digits), got {text!r}")
    return value


def _preview(msg: dict[str, Any], width: int = 60) -> str:
    try:
        data = base64.b64decode(msg["message"])
        text = data.decode("utf-8")
    except (ValueError, KeyError):
        return "<binary>"
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _tail(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from fedswarm.ledger.audit import AuditError
    from fedswarm.ledger.verify import ChainVerifier, VerificationError

    console = Console()
    log = _log(args)
    prev_hash, prev_seq = ZERO_HASH, args.from_seq
    try:
        if args.prev_hash:
            prev_hash = _parse_hash(args.prev_hash)
        elif args.from_seq > 0:
            # Anchor on the message at --from: later messages are verified relative to it.
            anchor = log.read(args.topic, after_seq=args.from_seq - 1, limit=1).messages
            if not anchor or anchor[0].get("sequence_number") != args.from_seq:
                console.print(f"[red]no message {args.from_seq} on {args.topic}[/red]")
                return 1
            prev_hash = base64.b64decode(anchor[0]["running_hash"])
            console.print(f"[yellow]anchored at sequence {args.from_seq} (trusted, not verified)")
        verifier = ChainVerifier(prev_hash, prev_seq, args.topic)
        failures = 0
        console.print(f"[bold]{args.topic}[/bold]  seq  consensus time  payer  status  message")
        for msg in log.iter_raw(args.topic, args.from_seq, follow=not args.no_follow,
                                poll_interval=args.interval):
            try:
                verifier.check(msg)
                status = "[green]✓ verified[/green]"
            except VerificationError as exc:
                failures += 1
                status = f"[red]✗ {escape(exc.reason)}[/red]"
                # Continue the chain from the claimed values so later messages still report.
                verifier = ChainVerifier(
                    base64.b64decode(msg.get("running_hash", "")) or ZERO_HASH,
                    msg.get("sequence_number"), args.topic,
                )
            chunk = msg.get("chunk_info")
            part = f" [{chunk['number']}/{chunk['total']}]" if isinstance(chunk, dict) else ""
            console.print(
                f"{msg.get('sequence_number'):>6}  {msg.get('consensus_timestamp')}  "
                f"{msg.get('payer_account_id')}  {status}  {escape(_preview(msg))}{part}"
            )
    except AuditError as exc:
        print(f"fedswarm: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 1 if failures else 0


def _verify(args: argparse.Namespace) -> int:
    from fedswarm.ledger.verify import verify_page
    from fedswarm.protocol.decode import MAX_MIRROR_JSON, decode_json

    try:
        # A saved mirror page is outside input too: bounded size and nesting.
        data = decode_json(Path(args.file).read_bytes(), max_bytes=MAX_MIRROR_JSON, what=args.file)
    except (OSError, ValueError) as exc:
        print(f"fedswarm: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    if isinstance(data, list):
        data = {"messages": data}
    try:
        result = verify_page(data, _parse_hash(args.prev_hash), prev_sequence=args.prev_seq)
    except ValueError as exc:
        print(f"fedswarm: {args.file}: {exc}", file=sys.stderr)
        return 2
    print(result.describe())
    return 0 if result.ok else 1


def _page(args: argparse.Namespace) -> int:
    from fedswarm.ledger.audit import AuditError

    try:
        page = _log(args).read(args.topic, after_seq=args.after, limit=args.limit)
    except AuditError as exc:
        print(f"fedswarm: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(page.to_json(), indent=2))
    return 0


def _create(args: argparse.Namespace) -> int:
    from fedswarm.ledger.audit import AuditError

    try:
        topic = _log(args, with_identity=True).create_topic(args.memo)
    except AuditError as exc:
        print(f"fedswarm: {exc}", file=sys.stderr)
        return 2
    # Node-level audit logs go to TOPIC_ID; each job still gets its own topic from its client.
    print(f"TOPIC_ID={topic}")
    return 0
