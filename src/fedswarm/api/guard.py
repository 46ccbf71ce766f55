"""The one gate in front of every HTTP route of a node: who may call, from where, how much.

:class:`ApiGuard` decides for each request, before any route runs, and the ASGI middleware
:class:`GuardMiddleware` applies the decision to every route ``create_app`` builds (REST, the
seed's ``/command``, the UI, role routers added later). Rules:

* **Credentials** are pluggable (:class:`Credential`): the node's token (``Authorization:
  Bearer``; the configured ``FEDSWARM_API_TOKEN`` or the per-start local secret written 0600 in
  the node's home), the UI's per-start session cookie, and a wallet session (EIP-4361 sign-in,
  :mod:`fedswarm.api.wallet`: ``Authorization: Wallet <token>`` or its cookie). Each yields a
  :class:`Principal` (``kind``, ``owner``). A credential that is present but wrong is a 401, never
  a fall-through to anonymous access. A wallet principal reaches only :data:`WALLET_PREFIXES`.
* **Bound elsewhere than loopback**: every route but ``/status`` and the static UI files needs a
  credential, GETs included.
* **On loopback**: ``Host`` must name a loopback address with the port the request came in on
  (DNS rebinding gets a 421). A non-GET request carrying an ``Origin`` that is neither the node's
  own origin nor in ``FEDSWARM_API_ORIGINS`` gets a 403. Browser requests (``Origin``,
  ``Sec-Fetch-Site`` or a cookie present) that change something or download a result need a
  credential: the UI has its session cookie (``SameSite=Strict``, so another site's page cannot
  send it). A process without those headers (the CLI, tests) is admitted as ``local`` (it could
  read the node's home anyway) unless a token is configured, in which case changes need it.
* **Origins** in the allowlist get CORS headers (and preflight answers). A delegate (a client
  started with ``--public-api``) also answers any origin on :data:`WALLET_PREFIXES` when the
  request carries a wallet credential in its header (sign-in itself needs none); cookies never
  travel cross-origin (no ``Access-Control-Allow-Credentials``). No other origin gets CORS.
  One read-only exception: a delegate answers ``GET /api/v1/node`` from another origin (or, on
  a public bind, from anyone) without a credential with its public ``chain`` block alone
  (principal ``public``), so a page learns which chain to sign in on before it has a session.
* **Bodies** are capped per route before and while they arrive: ``Content-Length`` over the cap
  is a 413 before a byte is read, and a body that keeps coming past it is cut off with a 413.

Every refusal is one line of JSON (``{"status": "error", "error": ...}``) and is counted by
reason; ``/status`` shows the counts.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

F = TypeVar("F", bound=Callable[..., Any])
PrincipalKind = Literal["token", "ui-session", "wallet", "local", "public"]
NODE_OWNER = "node"  # jobs submitted through the node's own credentials belong to "node"
LOCAL_SECRET_FILE = "api-secret"  # in the node's home, mode 0600: the local CLI's credential
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Routes open to anyone even on a public bind (the UI's files and the liveness probe).
OPEN_PATHS = frozenset({"/status", "/", "/ui", "/favicon.ico"})
OPEN_PREFIXES = ("/ui/static/",)
JSON_BODY_MAX = 64 << 10  # /command, /quote, sessions: small JSON documents
# What a wallet session may call (and, on a delegate, what any origin may call with one).
WALLET_PREFIXES = ("/api/v1/wallet/", "/api/v1/jobs", "/api/v1/quote", "/api/v1/node", "/api/v1/examples",
                   "/api/v1/columns", "/api/v1/clients")
# Sign-in needs no credential (it is how one gets one); its message is bound to the origin.
WALLET_SIGN_IN = frozenset({"/api/v1/wallet/challenge", "/api/v1/wallet/session"})
CORS_METHODS = b"GET, POST, DELETE, OPTIONS"
# A delegate describes its chain to any page before sign-in: this route, its ``chain`` key only.
PUBLIC_NODE_PATH = "/api/v1/node"
PUBLIC_NODE_KEYS = ("chain",)


def is_wallet_path(path: str) -> bool:
    """Routes a wallet session may use (and a delegate serves to any origin)."""
    return any(path == p.rstrip("/") or path.startswith(p.rstrip("/") + "/") for p in WALLET_PREFIXES)


def has_wallet_header(conn: HTTPConnection) -> bool:
    """``Authorization: Wallet ...`` (a cross-origin page's credential; never a cookie)."""
    return conn.headers.get("authorization", "").partition(" ")[0].lower() == "wallet"


@dataclass(frozen=True)
class Principal:
    """Who a request acts for. ``owner`` is ``"node"`` for the node's own credentials and the
    wallet address for a wallet session (a later change adds that credential)."""

    kind: PrincipalKind
    owner: str = NODE_OWNER

    @property
    def authenticated(self) -> bool:
        """True for a real credential; ``local`` is an anonymous loopback caller and ``public``
        an anonymous page reading a delegate's public description."""
        return self.kind not in ("local", "public")

    def owns(self, owner: str | None) -> bool:
        """May this principal see what belongs to ``owner`` (a job's decrypted result, say)?"""
        return self.authenticated and self.owner == (owner or NODE_OWNER)


class Refusal(Exception):
    """A request the guard turns away: ``status`` and a one-line ``message``; ``reason`` is the
    counter key in ``/status``."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class Credential(Protocol):
    """One way of proving who calls. ``authenticate`` returns None when the request carries no
    such credential, a :class:`Principal` when it carries a valid one, and raises
    :class:`Refusal` when it carries one that is wrong (expired, forged)."""

    name: str

    def authenticate(self, conn: HTTPConnection) -> Principal | None: ...


class TokenCredential:
    """``Authorization: Bearer <token>`` against any of ``tokens`` (constant-time compare)."""

    name = "token"

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = [t.encode() for t in tokens if t]

    def authenticate(self, conn: HTTPConnection) -> Principal | None:
        given = conn.headers.get("authorization")
        if given is None:
            return None
        scheme, _, value = given.partition(" ")
        if scheme.lower() == "wallet":
            return None  # a wallet session's header: the wallet credential decides
        if scheme.lower() == "bearer":
            v = value.strip().encode()
            # compare against every token so timing does not tell which one matched
            if sum(secrets.compare_digest(v, t) for t in self._tokens):
                return Principal("token")
        raise Refusal(401, "bad-token", "missing or wrong API token (send Authorization: Bearer <token>)")


class SessionCredential:
    """The UI's per-start session cookie (one name per port: browsers share cookies between
    ports of one host, and a client and a trainer on one machine must not overwrite each
    other's)."""

    name = "ui-session"

    def __init__(self, secret: str) -> None:
        self._secret = secret.encode()

    @staticmethod
    def cookie_name(port: int | None) -> str:
        return f"fedswarm_session_{port or 0}"

    def authenticate(self, conn: HTTPConnection) -> Principal | None:
        value = conn.cookies.get(self.cookie_name(server_port(conn.scope)))
        if value is None:
            return None
        if secrets.compare_digest(value.encode(), self._secret):
            return Principal("ui-session")
        # A stale cookie from the node's previous start: say so instead of "forbidden".
        raise Refusal(401, "stale-session", "this page's session is from an earlier start of the node: reload the page")


_CAP_ATTR = "__fedswarm_max_body__"


def max_body(max_bytes: int) -> Callable[[F], F]:
    """Mark a route's endpoint as accepting bodies up to ``max_bytes`` (the default cap is
    :data:`JSON_BODY_MAX`); :meth:`ApiGuard.learn_caps` collects the marks from the app."""
    def mark(fn: F) -> F:
        setattr(fn, _CAP_ATTR, int(max_bytes))
        return fn
    return mark


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (brackets allowed for IPv6)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_port(scope: Scope) -> int | None:
    """The local port the request arrived on (hypercorn fills ``scope["server"]``)."""
    server = scope.get("server")
    return int(server[1]) if server and server[1] is not None else None


def split_host(value: str) -> tuple[str, int | None]:
    """``host[:port]`` -> (host, port); IPv6 stays bracketed. Raises ValueError when malformed."""
    value = value.strip().lower()
    if not value or any(c in value for c in " /\\@?#"):
        raise ValueError(value)
    if value.startswith("["):
        end = value.index("]")
        host, rest = value[: end + 1], value[end + 1:]
    else:
        host, _, port_s = value.partition(":")
        rest = f":{port_s}" if _ else ""
    if rest and (not rest.startswith(":") or not rest[1:].isdigit()):
        raise ValueError(value)
    return host, int(rest[1:]) if rest else None


def write_local_secret(home: Path, secret: str) -> Path:
    """Write the per-start local secret to ``HOME/api-secret`` readable by this user only."""
    path = Path(home) / LOCAL_SECRET_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret)
    os.replace(tmp, path)
    return path


