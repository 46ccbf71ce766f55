"""Run one node process: identity, the libp2p node, its role and its HTTP API in one trio loop.

When the node is up it writes ``HOME/node.json`` (peer id, multiaddrs, API URL, pid) so that
scripts, tests and ``fedswarm demo`` can find it without parsing logs. The role is built here
from the roles layer (``open_client``, ``open_trainer``) and given its HTTP parts from
:mod:`.jobs` and :mod:`.trainer`; the roles know nothing of HTTP or of the devnet.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from fedswarm.api.app import RoleParts, create_app, is_loopback, serve_api
from fedswarm.api.guard import write_local_secret
from fedswarm.config import NODE_INFO_FILE, ConfigError, Settings, read_node_info, write_node_info
from fedswarm.identity import load_identity
from fedswarm.p2p.node import Node
from fedswarm.protocol.messages import Role

if TYPE_CHECKING:
    from fedswarm.roles.client import ClientRole
    from fedswarm.roles.trainer import Trainer

log = logging.getLogger("fedswarm.node")
# node.json lives in config (the lowest layer) so that roles.launcher can find nodes too.
__all__ = ["NODE_INFO_FILE", "RoleParts", "build_role", "devnet_funding", "parse_api", "read_node_info",
           "run_node", "write_node_info"]

# A client escrows whole jobs from its wallet, so the devnet faucet gives it more than the
# default balance a trainer (which only pays gas) is topped up to.
CLIENT_DEVNET_WEI = 50 * 10**18

FundWallet = Callable[[str], None]


def parse_api(api: str) -> tuple[str, int]:
    """``HOST:PORT`` of ``--api``; a one-line ConfigError otherwise."""
    host, _, port = api.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--api must be HOST:PORT, got {api!r}")
    return host, int(port)


def devnet_funding(settings: Settings, min_wei: int | None = None) -> FundWallet | None:
    """The wallet-funding hook handed to a role: the devnet faucet on the devnet (topping the
    wallet up to ``min_wei``, or to the faucet's default), nothing on a real network."""
    if not settings.is_devnet:
        return None
    from fedswarm.devnet import DEV_MIN_BALANCE_WEI, ensure_funded

    floor = DEV_MIN_BALANCE_WEI if min_wei is None else min_wei

    def fund(address: str) -> None:
        ensure_funded(settings, address, floor)

    return fund


async def run_node(role: Role, settings: Settings, home: Path, bootstrap: list[str], *,
                   client_cls: type[ClientRole] | None = None, trainer_cls: type[Trainer] | None = None,
                   **role_opts: Any) -> None:
    """Start the node of ``role`` and serve until cancelled.

    ``client_cls`` / ``trainer_cls`` replace the role's class (the fault-injecting doubles of
    ``fedswarm.testing`` come in this way).
    """
    identity = load_identity(home)
    api_host, api_port = parse_api(settings.api)
    token = settings.api_token.get_secret_value() if settings.api_token else None
    if not is_loopback(api_host) and not token:
        raise ConfigError(f"binding the API to {api_host} needs an API token: set FEDSWARM_API_TOKEN")

    node = Node(identity, role, settings.listen, bootstrap, **_node_opts(role, role_opts, settings))
    node.dial_timeout = settings.dial_timeout_s
    parts = await build_role(role, node, settings, home, role_opts, client_cls=client_cls,
                             trainer_cls=trainer_cls)
    # A delegate (--public-api / FEDSWARM_PUBLIC_API) advertises that URL and lets wallet pages
    # from any origin call its wallet routes.
    public_api = role_opts.get("public_api") or os.environ.get("FEDSWARM_PUBLIC_API") or None
    app = create_app(node, token=token, bind_host=api_host, origins=settings.api_origins.split(","),
                     extra_routers=parts.routers, extra_commands=parts.commands, status_extra=parts.status,
                     credentials=parts.credentials, delegate=bool(public_api))
    # the local CLI's credential: readable by this user only, new at every start
    write_local_secret(home, app.state.guard.local_secret)
    app.state.settings = settings  # routes that read backends (the UI's audit view) follow --devnet-home
    async with trio.open_nursery() as nursery:
        await nursery.start(node.serve)
        bound = await nursery.start(serve_api, app, api_host, api_port)
        api_url = bound[0] if bound else f"http://{api_host}:{api_port}"
        node.api_addr = public_api or api_url
        for task in parts.tasks:
            nursery.start_soon(task)
        write_node_info(home, {"peer_id": node.peer_id, "role": role.value, "addrs": node.addrs,
                               "api": api_url, "pid": os.getpid(), "address": identity.address,
                               "box_public": identity.box_public_hex})
        log.info("%s node ready: peer %s, API %s", role.value, node.peer_id, api_url)


def _node_opts(role: Role, opts: dict[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if settings is not None:  # the network deadlines' settings; the CLI flags below win
        out.update(heartbeat_interval=settings.heartbeat_s, peer_timeout=settings.peer_timeout_s,
                   rpc_timeout=settings.rpc_timeout_s)
        if settings.peer_drop_s:  # unset: the node's own default (3 peer timeouts)
            out["peer_drop_after"] = settings.peer_drop_s
    if role == Role.TRAINER:
        from fedswarm.roles.capabilities import detect_capabilities

        out["capabilities"] = detect_capabilities(allow_gpu=opts.get("allow_gpu", True))
        out["price_wei"] = int(opts.get("price_wei") or 10**15)
    for key in ("heartbeat_interval", "peer_timeout"):
        if opts.get(key) is not None:
            out[key] = opts[key]
    return out


async def build_role(role: Role, node: Node, settings: Settings, home: Path, opts: dict[str, Any], *,
                     client_cls: type[ClientRole] | None = None,
                     trainer_cls: type[Trainer] | None = None) -> RoleParts:
    """The role-specific parts of the node.

    A role that cannot reach its backends (no store or ledger: a ConfigError) leaves a node that
    still serves the mesh and says why. No ``except ImportError``: a role module that fails to
    import must stop the node at start, not leave a node that silently has no jobs.
    """
    if role == Role.CLIENT:
        return await _client_parts(node, settings, home, opts, client_cls)
    if role == Role.TRAINER:
        return await _trainer_parts(node, settings, home, opts, trainer_cls)
    return RoleParts()


async def _client_parts(node: Node, settings: Settings, home: Path, opts: dict[str, Any],
                        client_cls: type[ClientRole] | None) -> RoleParts:
    from fedswarm.api.jobs import job_parts, jobs_unavailable
    from fedswarm.roles.client import ClientRole, open_client

    try:
        client = await open_client(node, settings, home, opts,
                                   fund_wallet=devnet_funding(settings, CLIENT_DEVNET_WEI),
                                   client_cls=client_cls or ClientRole)
    except ConfigError as exc:  # still a useful node (mesh, directory, API); jobs need backends
        log.warning("client runs without jobs: %s", exc)
        return jobs_unavailable(str(exc))
    return job_parts(client)


async def _trainer_parts(node: Node, settings: Settings, home: Path, opts: dict[str, Any],
                         trainer_cls: type[Trainer] | None) -> RoleParts:
    from fedswarm.api.trainer import trainer_parts, trainer_unavailable
    from fedswarm.roles.trainer import Trainer, open_trainer

    try:
        trainer = await open_trainer(node, settings, home, opts, fund_wallet=devnet_funding(settings),
                                     trainer_cls=trainer_cls or Trainer)
    except ConfigError as exc:
        log.warning("trainer cannot take jobs: %s", exc)
        return trainer_unavailable(str(exc))
    return trainer_parts(trainer)
