"""Run one node process: identity, the libp2p node, its role and its HTTP API in one trio loop.

When the node is up it writes ``HOME/node.json`` (peer id, multiaddrs, API URL, pid) so that
scripts, tests and ``fedswarm demo`` can find it without parsing logs.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from fastapi import APIRouter

from fedswarm.api.app import CommandFn, create_app, is_loopback, serve_api
from fedswarm.config import NODE_INFO_FILE, ConfigError, Settings, read_node_info, write_node_info
from fedswarm.identity import load_identity
from fedswarm.p2p.node import Node
from fedswarm.protocol.messages import Role

if TYPE_CHECKING:
    from fedswarm.roles.trainer import Trainer

log = logging.getLogger("fedswarm.node")
# node.json lives in config (the lowest layer) so that roles.launcher can find nodes too.
__all__ = ["NODE_INFO_FILE", "RoleParts", "build_role", "parse_api", "read_node_info", "run_node",
           "write_node_info"]


@dataclass
class RoleParts:
    """What a role adds to the plain node: API routes, /command verbs, background tasks."""

    routers: list[APIRouter] = field(default_factory=list)
    commands: dict[str, CommandFn] = field(default_factory=dict)
    status: Any = None
    tasks: list[Any] = field(default_factory=list)  # async callables started in the node nursery


def parse_api(api: str) -> tuple[str, int]:
    host, _, port = api.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--api must be HOST:PORT, got {api!r}")
    return host, int(port)


async def run_node(role: Role, settings: Settings, home: Path, bootstrap: list[str], *,
                   trainer_cls: type[Trainer] | None = None, **role_opts: Any) -> None:
    """Start the node of ``role`` and serve until cancelled.

    ``trainer_cls`` replaces the trainer's class (the fault-injecting doubles of
    ``fedswarm.testing`` come in this way).
    """
    identity = load_identity(home)
    api_host, api_port = parse_api(settings.api)
    token = settings.api_token.get_secret_value() if settings.api_token else None
    if not is_loopback(api_host) and not token:
        raise ConfigError(f"binding the API to {api_host} needs an API token: set FEDSWARM_API_TOKEN")

    node = Node(identity, role, settings.listen, bootstrap, **_node_opts(role, role_opts))
    parts = await build_role(role, node, settings, home, role_opts, trainer_cls=trainer_cls)
    app = create_app(node, token=token, extra_routers=parts.routers,
                     extra_commands=parts.commands, status_extra=parts.status)
    app.state.settings = settings  # routes that read backends (the UI's audit view) follow --devnet-home
    async with trio.open_nursery() as nursery:
        await nursery.start(node.serve)
        bound = await nursery.start(serve_api, app, api_host, api_port)
        api_url = bound[0] if bound else f"http://{api_host}:{api_port}"
        node.api_addr = api_url
        for task in parts.tasks:
            nursery.start_soon(task)
        write_node_info(home, {"peer_id": node.peer_id, "role": role.value, "addrs": node.addrs,
                               "api": api_url, "pid": os.getpid(), "address": identity.address,
                               "box_public": identity.box_public_hex})
        log.info("%s node ready: peer %s, API %s", role.value, node.peer_id, api_url)


def _node_opts(role: Role, opts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if role == Role.TRAINER:
        from fedswarm.roles.capabilities import detect_capabilities

        out["capabilities"] = detect_capabilities(allow_gpu=opts.get("allow_gpu", True))
        out["price_wei"] = int(opts.get("price_wei") or 10**15)
    for key in ("heartbeat_interval", "peer_timeout"):
        if opts.get(key) is not None:
            out[key] = opts[key]
    return out


async def build_role(role: Role, node: Node, settings: Settings, home: Path, opts: dict[str, Any], *,
                     trainer_cls: type[Trainer] | None = None) -> RoleParts:
    """The role-specific parts; the client and trainer state machines plug in here.

    No ``except ImportError``: a role module that fails to import must stop the node at start,
    not leave a node that silently has no jobs.
    """
    if role == Role.CLIENT:
        from fedswarm.roles.client import build_client

        return await build_client(node, settings, home, opts)
    if role == Role.TRAINER:
        return await _trainer_parts(node, settings, home, opts, trainer_cls)
    return RoleParts()


async def _trainer_parts(node: Node, settings: Settings, home: Path, opts: dict[str, Any],
                         trainer_cls: type[Trainer] | None) -> RoleParts:
    """The trainer's routes, /command verbs, status and background task.

    Without a ledger the node stays on the mesh (presence, capabilities, price) but cannot
    bid: /status says why.
    """
    from fedswarm.roles.trainer import Trainer, open_trainer

    fund = None
    if settings.is_devnet:
        from fedswarm.devnet import ensure_funded

        fund = functools.partial(ensure_funded, settings)
    try:
        trainer = await open_trainer(node, settings, home, opts, fund_wallet=fund,
                                     trainer_cls=trainer_cls or Trainer)
    except ConfigError as exc:
        reason = str(exc)
        log.warning("trainer cannot take jobs: %s", reason)
        return RoleParts(status=lambda: {"trainer": {"jobs_unavailable": reason}})
    router = APIRouter(prefix="/api/v1/trainer")

    @router.get("/units")
    async def units() -> dict[str, Any]:
        return {"units": trainer.units_public()}

    async def cmd_advertize(args: list[Any]) -> dict[str, Any]:
        return await trainer.advertize()

    async def cmd_units(args: list[Any]) -> dict[str, Any]:
        return {"status": "ok", "units": trainer.units_public()}

    return RoleParts(routers=[router], commands={"advertize": cmd_advertize, "units": cmd_units},
                     status=trainer.status, tasks=[trainer.run])
