"""Wallet users at the API: EIP-4361 sign-in (forged, wrong domain, wrong chain, reused,
expired), the wallet session credential, job ownership (403 for another wallet, node
credentials see all), wallet submissions, and CORS for delegates: against the real FastAPI
app through the real guard (httpx ASGI transport), with real eth_account signatures."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from fedswarm.api.app import create_app
from fedswarm.api.guard import ApiGuard
from fedswarm.api.jobs import job_parts
from fedswarm.api.wallet import SiweError, WalletSessions, parse_siwe
from fedswarm.ledger.hedera import ValueUnits
from fedswarm.protocol.messages import Role
from fedswarm.roles.client.records import EscrowRecord, JobRecord, JobTerms

PORT = 8124
BASE = f"http://127.0.0.1:{PORT}"
ORIGIN = BASE
CHAIN = 31337
ALICE = Account.from_key("0x" + "a1" * 32)
BOB = Account.from_key("0x" + "b2" * 32)
SPEC = {"format": "fedswarm-seq/1", "task": "classification", "input_shape": [2],
        "layers": [{"type": "Linear", "in_features": 2, "out_features": 2}]}


def sign(account: Any, message: str) -> str:
    return "0x" + bytes(account.sign_message(encode_defunct(text=message)).signature).hex()


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------ sign-in checks (no HTTP)


def test_siwe_sign_in_rules() -> None:
    clock = Clock()
    s = WalletSessions(lambda: CHAIN, session_s=60, clock=clock)
    ch = s.challenge(ALICE.address.lower(), CHAIN, ORIGIN)
    msg = ch["message"]
    parsed = parse_siwe(msg)
    assert parsed.address == ALICE.address and parsed.chain_id == CHAIN and parsed.uri == ORIGIN
    assert parsed.domain == "127.0.0.1:8124" and len(parsed.nonce) >= 8
    # wrong chain in the request: told which chain to switch to
    with pytest.raises(SiweError, match=f"switch your wallet to chain {CHAIN}"):
        s.challenge(ALICE.address, 1, ORIGIN)
    # forged: Bob signs Alice's message (the nonce is spent by the attempt)
    with pytest.raises(SiweError, match="not from the message's address"):
        s.sign_in(msg, sign(BOB, msg), ORIGIN)
    with pytest.raises(SiweError, match="already used"):
        s.sign_in(msg, sign(ALICE, msg), ORIGIN)
    # wrong domain: a message issued for one page presented by another
    msg = s.challenge(ALICE.address, CHAIN, ORIGIN)["message"]
    with pytest.raises(SiweError, match="not this page"):
        s.sign_in(msg, sign(ALICE, msg), "https://evil.example")
    # an edited message (other chain id) is not one the node issued
    msg = s.challenge(ALICE.address, CHAIN, ORIGIN)["message"]
    edited = msg.replace(f"Chain ID: {CHAIN}", "Chain ID: 1")
    with pytest.raises(SiweError, match="not the one this node issued"):
        s.sign_in(edited, sign(ALICE, edited), ORIGIN)
    # expired
    msg = s.challenge(ALICE.address, CHAIN, ORIGIN)["message"]
    clock.now += 301
    with pytest.raises(SiweError, match="expired"):
        s.sign_in(msg, sign(ALICE, msg), ORIGIN)
    # malformed signature and message
    msg = s.challenge(ALICE.address, CHAIN, ORIGIN)["message"]
    with pytest.raises(SiweError, match="65 bytes"):
        s.sign_in(msg, "0x1234", ORIGIN)
    with pytest.raises(SiweError):
        parse_siwe(msg + "\nResources: x")
    with pytest.raises(SiweError):
        parse_siwe("x" * 5000)
    # the good path, then the session expires
    msg = s.challenge(ALICE.address, CHAIN, ORIGIN)["message"]
    out = s.sign_in(msg, sign(ALICE, msg), ORIGIN)
    assert out["address"] == ALICE.address
    assert s.lookup(out["token"]) is not None
    clock.now += 61
    assert s.lookup(out["token"]) is None


def test_nonces_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import fedswarm.api.wallet as w

    monkeypatch.setattr(w, "MAX_CHALLENGES", 5)
    s = WalletSessions(lambda: CHAIN)
    first = s.challenge(ALICE.address, CHAIN, ORIGIN)["message"]
    for _ in range(5):
        s.challenge(ALICE.address, CHAIN, ORIGIN)
    with pytest.raises(SiweError, match="unknown"):  # the oldest was dropped
        s.sign_in(first, sign(ALICE, first), ORIGIN)


# ------------------------------------------------------------------ the app


class FakeDB:
    def __init__(self) -> None:
        self.by_id: dict[str, JobRecord] = {}

    def jobs(self) -> list[JobRecord]:
        return list(self.by_id.values())

    def get_job(self, job_id: str) -> JobRecord | None:
        return self.by_id.get(job_id)

    def put_job(self, job: JobRecord) -> None:
        self.by_id[job.job_id] = job

    def rounds(self, job_id: str) -> list[Any]:
        return []

    def units(self, job_id: str, round_: int | None = None) -> list[Any]:
        return []

    def get_escrow(self, job_id: str) -> EscrowRecord:
        return EscrowRecord()


class FakeRole:
    """The parts of ClientRole the job routes touch."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.db = FakeDB()
        self.escrow = SimpleNamespace(get_chain_id=lambda: CHAIN, contract_address="0x" + "cc" * 20,
                                      units=ValueUnits.native())
        self.identity = SimpleNamespace(address="0x" + "11" * 20, peer_id="12D3KooWfake", box_public_hex="00" * 32)
        self.node = fake_node()
        self.settings = SimpleNamespace(is_devnet=True, network="devnet", api_token=None)
        self.store = SimpleNamespace(presign_get=lambda key, ttl: f"http://store/{key}")
        self.submitted: list[dict[str, Any]] = []
        self.cancelled: list[str] = []

    def job(self, job_id: str) -> JobRecord:
        from fedswarm.roles.client import JobNotFound

        job = self.db.get_job(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    async def submit(self, data_path: Path, spec: dict[str, Any], terms: JobTerms, name: str = "",
                     weights: Path | None = None, owner: str = "node") -> str:
        job = JobRecord(job_id=f"job-{len(self.db.by_id)}", terms=terms, model=spec, dataset_path=str(data_path),
                        owner=owner)
        self.db.put_job(job)
        self.submitted.append({"owner": owner, "terms": terms})
        return job.job_id

    def request_cancel(self, job_id: str) -> JobRecord:
        self.cancelled.append(job_id)
        return self.job(job_id)

    def is_running(self, job_id: str) -> bool:
        return True

    def fetch_result(self, job: JobRecord) -> bytes:
        return b"plaintext"


def fake_node() -> Any:
    return SimpleNamespace(role=Role.CLIENT, peer_id="12D3KooWfake", addrs=["/ip4/127.0.0.1/tcp/1"],
                           identity=SimpleNamespace(address="0x" + "11" * 20), started_at=time.time(),
                           stats={}, limits_status=lambda: {}, gossip_status=lambda: {}, connected_peers=lambda: [],
                           directory=SimpleNamespace(records=lambda **kw: [], entries=lambda **kw: []))


def make(tmp_path: Path, **guard_kw: Any) -> tuple[Any, FakeRole, ApiGuard]:
    role = FakeRole(tmp_path / "home")
    role.home.mkdir(parents=True)
    parts = job_parts(role)  # type: ignore[arg-type]
    guard = ApiGuard(**{"token": "node-token", **guard_kw})
    app = create_app(fake_node(), guard=guard, extra_routers=parts.routers, extra_commands=parts.commands,
                     credentials=parts.credentials)
    return app, role, guard


def client(app: Any, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("127.0.0.1", 5000)), base_url=BASE,
                             headers=headers)