def read_local_secret(home: Path) -> str | None:
    """The secret a running node at ``home`` wrote, or None (the CLI sends it as a token)."""
    try:
        return (Path(home) / LOCAL_SECRET_FILE).read_text().strip() or None
    except OSError:
        return None


class ApiGuard:
    """The decision for one node: built once per start, consulted for every request."""

    def __init__(self, *, bind_host: str = "127.0.0.1", token: str | None = None,
                 origins: Iterable[str] = (), credentials: Iterable[Credential] = (),
                 body_caps: dict[tuple[str, str], int] | None = None, delegate: bool = False) -> None:
        self.public = not is_loopback(bind_host)
        self.delegate = delegate  # started with --public-api: wallet routes answer any origin
        self.token_configured = bool(token)
        self.local_secret = secrets.token_urlsafe(32)
        self.session_secret = secrets.token_urlsafe(32)
        self.origins = frozenset(o.strip().rstrip("/").lower() for o in origins if o.strip())
        self.credentials: list[Credential] = [
            TokenCredential([t for t in (token, self.local_secret) if t]),
            SessionCredential(self.session_secret),
            *credentials,
        ]
        self.body_caps = dict(body_caps or {})
        self.refused: Counter[str] = Counter()

    # -- configuration

    def add_credential(self, credential: Credential) -> None:
        """Plug in another way of signing in (the wallet session). It is asked before the UI's
        session cookie: a page of this node that signed in with a wallet acts as that wallet."""
        at = next((i for i, c in enumerate(self.credentials) if isinstance(c, SessionCredential)),
                  len(self.credentials))
        self.credentials.insert(at, credential)

    def cap_body(self, method: str, path: str, max_bytes: int) -> None:
        """Allow bodies up to ``max_bytes`` on ``method path`` (default: :data:`JSON_BODY_MAX`)."""
        self.body_caps[(method.upper(), path)] = max_bytes

    def learn_caps(self, routes: Iterable[object]) -> None:
        """Register the caps routes declared with :func:`max_body` (fixed paths only)."""
        for route in routes:
            # an included router (FastAPI keeps it whole): its routes carry their full paths
            inner = getattr(route, "original_router", None)
            if inner is not None:
                self.learn_caps(getattr(inner, "routes", ()))
                continue
            cap = getattr(getattr(route, "endpoint", None), _CAP_ATTR, None)
            path = getattr(route, "path", "")
            if cap is not None and "{" not in path:
                for method in getattr(route, "methods", None) or ():
                    self.cap_body(method, path, cap)

    def body_cap(self, method: str, path: str) -> int:
        return self.body_caps.get((method, path), JSON_BODY_MAX)

    def stats(self) -> dict[str, object]:
        """What ``/status`` shows about the guard."""
        return {"public": self.public, "delegate": self.delegate,
                "token_required": self.public or self.token_configured,
                "origins": sorted(self.origins), "refused": dict(self.refused),
                "refused_total": sum(self.refused.values())}

    # -- decisions

    def own_origins(self, conn: HTTPConnection) -> set[str]:
        """The node's own origins: the one the request names in ``Host`` (on loopback ``Host``
        is checked first) and, on loopback, every loopback name with this port."""
        out = set()
        host = conn.headers.get("host")
        if host:
            out.add(f"{conn.url.scheme}://{host.lower()}")
        port = server_port(conn.scope)
        if not self.public and port is not None:
            out |= {f"{scheme}://{name}:{port}" for scheme in ("http", "https") for name in LOOPBACK_NAMES}
        return out

    def origin_allowed(self, origin: str, conn: HTTPConnection) -> bool:
        o = origin.rstrip("/").lower()
        return o in self.origins or o in self.own_origins(conn) or self.delegate_admits(conn)

    def delegate_admits(self, conn: HTTPConnection) -> bool:
        """A delegate serves any origin the wallet routes: sign-in (bound to the origin by the
        signed message), the rest only with a wallet credential in the header."""
        path = conn.url.path
        return self.delegate and is_wallet_path(path) and (path in WALLET_SIGN_IN or has_wallet_header(conn))

    def cors_origin(self, conn: HTTPConnection, preflight: bool = False) -> str | None:
        """The origin to echo in ``Access-Control-Allow-Origin``, or None (no CORS). A preflight
        carries no credential, so a delegate answers it for every wallet route."""
        origin = conn.headers.get("origin")
        if origin is None:
            return None
        if origin.rstrip("/").lower() in self.origins:
            return origin
        if self.delegate and is_wallet_path(conn.url.path) and (preflight or self.delegate_admits(conn)):
            return origin
        if self.public_node_read(conn):
            return origin
        return None

    def public_node_read(self, conn: HTTPConnection) -> bool:
        """A delegate's ``GET /api/v1/node`` without any credential, from another origin's page
        or (public bind) from anyone: answered with :data:`PUBLIC_NODE_KEYS` only. A local
        process without an ``Origin`` on loopback keeps the full answer it always had."""
        if not (self.delegate and conn.scope["method"] == "GET" and conn.url.path == PUBLIC_NODE_PATH):
            return False
        if conn.headers.get("authorization") or conn.headers.get("cookie"):
            return False  # a credential decides (a wrong one is still a 401)
        origin = conn.headers.get("origin")
        foreign = origin is not None and origin.rstrip("/").lower() not in self.own_origins(conn)
        return self.public or foreign

    def check_host(self, conn: HTTPConnection) -> None:
        """Loopback only: ``Host`` must be a loopback name with the port this socket listens on,
        or a page on another site that resolved its own name to 127.0.0.1 could read us."""
        raw = conn.headers.get("host")
        if not raw:
            raise Refusal(400, "no-host", "request has no Host header")
        try:
            host, port = split_host(raw)
        except ValueError:
            raise Refusal(400, "bad-host", f"malformed Host header {raw[:60]!r}") from None
        bound = server_port(conn.scope)
        if port is None:
            port = 443 if conn.url.scheme == "https" else 80
        if not is_loopback(host) or (bound is not None and port != bound):
            raise Refusal(421, "bad-host", f"Host {raw[:60]!r} is not this node; use http://127.0.0.1:{bound}")

    def authenticate(self, conn: HTTPConnection) -> Principal | None:
        creds = self.credentials
        if has_wallet_header(conn):
            # An explicit wallet header names who acts, even when this node's UI cookie rides
            # along (a same-origin XMLHttpRequest upload always carries the page's cookies).
            creds = sorted(creds, key=lambda c: getattr(c, "name", "") != "wallet")
        elif not is_wallet_path(conn.url.path):
            # A wallet's cookie speaks for the wallet routes only: elsewhere (the UI page itself
            # on a reload, the mesh views) the browser is a plain visitor of this node.
            creds = [c for c in creds if getattr(c, "name", "") != "wallet"]
        for cred in creds:
            principal = cred.authenticate(conn)
            if principal is not None:
                return principal
        return None

    def admit(self, conn: HTTPConnection) -> Principal:
        """The principal of this request, or :class:`Refusal`."""
        method, path = conn.scope["method"].upper(), conn.url.path
        if not self.public:
            self.check_host(conn)
        origin = conn.headers.get("origin")
        if origin is not None and method not in SAFE_METHODS and not self.origin_allowed(origin, conn):
            raise Refusal(403, "bad-origin", f"requests from origin {origin[:80]!r} are not allowed; "
                          "add it to FEDSWARM_API_ORIGINS to serve a UI from there")
        principal = self.authenticate(conn)
        if principal is not None:
            if principal.kind == "wallet" and not is_wallet_path(path) and path != "/status":
                raise Refusal(403, "wallet-scope", f"a wallet session cannot use {path[:80]}: "
                              "it reaches the wallet, job, quote and node routes only")
            return principal
        if self.public_node_read(conn):
            return Principal("public")
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES) or path in WALLET_SIGN_IN:
            return Principal("local")
        if self.public:
            raise Refusal(401, "no-credential", "this node's API needs a credential: send Authorization: Bearer <token>")
        mutating = method not in SAFE_METHODS
        browser = bool(origin or conn.headers.get("sec-fetch-site") or conn.headers.get("cookie"))
        if mutating and self.token_configured:
            raise Refusal(401, "no-credential", "missing or wrong API token (send Authorization: Bearer <token>)")
        if browser and (mutating or is_result_path(path)):
            raise Refusal(403, "no-session", "this browser request carries no session of this node: "
                          "open the node's UI at its own address and retry")
        return Principal("local")

    def session_cookie(self, conn: HTTPConnection) -> str | None:
        """The ``Set-Cookie`` value the UI page hands out: only on loopback without a token (on
        a public bind or with a token the UI exchanges the token at ``POST /api/v1/session``)."""
        if self.public or self.token_configured:
            return None
        return self.cookie_for(conn)

    def cookie_for(self, conn: HTTPConnection) -> str:
        name = SessionCredential.cookie_name(server_port(conn.scope))
        secure = "; Secure" if conn.url.scheme == "https" else ""
        return f"{name}={self.session_secret}; Path=/; HttpOnly; SameSite=Strict{secure}"


