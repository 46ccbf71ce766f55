"""Browser test helpers: Debian's Chromium under Playwright, an EIP-1193 wallet injected into
the page, and (for the fast tests) a node mocked at the network layer.

The wallet is a small JavaScript shim (EIP-6963 announcement + ``window.ethereum``) whose
``request`` calls a Python function through ``page.expose_function``: :class:`Wallet` answers
it, forwarding to a JSON-RPC endpoint (the devnet's anvil, whose default accounts are unlocked,
so ``personal_sign`` and ``eth_sendTransaction`` run on anvil itself) or faking the chain.
"""

from __future__ import annotations

import json
import mimetypes
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
STATIC = Path(__file__).resolve().parents[2] / "src" / "fedswarm" / "web" / "static"

WALLET_SHIM = """
(() => {
  const listeners = {};
  const provider = {
    isFedswarmTest: true,
    async request({ method, params }) {
      const out = await window.__walletRpc(method, params === undefined ? [] : params);
      if (out && out.error) { const e = new Error(out.error.message); e.code = out.error.code; throw e; }
      if (out && out.chainChanged) (listeners.chainChanged || []).forEach((fn) => fn(out.chainChanged));
      return out ? out.result : null;
    },
    on(name, fn) { (listeners[name] = listeners[name] || []).push(fn); },
    removeListener(name, fn) { listeners[name] = (listeners[name] || []).filter((f) => f !== fn); },
  };
  const info = { uuid: "7f1c0c4e-0000-4000-8000-fed5a4a11e70", name: "Test Wallet", icon: "data:,", rdns: "org.fedswarm.test" };
  const announce = () => window.dispatchEvent(new CustomEvent("eip6963:announceProvider", { detail: Object.freeze({ info, provider }) }));
  window.addEventListener("eip6963:requestProvider", announce);
  announce();
})();
"""


@dataclass
class Wallet:
    """The Python side of the injected wallet: one account on one chain.

    ``rpc_url``: forward everything else to this JSON-RPC endpoint (anvil); without it the
    chain is faked (``balance`` in value units, signatures from ``sign``)."""

    address: str
    chain_id: int
    rpc_url: str | None = None
    balance: int = 0
    sign: Callable[[str], str] | None = None
    calls: list[tuple[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    authorised: bool = False

    def handle(self, method: str, params: list[Any]) -> dict[str, Any]:
        self.calls.append((method, params))
        if method == "eth_requestAccounts":
            self.authorised = True
        if method in ("eth_requestAccounts", "eth_accounts"):
            # As a real wallet: no account is shared before the site asked for one.
            return {"result": [self.address] if self.authorised else []}
        if method == "eth_chainId":
            return {"result": hex(self.chain_id)}
        if method == "wallet_switchEthereumChain":
            self.chain_id = int(params[0]["chainId"], 16)
            return {"result": None, "chainChanged": hex(self.chain_id)}
        if self.rpc_url is None:
            return self._fake(method, params)
        if method == "eth_sendTransaction":
            self.sent.append(params[0])
        resp = httpx.post(self.rpc_url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}, timeout=60)
        body = resp.json()
        if "error" in body:
            return {"error": {"code": body["error"].get("code", -32000), "message": body["error"].get("message", "rpc error")}}
        return {"result": body.get("result")}

    def _fake(self, method: str, params: list[Any]) -> dict[str, Any]:
        if method == "eth_getBalance":
            return {"result": hex(self.balance)}
        if method == "personal_sign":
            text = bytes.fromhex(params[0][2:]).decode()
            assert self.sign is not None, "this fake wallet cannot sign"
            return {"result": self.sign(text)}
        if method == "eth_sendTransaction":
            self.sent.append(params[0])
            return {"result": "0x" + "ab" * 32}
        if method == "eth_getTransactionReceipt":
            return {"result": {"status": "0x1"}}
        return {"error": {"code": 4200, "message": f"unsupported in the fake wallet: {method}"}}


def install_wallet(ctx: Any, wallet: Wallet) -> None:
    """Inject the EIP-1193 shim into every page of ``ctx`` and answer it with ``wallet``."""
    ctx.expose_function("__walletRpc", wallet.handle)
    ctx.add_init_script(WALLET_SHIM)


def guard_requests(ctx: Any, allowed: Callable[[str], bool] | None = None) -> list[str]:
    """Abort (and record) every request to a host other than 127.0.0.1; returns the list."""
    outside: list[str] = []

    def check(route: Any) -> None:
        url = route.request.url
        host = urlsplit(url).hostname
        if url.startswith("data:") or (host == "127.0.0.1" and (allowed is None or allowed(url))):
            route.fallback()
        else:
            outside.append(url)
            route.abort()

    ctx.route("**/*", check)
    return outside


@dataclass
class Recorded:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes


class MockNode:
    """A node faked at the network layer: static files from the package, API answers from
    ``routes`` (``"GET /api/v1/x"`` -> JSON, or a callable returning (status, body, headers))."""

    def __init__(self, origin: str = "http://127.0.0.1:8765") -> None:
        from fedswarm.web import CSP

        self.origin = origin
        self.csp = CSP
        self.routes: dict[str, Any] = {}
        self.requests: list[Recorded] = []

    def install(self, ctx: Any, prefix: str | None = None) -> None:
        ctx.route(f"{prefix or self.origin}/**", self._handle)

    def _handle(self, route: Any) -> None:
        req = route.request
        parts = urlsplit(req.url)
        path = parts.path
        body = req.post_data_buffer
        self.requests.append(Recorded(req.method, req.url, dict(req.headers), body or b""))
        if path == "/":
            route.fulfill(status=200, body=(STATIC / "index.html").read_bytes(),
                          headers={"Content-Type": "text/html", "Content-Security-Policy": self.csp})
            return
        if path.startswith("/ui/static/"):
            f = (STATIC / path[len("/ui/static/"):]).resolve()
            if STATIC in f.parents and f.is_file():
                ctype = "text/javascript" if f.suffix == ".js" else mimetypes.guess_type(f.name)[0] or "text/plain"
                route.fulfill(status=200, body=f.read_bytes(), headers={"Content-Type": ctype})
            else:
                route.fulfill(status=404, body="not found")
            return
        cors = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Headers": "Authorization, Content-Type",
                "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS"}
        if req.method == "OPTIONS":
            route.fulfill(status=204, headers=cors)
            return
        answer = self.routes.get(f"{req.method} {path}")
        if answer is None:
            route.fulfill(status=404, body=json.dumps({"error": f"no route {path}"}),
                          headers={"Content-Type": "application/json", **cors})
            return
        status, payload, headers = answer(req) if callable(answer) else (200, answer, {})
        data = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
        route.fulfill(status=status, body=data, headers={"Content-Type": "application/json", **cors, **headers})

    def calls(self, method: str, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and urlsplit(r.url).path == path]