async def sign_in(http: httpx.AsyncClient, account: Any, origin: str = ORIGIN) -> str:
    r = await http.post("/api/v1/wallet/challenge", json={"address": account.address, "chain_id": CHAIN},
                        headers={"Origin": origin})
    assert r.status_code == 200, r.text
    msg = r.json()["message"]
    r = await http.post("/api/v1/wallet/session", json={"message": msg, "signature": sign(account, msg)},
                        headers={"Origin": origin})
    assert r.status_code == 200, r.text
    assert r.json()["address"] == account.address
    assert "HttpOnly" in r.headers["set-cookie"] and "SameSite=Strict" in r.headers["set-cookie"]
    return str(r.json()["token"])


def add_job(role: FakeRole, job_id: str, owner: str, **kw: Any) -> JobRecord:
    job = JobRecord(job_id=job_id, terms=JobTerms(), model=SPEC, dataset_path="/x", owner=owner, **kw)
    role.db.put_job(job)
    return job


def one_line(r: httpx.Response) -> str:
    body = r.json()
    assert body["status"] == "error" and "\n" not in body["error"], body
    return str(body["error"])


@pytest.fixture
def scope_patch(monkeypatch: pytest.MonkeyPatch) -> None:
    # httpx's ASGI transport sets no server port; the guard's host check needs the bound port.
    import httpx._transports.asgi as asgi

    orig = asgi.ASGITransport.handle_async_request

    async def handle(self: Any, request: httpx.Request) -> httpx.Response:
        app = self.app

        async def with_server(scope: dict[str, Any], receive: Any, send: Any) -> None:
            scope["server"] = ("127.0.0.1", PORT)
            await app(scope, receive, send)

        self.app = with_server
        try:
            return await orig(self, request)
        finally:
            self.app = app

    monkeypatch.setattr(asgi.ASGITransport, "handle_async_request", handle)