def is_result_path(path: str) -> bool:
    """``/api/v1/jobs/<id>/result``: the decrypted weights (the link route serves ciphertext)."""
    parts = path.strip("/").split("/")
    return len(parts) == 5 and parts[:3] == ["api", "v1", "jobs"] and parts[4] == "result"


def error_body(message: str) -> bytes:
    return json.dumps({"status": "error", "error": message}).encode()


class BodyTooLarge(Exception):
    """Raised into the app by the guarded ``receive`` once a body passes its cap."""


class GuardMiddleware:
    """Applies :class:`ApiGuard` to every HTTP request: admission, CORS, body caps."""

    def __init__(self, app: ASGIApp, guard: ApiGuard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        guard = self.guard
        conn = HTTPConnection(scope)
        preflight = scope["method"] == "OPTIONS" and "access-control-request-method" in conn.headers
        origin = guard.cors_origin(conn, preflight=preflight)
        cors = origin is not None
        try:
            if preflight:
                # answered before any credential check: a preflight never carries one
                await self._preflight(conn, origin, cors, send)
                return
            principal = guard.admit(conn)
            cap = guard.body_cap(scope["method"].upper(), conn.url.path)
            declared = conn.headers.get("content-length")
            if declared is not None:
                if not declared.isdigit():
                    raise Refusal(400, "bad-length", "invalid Content-Length header")
                if int(declared) > cap:
                    raise Refusal(413, "too-large", f"request body of {declared} bytes is over this route's cap of {cap}")
        except Refusal as exc:
            guard.refused[exc.reason] += 1
            await _send_error(send, exc.status, str(exc), cors_origin=origin if cors else None)
            return
        scope.setdefault("state", {})["principal"] = principal
        if principal.kind == "public":
            send = _only_keys(send, PUBLIC_NODE_KEYS)
        await self._run(scope, receive, send, cap, origin if cors else None)

    async def _preflight(self, conn: HTTPConnection, origin: str | None, cors: bool, send: Send) -> None:
        if not cors or origin is None:
            given = conn.headers.get("origin")
            raise Refusal(403, "bad-origin", f"origin {str(given)[:80]!r} is not allowed to call this node")
        headers = [(b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin"),
                   (b"access-control-allow-methods", CORS_METHODS),
                   (b"access-control-allow-headers", b"authorization, content-type"),
                   (b"access-control-max-age", b"600"), (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def _run(self, scope: Scope, receive: Receive, send: Send, cap: int, cors_origin: str | None) -> None:
        got = 0
        tripped = False
        started = False

        async def limited_receive() -> Message:
            nonlocal got, tripped
            message = await receive()
            if message["type"] == "http.request":
                got += len(message.get("body", b""))
                if got > cap:
                    tripped = True
                    raise BodyTooLarge(f"request body is over this route's cap of {cap} bytes")
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if tripped:  # whatever the app answers after the cut-off, the client gets the 413
                return
            if message["type"] == "http.response.start":
                started = True
                if cors_origin:
                    message = {**message, "headers": [*message.get("headers", []),
                                                      (b"access-control-allow-origin", cors_origin.encode()),
                                                      (b"vary", b"Origin")]}
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not tripped:  # a real failure: the server's error handler answers it
                raise
        if tripped and not started:
            self.guard.refused["too-large"] += 1
            await _send_error(send, 413, f"request body is over this route's cap of {cap} bytes",
                              cors_origin=cors_origin)


def _only_keys(send: Send, keys: tuple[str, ...]) -> Send:
    """A ``send`` that passes on a JSON object answer reduced to ``keys`` (the route's body is
    small and complete before it goes out; anything but a 200 JSON object becomes one error line)."""
    start: Message | None = None
    chunks: list[bytes] = []

    async def reduced(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
            return
        if message["type"] != "http.response.body" or start is None:
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        status, out = start["status"], error_body("this node's description is unavailable")
        try:
            data = json.loads(b"".join(chunks))
        except ValueError:
            data, status = None, 500
        if status == 200 and isinstance(data, dict):
            out = json.dumps({k: data[k] for k in keys if k in data}).encode()
        elif status == 200:
            status = 500
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "status": status, "headers": [*headers, (b"content-length", str(len(out)).encode())]})
        await send({"type": "http.response.body", "body": out})

    return reduced


async def _send_error(send: Send, status: int, message: str, *, cors_origin: str | None = None) -> None:
    body = error_body(message)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if cors_origin:
        headers += [(b"access-control-allow-origin", cors_origin.encode()), (b"vary", b"Origin")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
