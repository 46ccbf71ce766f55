"""The HTTP API every node serves (FastAPI on hypercorn's trio worker, in the node's own loop).

Two faces: the seed's interface (``GET /status``, ``POST /command``) with the same shapes, and
a REST API under ``/api/v1`` (OpenAPI at ``/docs``). Roles add their own routers (jobs on the
client node). Who may call what is decided in one place, :mod:`fedswarm.api.guard`, applied to
every route here; a token is mandatory when binding anywhere but loopback.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from fedswarm import __version__
from fedswarm.api.clients import clients_router
from fedswarm.api.guard import (
    JSON_BODY_MAX,
    ApiGuard,
    Credential,
    GuardMiddleware,
    Principal,
    Refusal,
    is_loopback,
)
from fedswarm.p2p.node import Node
from fedswarm.protocol.decode import DecodeError, decode_model, decode_object
from fedswarm.protocol.messages import Chat, WireModel, decode

CommandFn = Callable[[list[Any]], Awaitable[dict[str, Any]]]
StatusFn = Callable[[], dict[str, Any]]


@dataclass
class RoleParts:
    """What a role adds to the plain node: API routes, /command verbs, ``/status`` fields and
    background tasks (async callables started in the node's nursery once it listens)."""

    routers: list[APIRouter] = field(default_factory=list)
    commands: dict[str, CommandFn] = field(default_factory=dict)
    status: StatusFn | None = None
    tasks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    credentials: list[Credential] = field(default_factory=list)  # e.g. wallet sessions


class CommandBody(BaseModel):
    cmd: str = Field(max_length=64)
    args: list[Any] = Field(default_factory=list, max_length=64)


class ApiError(Exception):
    """An error answered as ``{"status": "error", "error": message}`` with ``status_code``."""

    def __init__(self, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code


# /command verbs that name files on the node's own disk: only a token holder may use them (a
# browser session or an anonymous local caller could otherwise submit any file the node reads).
TOKEN_ONLY_COMMANDS = frozenset({"train"})

__all__ = ["ApiError", "CommandFn", "RoleParts", "TOKEN_ONLY_COMMANDS", "create_app", "is_loopback",
           "principal_of", "read_json", "serve_api"]


def principal_of(request: Request) -> Principal:
    """The :class:`Principal` the guard admitted this request as."""
    principal = getattr(request.state, "principal", None)
    return principal if isinstance(principal, Principal) else Principal("local")


async def read_json(request: Request, *, max_bytes: int = JSON_BODY_MAX, what: str = "request body") -> dict[str, Any]:
    """A JSON object body through the bounded decoder (size, then depth, then parse)."""
    try:
        return decode_object(await request.body(), max_bytes=max_bytes, what=what)
    except DecodeError as exc:
        raise ApiError(str(exc)) from None


def create_app(
    node: Node,
    *,
    token: str | None = None,
    bind_host: str = "127.0.0.1",
    origins: Iterable[str] = (),
    guard: ApiGuard | None = None,
    extra_routers: list[APIRouter] | None = None,
    extra_commands: dict[str, CommandFn] | None = None,
    status_extra: StatusFn | None = None,
    credentials: Iterable[Credential] = (),
    delegate: bool = False,
) -> FastAPI:
    """Build the ASGI app for ``node``, every route behind ``guard`` (built from ``token``,
    ``bind_host``, ``origins`` and ``delegate`` (``--public-api``: wallet routes answer any
    origin) when not given); ``credentials`` are extra ways of signing in (wallet sessions)."""
    app = FastAPI(title="fedswarm node API", version=__version__)
    guard = guard or ApiGuard(bind_host=bind_host, token=token, origins=origins, delegate=delegate)
    for credential in credentials:
        guard.add_credential(credential)
    app.state.guard = guard
    app.add_middleware(GuardMiddleware, guard=guard)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"status": "error", "error": str(exc)}, status_code=exc.status_code)

    @app.exception_handler(Refusal)
    async def _refused(_: Request, exc: Refusal) -> JSONResponse:
        guard.refused[exc.reason] += 1
        return JSONResponse({"status": "error", "error": str(exc)}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "request refused"
        return JSONResponse({"status": "error", "error": detail.splitlines()[0] if detail else "error"},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _bad_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"status": "error", "error": f"bad request: {loc}: {first.get('msg', 'invalid')}"}, status_code=400)

    commands: dict[str, CommandFn] = {}

    def command(name: str) -> Callable[[CommandFn], CommandFn]:
        def wrap(fn: CommandFn) -> CommandFn:
            commands[name] = fn
            return fn
        return wrap

    def peer_row(entry: Any) -> dict[str, Any]:
        maddr = entry.addrs[0] if entry.addrs else ""
        return {"peer_id": entry.peer_id, "maddr": maddr, "role": entry.role.value.upper(), "pub_maddr": maddr}

    @command("bootmesh")
    async def _bootmesh(args: list[Any]) -> dict[str, Any]:
        summary = await node.bootmesh()
        by_topic: dict[str, list[dict[str, Any]]] = {}
        for entry in summary.peers:
            for topic in entry.topics or ["(none)"]:
                by_topic.setdefault(topic, []).append(peer_row(entry))
        return {"status": "ok", "bootmesh": by_topic}

    @command("mesh")
    async def _mesh(args: list[Any]) -> dict[str, Any]:
        router = node.pubsub.router
        mesh = {t: sorted(p.to_base58() for p in peers) for t, peers in getattr(router, "mesh", {}).items()}
        return {"status": "ok", "mesh": mesh}

    @command("peers")
    async def _peers(args: list[Any]) -> dict[str, Any]:
        return {"status": "ok", "peers": node.connected_peers()}

    @command("local")
    async def _local(args: list[Any]) -> dict[str, Any]:
        return {"status": "ok", "local": {"peer_id": node.peer_id, "maddr": node.addrs[0] if node.addrs else "", "role": node.role.value.upper(), "address": node.identity.address}}

    @command("topics")
    async def _topics(args: list[Any]) -> dict[str, Any]:
        return {"status": "ok", "topics": node.topics}

    def topic_arg(args: list[Any], n: int = 1) -> str:
        if len(args) < n or not isinstance(args[0], str) or not 0 < len(args[0]) <= 256:
            raise ApiError("this command needs a topic name as its first argument")
        return args[0]

    received: dict[str, list[dict[str, Any]]] = {}

    async def remember(topic: str, sender: str, msg: WireModel) -> None:
        box = received.setdefault(topic, [])
        box.append({"from": sender, "type": msg.TYPE, "data": msg.model_dump(mode="json"), "at": time.time()})
        del box[:-200]

    join_handlers: dict[str, Callable[[str, Any], Awaitable[None]]] = {}

    @command("join")
    async def _join(args: list[Any]) -> dict[str, Any]:
        topic = topic_arg(args)

        async def handler(sender: str, msg: Any) -> None:
            await remember(topic, sender, msg)

        # One handler per topic, reused: joining twice must not deliver every message twice
        # (the node adds a handler it already has only once).
        await node.subscribe(topic, join_handlers.setdefault(topic, handler))
        return {"status": "ok", "joined": topic}

    @command("leave")
    async def _leave(args: list[Any]) -> dict[str, Any]:
        topic = topic_arg(args)
        await node.unsubscribe(topic)
        return {"status": "ok", "left": topic}

    @command("publish")
    async def _publish(args: list[Any]) -> dict[str, Any]:
        topic = topic_arg(args, 2)
        if len(args) < 2 or not isinstance(args[1], str):
            raise ApiError("publish needs [topic, text]")
        try:
            msg: WireModel = Chat(text=args[1])
        except ValueError as exc:
            raise ApiError(f"message rejected: {exc}") from None
        await node.publish(topic, msg)
        return {"status": "ok", "published": topic}

    @command("messages")
    async def _messages(args: list[Any]) -> dict[str, Any]:
        topic = topic_arg(args)
        return {"status": "ok", "messages": received.get(topic, [])}

    commands.update(extra_commands or {})

    @app.get("/status")
    async def status() -> dict[str, Any]:
        out = {"status": "running", "role": node.role.value, "peer_id": node.peer_id,
               "address": node.identity.address, "addrs": node.addrs,
               "uptime_s": round(time.time() - node.started_at, 1), "version": __version__,
               "stats": dict(node.stats), "api_guard": guard.stats(), "limits": node.limits_status(),
               "gossip": node.gossip_status()}
        if status_extra:
            out.update(status_extra())
        return out

    @app.post("/command")
    async def run_command(request: Request) -> dict[str, Any]:
        try:
            body = decode_model(CommandBody, await request.body(), max_bytes=JSON_BODY_MAX, what="command")
        except DecodeError as exc:
            raise ApiError(f"bad request: {exc}") from None
        fn = commands.get(body.cmd)
        if fn is None:
            raise ApiError(f"unknown command {body.cmd!r}; known: {', '.join(sorted(commands))}")
        if body.cmd in TOKEN_ONLY_COMMANDS and principal_of(request).kind != "token":
            raise Refusal(403, "token-only", f"command {body.cmd!r} reads files on the node: it needs the API token "
                          "(Authorization: Bearer <token>, or the node home's api-secret)")
        return await fn(body.args)

    @app.post("/api/v1/session")
    async def session(request: Request) -> JSONResponse:
        """Exchange the token for the UI's session cookie (a browser cannot send a Bearer token
        with EventSource or a download link)."""
        if principal_of(request).kind != "token":
            raise Refusal(401, "no-credential", "a UI session needs the API token (Authorization: Bearer <token>)")
        return JSONResponse({"status": "ok"}, headers={"Set-Cookie": guard.cookie_for(request)})

    v1 = APIRouter(prefix="/api/v1")

    @v1.get("/mesh")
    async def mesh() -> dict[str, Any]:
        summary = await node.bootmesh()
        return summary.model_dump(mode="json")

    @v1.get("/peers")
    async def peers() -> dict[str, Any]:
        return {"connected": node.connected_peers(),
                "directory": [e.model_dump(mode="json") for e in node.directory.entries(online_only=False)]}

    @v1.get("/trainers")
    async def trainers() -> dict[str, Any]:
        from fedswarm.protocol.messages import Role

        return {"trainers": [r.to_entry(node.directory.is_online(r)).model_dump(mode="json")
                             for r in node.directory.records(online_only=False, role=Role.TRAINER)]}

    app.include_router(v1)
    for router in extra_routers or []:
        app.include_router(router)
    # Every node lists the network's client nodes; a role's own /clients route (with its
    # chain-read rejection rates) is included above and wins, this one is the fallback.
    app.include_router(clients_router(node))
    # The browser UI (served by every node; most useful on the client). Imported here rather than
    # at the top only to keep `import fedswarm.api.app` light; a broken UI module fails loudly.
    from fedswarm.web import mount_ui

    mount_ui(app, role=node.role.value)
    guard.learn_caps(app.routes)  # routes that take big bodies (uploads) declared their caps
    _ = decode  # re-exported for handlers that parse wire messages
    return app


async def serve_api(app: FastAPI, host: str, port: int, *, task_status: Any = None) -> None:
    """Serve ``app`` with hypercorn's trio worker on ``host:port`` (in the caller's loop)."""
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    shutdown = trio.Event()
    if task_status is None:
        await serve(app, config, shutdown_trigger=shutdown.wait)  # type: ignore[arg-type]
    else:
        await serve(app, config, shutdown_trigger=shutdown.wait, task_status=task_status)  # type: ignore[arg-type]