async def test_session_routes_and_ownership(tmp_path: Path, scope_patch: None) -> None:
    app, role, guard = make(tmp_path)
    async with client(app) as http:
        alice = await sign_in(http, ALICE)
        bob = await sign_in(http, BOB)
        a = {"Authorization": f"Wallet {alice}"}
        b = {"Authorization": f"Wallet {bob}"}
        r = await http.get("/api/v1/wallet/me", headers=a)
        assert r.json()["address"] == ALICE.address
        assert (await http.get("/api/v1/wallet/me", headers={"Authorization": "Wallet nope"})).status_code == 401

        add_job(role, "job-a", ALICE.address, funding={"to": "0x", "job_key": "0x" + "00" * 32},
                result_key="jobs/job-a/result", result_sha256="ab" * 32)
        add_job(role, "job-node", "node")
        listed = (await http.get("/api/v1/jobs", headers=a)).json()["jobs"]
        assert [j["job_id"] for j in listed] == ["job-a"]
        assert (await http.get("/api/v1/jobs", headers=b)).json()["jobs"] == []
        node_view = (await http.get("/api/v1/jobs", headers={"Authorization": "Bearer node-token"})).json()["jobs"]
        assert {j["job_id"] for j in node_view} == {"job-a", "job-node"}

        detail = (await http.get("/api/v1/jobs/job-a", headers=a)).json()
        assert detail["owner"] == ALICE.address and detail["funding"]["to"] == "0x"
        assert detail["refund"]["wei"] == "0"
        for method, path in [("GET", "/api/v1/jobs/job-a"), ("GET", "/api/v1/jobs/job-a/events"),
                             ("POST", "/api/v1/jobs/job-a/cancel"), ("GET", "/api/v1/jobs/job-a/result"),
                             ("GET", "/api/v1/jobs/job-a/result/link"), ("GET", "/api/v1/jobs/job-a/funding"),
                             ("GET", "/api/v1/jobs/job-a/audit"), ("GET", "/api/v1/jobs/job-node")]:
            r = await http.request(method, path, headers=b)
            assert r.status_code == 403, (method, path, r.text)
            assert "another account" in one_line(r)
        assert role.cancelled == []
        # the owner: funding, the link, and no plaintext result (409)
        assert (await http.get("/api/v1/jobs/job-a/funding", headers=a)).json()["to"] == "0x"
        link = (await http.get("/api/v1/jobs/job-a/result/link", headers=a)).json()
        assert link["envelope"] == "fedswarm-wallet-v1" and link["url"].startswith("http://store/")
        r = await http.get("/api/v1/jobs/job-a/result", headers=a)
        assert r.status_code == 409 and "use result/link" in one_line(r)
        # the node's own credential sees and controls the wallet's job
        r = await http.get("/api/v1/jobs/job-a", headers={"Authorization": "Bearer node-token"})
        assert r.status_code == 200
        # a wallet session reaches the wallet routes only
        assert (await http.get("/api/v1/peers", headers=a)).status_code == 403
        r = await http.post("/command", json={"cmd": "peers"}, headers=a)
        assert r.status_code == 403 and "wallet session" in one_line(r)
        # the cookie works the same as the header (same-origin pages)
        r = await http.get("/api/v1/wallet/me", headers={"Cookie": f"fedswarm_wallet_{PORT}={alice}"})
        assert r.json()["address"] == ALICE.address
        # a page of this node holding both its UI session and a wallet cookie acts as the wallet
        both = f"fedswarm_session_{PORT}={guard.session_secret}; fedswarm_wallet_{PORT}={alice}"
        r = await http.get("/api/v1/jobs", headers={"Cookie": both})
        assert [j["job_id"] for j in r.json()["jobs"]] == ["job-a"]
        r = await http.get("/api/v1/jobs", headers={"Cookie": f"fedswarm_session_{PORT}={guard.session_secret}"})
        assert len(r.json()["jobs"]) == 2
        # sign out: the token is dead
        assert (await http.delete("/api/v1/wallet/session", headers=a)).status_code == 200
        assert (await http.get("/api/v1/jobs", headers=a)).status_code == 401
    assert guard.refused["not-owner"] >= 8