def free_port() -> int:
    """A loopback TCP port free right now (the client must know its API address before it
    starts, to advertise it with ``--public-api``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def ui_network(root: Path, trainers: int) -> Iterator[dict[str, Any]]:
    """A devnet, a bootstrap, a client and ``trainers``+1 trainers (one standby) started with
    the normal CLI, as `fedswarm demo` does; yields once the client sees every trainer online
    and the bootstrap lists the client's public API. The client is a delegate (``--public-api``
    its own API URL): pages of the other nodes (every node serves the UI) may drive it. It
    finds the devnet's topic log through FEDSWARM_DEVNET_HOME (the UI's audit view)."""
    from fedswarm.demo import DEFAULT_PRICE, bundled_dataset
    from fedswarm.devnet import Devnet
    from fedswarm.roles.launcher import NodeProcess, start_node, start_nodes

    nodes: list[NodeProcess] = []
    devnet = Devnet.start(root / "devnet")
    try:
        dn = ["--devnet-home", str(root / "devnet")]
        hb = ["--heartbeat", "0.5", "--peer-timeout", "3"]
        boot = start_node("bootstrap", root / "bootstrap", extra_args=hb)
        nodes.append(boot)
        client_api = f"http://127.0.0.1:{free_port()}"
        specs: list[tuple[str, Path, dict[str, Any]]] = [
            ("client", root / "client", {"bootstrap": boot.addr, "api": client_api.removeprefix("http://"),
                                         "extra_args": [*dn, *hb, "--public-api", client_api],
                                         "env": {"FEDSWARM_DEVNET_HOME": str(root / "devnet")}})]
        for i in range(trainers + 1):
            specs.append(("trainer", root / f"trainer{i}", {"bootstrap": boot.addr, "extra_args": [
                *dn, *hb, "--no-gpu", "--price-wei", str(DEFAULT_PRICE + 1000 * i)]}))
        started = start_nodes(specs)
        nodes.extend(started)
        client = started[0]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = httpx.get(f"{client.api}/api/v1/trainers", timeout=10).json()["trainers"]
            if sum(r["online"] for r in rows) >= trainers + 1:
                break
            time.sleep(0.3)
        else:
            raise AssertionError("the client did not see every trainer within 60 s")
        assert client.api == client_api, (client.api, client_api)
        while client_api not in [c["api"] for c in httpx.get(f"{boot.api}/api/v1/clients", timeout=10).json()["clients"]]:
            assert time.monotonic() < deadline + 30, "the bootstrap does not list the client's public API"
            time.sleep(0.3)
        data, _, _ = bundled_dataset("breast_cancer", root)
        yield {"client": client, "bootstrap": boot, "trainers": started[1:], "root": root, "dataset": data,
               "devnet": devnet, "rpc": devnet.state["chain"]["rpc_url"]}
    finally:
        for n in reversed(nodes):
            n.stop()
        devnet.stop()