async def test_wallet_submission_needs_a_result_key(tmp_path: Path, scope_patch: None) -> None:
    app, role, _ = make(tmp_path)
    files = {"dataset": ("d.csv", b"a,b,label\n1,2,0\n"), "model": ("m.json", json.dumps(SPEC).encode())}
    async with client(app) as http:
        token = await sign_in(http, ALICE)
        a = {"Authorization": f"Wallet {token}"}
        r = await http.post("/api/v1/jobs", files=files, data={"terms": "{}"}, headers=a)
        assert r.status_code == 400 and "result_public_key" in one_line(r)
        r = await http.post("/api/v1/jobs", files=files, headers=a,
                            data={"terms": "{}", "result_public_key": "zz" * 32, "result_key_origin": ORIGIN})
        assert r.status_code == 400 and "bad result key" in one_line(r)
        assert role.submitted == [] and not list((role.home / "uploads").rglob("*.csv"))
        r = await http.post("/api/v1/jobs", files=files, headers=a,
                            data={"terms": "{}", "result_public_key": "AB" * 32, "result_key_origin": ORIGIN})
        assert r.status_code == 200, r.text
        (sub,) = role.submitted
        assert sub["owner"] == ALICE.address
        assert sub["terms"].user_box_public == "ab" * 32 and sub["terms"].result_key_origin == ORIGIN
        # the node's own submission stays the node's
        r = await http.post("/api/v1/jobs", files=files, data={"terms": "{}"},
                            headers={"Authorization": "Bearer node-token"})
        assert r.status_code == 200 and role.submitted[-1]["owner"] == "node"


async def test_cors_for_delegates_and_allowlist(tmp_path: Path, scope_patch: None) -> None:
    evil = "https://pages.example"
    pre = {"Origin": evil, "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization, content-type"}
    # not a delegate, origin not allowed: preflight refused, no CORS header anywhere
    app, _, _ = make(tmp_path / "plain")
    async with client(app) as http:
        r = await http.options("/api/v1/jobs", headers=pre)
        assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
        r = await http.post("/api/v1/wallet/challenge", json={"address": ALICE.address}, headers={"Origin": evil})
        assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    # a delegate: any origin on the wallet routes, with a wallet header; nothing else
    app, role, _ = make(tmp_path / "delegate", delegate=True)
    add_job(role, "job-a", ALICE.address)
    async with client(app) as http:
        r = await http.options("/api/v1/jobs", headers=pre)
        assert r.status_code == 204 and r.headers["access-control-allow-origin"] == evil
        assert "DELETE" in r.headers["access-control-allow-methods"]
        assert "access-control-allow-credentials" not in r.headers
        r = await http.options("/command", headers=pre)
        assert r.status_code == 403
        r = await http.options("/api/v1/peers", headers=pre)
        assert r.status_code == 403
        token = await sign_in(http, ALICE, origin=evil)  # the message is bound to that page
        r = await http.get("/api/v1/jobs", headers={"Origin": evil, "Authorization": f"Wallet {token}"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == evil
        assert [j["job_id"] for j in r.json()["jobs"]] == ["job-a"]
        # without a wallet header: no CORS, and changes from that origin are refused
        r = await http.get("/api/v1/jobs", headers={"Origin": evil})
        assert "access-control-allow-origin" not in r.headers
        r = await http.post("/api/v1/jobs/job-a/cancel", headers={"Origin": evil})
        assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
        # the node's own routes stay closed to that origin, even with a wallet
        r = await http.post("/command", json={"cmd": "peers"}, headers={"Origin": evil, "Authorization": f"Wallet {token}"})
        assert r.status_code == 403
    # an allowlisted origin (FEDSWARM_API_ORIGINS) gets CORS on every route
    app, _, _ = make(tmp_path / "allow", origins=[evil])
    async with client(app) as http:
        r = await http.options("/api/v1/peers", headers=pre)
        assert r.status_code == 204 and r.headers["access-control-allow-origin"] == evil



async def test_delegate_tells_its_chain_to_any_page(tmp_path: Path, scope_patch: None) -> None:
    """Before sign-in a page of another origin learns a delegate's chain (and nothing else)
    from GET /api/v1/node; every other route's refusal stays as it was."""
    evil = "https://pages.example"
    app, role, guard = make(tmp_path / "delegate", delegate=True)
    add_job(role, "job-a", ALICE.address)
    async with client(app) as http:
        r = await http.get("/api/v1/node", headers={"Origin": evil})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == evil
        assert "access-control-allow-credentials" not in r.headers
        body = r.json()
        assert set(body) == {"chain"} and body["chain"]["id"] == CHAIN and body["chain"]["currency"] == "ETH"
        assert body["chain"]["contract"] == role.escrow.contract_address
        assert body["chain"]["operator"] == role.identity.address
        assert int(r.headers["content-length"]) == len(r.content)
        # a local process (no Origin) and the node's own page keep the full description
        full = (await http.get("/api/v1/node")).json()
        assert full["peer_id"] == "12D3KooWfake" and full["chain"] == body["chain"]
        assert "peer_id" in (await http.get("/api/v1/node", headers={"Origin": ORIGIN})).json()
        # a wrong credential is still a 401; a wallet session gets the full answer
        r = await http.get("/api/v1/node", headers={"Origin": evil, "Authorization": "Wallet nope"})
        assert r.status_code == 401
        token = await sign_in(http, ALICE, origin=evil)
        r = await http.get("/api/v1/node", headers={"Origin": evil, "Authorization": f"Wallet {token}"})
        assert r.status_code == 200 and "peer_id" in r.json()
        http.cookies.clear()  # the sign-in's wallet cookie: a browser never sends it cross-origin
        # nothing else opens: the jobs, a job, the node's own routes, other methods
        r = await http.get("/api/v1/jobs", headers={"Origin": evil})
        assert "access-control-allow-origin" not in r.headers
        for method, path in [("GET", "/api/v1/jobs/job-a/result"), ("POST", "/api/v1/jobs/job-a/cancel"),
                             ("POST", "/api/v1/node")]:
            r = await http.request(method, path, headers={"Origin": evil})
            assert r.status_code in (403, 405) and "access-control-allow-origin" not in r.headers, (method, path)
        assert "access-control-allow-origin" not in (await http.get("/api/v1/peers", headers={"Origin": evil})).headers
    assert role.cancelled == []
    # not a delegate: no CORS for that origin (the browser cannot read the answer)
    app, _, _ = make(tmp_path / "plain")
    async with client(app) as http:
        r = await http.get("/api/v1/node", headers={"Origin": evil})
        assert "access-control-allow-origin" not in r.headers
    # a delegate on a public bind: the chain block to anyone without a credential, the rest needs one
    app, _, _ = make(tmp_path / "public", delegate=True, bind_host="0.0.0.0")
    async with client(app) as http:
        r = await http.get("/api/v1/node")
        assert r.status_code == 200 and set(r.json()) == {"chain"}
        assert (await http.get("/api/v1/jobs")).status_code == 401
        assert (await http.get("/api/v1/node", headers={"Authorization": "Bearer node-token"})).json()["peer_id"]

def test_chain_block_units_and_explorer(tmp_path: Path) -> None:
    from fedswarm.api.wallet_jobs import chain_info

    role = FakeRole(tmp_path)
    dev = chain_info(role)  # type: ignore[arg-type]
    assert dev == {"id": CHAIN, "name": "devnet", "currency": "ETH", "amount_decimals": 18, "value_decimals": 18,
                   "explorer_tx": None, "contract": role.escrow.contract_address, "operator": role.identity.address}
    role.escrow = SimpleNamespace(get_chain_id=lambda: 296, contract_address="0x" + "cc" * 20,
                                  units=ValueUnits.hedera())
    role.settings = SimpleNamespace(is_devnet=False, network="testnet", api_token=None)
    hedera = chain_info(role)  # type: ignore[arg-type]
    assert hedera["name"] == "hedera-testnet" and hedera["currency"] == "HBAR"
    assert hedera["amount_decimals"] == 8 and hedera["value_decimals"] == 18
    assert hedera["explorer_tx"] == "https://hashscan.io/testnet/transaction/{tx}"
