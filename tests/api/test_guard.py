"""The API guard and the streamed uploads, against the real FastAPI app (httpx ASGI transport):
every attack is refused with a one-line JSON error and changes nothing (no job submitted, no
result decrypted, no upload left on disk)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedswarm.api.app import create_app
from fedswarm.api.guard import ApiGuard, SessionCredential, split_host
from fedswarm.api.jobs import job_parts
from fedswarm.api.uploads import UploadError, safe_filename
from fedswarm.protocol.messages import Role

PORT = 8123
BASE = f"http://127.0.0.1:{PORT}"
SPEC = {"format": "fedswarm-seq/1", "task": "classification", "input_shape": [4],
        "layers": [{"type": "Linear", "in_features": 4, "out_features": 2}]}


class FakeRole:
    """The parts of ClientRole the job routes touch; records what reached it."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.submitted: list[tuple[Path, dict[str, Any], str]] = []
        self.results_served = 0
        self.db = SimpleNamespace(jobs=lambda: [])
        self.job_obj = SimpleNamespace(job_id="job-1", state="done", result_key="jobs/job-1/result",
                                       result_sha256="00" * 32)

    async def submit(self, data_path: Path, spec: dict[str, Any], terms: Any, name: str = "",
                     weights: Path | None = None) -> str:
        self.submitted.append((data_path, spec, name))
        return "job-new"

    def job(self, job_id: str) -> Any:
        return self.job_obj

    def fetch_result(self, job: Any) -> bytes:
        self.results_served += 1
        return b"decrypted weights"


def fake_node() -> Any:
    return SimpleNamespace(role=Role.CLIENT, peer_id="12D3KooWfake", addrs=["/ip4/127.0.0.1/tcp/1"],
                           identity=SimpleNamespace(address="0x" + "11" * 20), started_at=time.time(),
                           stats={}, limits_status=lambda: {}, gossip_status=lambda: {}, connected_peers=lambda: [])


def make(tmp_path: Path, **guard_kw: Any) -> tuple[Any, FakeRole, ApiGuard]:
    role = FakeRole(tmp_path / "home")
    role.home.mkdir()
    parts = job_parts(role)  # type: ignore[arg-type]
    guard = ApiGuard(**guard_kw)
    app = create_app(fake_node(), guard=guard, extra_routers=parts.routers, extra_commands=parts.commands)
    return app, role, guard


def client(app: Any, base: str = BASE) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base)


def uploads_left(role: FakeRole) -> list[Path]:
    root = role.home / "uploads"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def job_files(name: str = "data.csv", model: bytes | None = None) -> dict[str, Any]:
    return {"dataset": (name, b"a,b,label\n1,2,0\n"),
            "model": ("model.json", model if model is not None else json.dumps(SPEC).encode())}


def one_line_error(r: httpx.Response) -> str:
    body = r.json()
    assert body["status"] == "error" and "\n" not in body["error"], body
    return body["error"]


# ------------------------------------------------------------------ public bind: token on every route


async def test_public_bind_needs_the_token_for_every_read(tmp_path: Path) -> None:
    app, role, guard = make(tmp_path, bind_host="0.0.0.0", token="s3cret")
    async with client(app, "http://node.example:8123") as c:
        for path in ("/api/v1/jobs", "/api/v1/jobs/job-1", "/api/v1/jobs/job-1/result", "/api/v1/peers", "/docs"):
            r = await c.get(path)
            assert r.status_code == 401, path
            assert "token" in one_line_error(r)
        assert role.results_served == 0
        assert (await c.get("/status")).status_code == 200
        assert (await c.get("/ui/static/app.js")).status_code == 200
        assert "set-cookie" not in (await c.get("/")).headers  # no free session on a public bind
        ok = await c.get("/api/v1/jobs/job-1/result", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.content == b"decrypted weights"
        assert (await c.get("/api/v1/jobs", headers={"Authorization": "Bearer wrong"})).status_code == 401
        st_ = (await c.get("/status")).json()["api_guard"]
        assert st_["public"] and st_["refused"]["no-credential"] >= 5 and st_["refused"]["bad-token"] == 1


# ------------------------------------------------------------------ loopback: Host, Origin, session


async def test_dns_rebinding_host_is_refused(tmp_path: Path) -> None:
    app, role, _ = make(tmp_path)
    async with client(app) as c:
        for host in ("evil.example", f"evil.example:{PORT}", "127.0.0.1:9", "localhost.evil.example",
                     "127.0.0.1@evil", ""):
            r = await c.get("/api/v1/jobs/job-1/result", headers={"Host": host})
            assert r.status_code in (400, 421), host
            one_line_error(r)
        assert role.results_served == 0
        for host in (f"127.0.0.1:{PORT}", f"localhost:{PORT}", f"[::1]:{PORT}"):
            assert (await c.get("/status", headers={"Host": host})).status_code == 200


async def test_cross_site_form_post_creates_no_job(tmp_path: Path) -> None:
    app, role, _ = make(tmp_path)
    terms = json.dumps({"price_cap_wei": 10**20, "rounds": 1000})
    async with client(app) as c:
        for origin in ("http://evil.example", "null", f"http://evil.example:{PORT}"):
            r = await c.post("/api/v1/jobs", files=job_files(), data={"terms": terms},
                             headers={"Origin": origin, "Sec-Fetch-Site": "cross-site"})
            assert r.status_code == 403 and "origin" in one_line_error(r)
        # Same origin but no session cookie (a page that was not served by this node start)
        r = await c.post("/api/v1/jobs", files=job_files(), headers={"Origin": BASE})
        assert r.status_code == 403 and "session" in one_line_error(r)
    assert role.submitted == [] and uploads_left(role) == []


async def test_ui_session_cookie_admits_the_page(tmp_path: Path) -> None:
    app, role, guard = make(tmp_path)
    async with client(app) as c:
        page = await c.get("/")
        cookie = page.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert cookie.startswith(SessionCredential.cookie_name(PORT) + "=")
        # the browser now sends the cookie (httpx keeps it); Origin is the page's own
        r = await c.post("/api/v1/jobs", files=job_files(), headers={"Origin": BASE, "Sec-Fetch-Site": "same-origin"})
        assert r.status_code == 200, r.text
        got = await c.get("/api/v1/jobs/job-1/result", headers={"Sec-Fetch-Site": "same-origin"})
        assert got.status_code == 200 and got.content == b"decrypted weights"
    # A stale cookie (an earlier start) is refused with a hint, not admitted.
    async with client(app) as c:
        c.cookies.set(SessionCredential.cookie_name(PORT), "stale")
        r = await c.post("/api/v1/jobs/job-1/cancel", headers={"Origin": BASE})
        assert r.status_code == 401 and "reload" in one_line_error(r)
    assert len(role.submitted) == 1


async def test_cli_on_loopback_keeps_working_but_gets_no_plaintext(tmp_path: Path) -> None:
    app, role, guard = make(tmp_path)
    async with client(app) as c:
        r = await c.post("/api/v1/jobs", files=job_files(), data={"terms": "{}"})
        assert r.status_code == 200 and r.json()["job_id"] == "job-new"
        r = await c.get("/api/v1/jobs/job-1/result")
        assert r.status_code == 403 and "owner" in one_line_error(r)
        assert role.results_served == 0
        # the local secret (HOME/api-secret) is the node's token for processes of its user
        r = await c.get("/api/v1/jobs/job-1/result", headers={"Authorization": f"Bearer {guard.local_secret}"})
        assert r.status_code == 200 and role.results_served == 1
        # a cross-site navigation to the result carries no SameSite=Strict cookie
        r = await c.get("/api/v1/jobs/job-1/result", headers={"Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 403 and role.results_served == 1


async def test_train_command_with_server_paths_needs_the_token(tmp_path: Path) -> None:
    app, role, guard = make(tmp_path)
    secret = tmp_path / "secret.csv"
    secret.write_text("a,label\n1,0\n")
    body = {"cmd": "train", "args": [str(secret), "breast_cancer", {}]}
    async with client(app) as c:
        r = await c.post("/command", json=body)
        assert r.status_code == 403 and "token" in one_line_error(r)
        assert role.submitted == []
        r = await c.post("/command", json=body, headers={"Authorization": f"Bearer {guard.local_secret}"})
        assert r.status_code == 200 and role.submitted[0][0] == secret


def test_cli_sends_the_local_secret_of_the_node_it_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`fedswarm job ...` finds HOME/api-secret beside HOME/node.json and sends it: the node's
    owner gets /command train and the decrypted result without configuring a token."""
    import argparse

    from fedswarm import commands_job
    from fedswarm.api.guard import write_local_secret
    from fedswarm.config import ConfigError

    monkeypatch.delenv("FEDSWARM_API_TOKEN", raising=False)
    app, role, guard = make(tmp_path)
    (role.home / "node.json").write_text(json.dumps({"api": BASE}))
    data = tmp_path / "data.csv"
    data.write_text("a,label\n1,0\n")
    train = {"cmd": "train", "args": [str(data), "breast_cancer", {}]}
    args = argparse.Namespace(api=None, home=role.home, token=None)

    def request(method: str, url: str, headers: dict[str, str], timeout: float, **kw: Any) -> httpx.Response:
        async def go() -> httpx.Response:  # the CLI's sync call, answered by the app in-process
            async with client(app) as c:
                r = await c.request(method, url, headers=headers, **kw)
                await r.aread()
                return r
        return trio.run(go)

    monkeypatch.setattr(commands_job.httpx, "request", request)
    # no secret written yet: the guard refuses, as it would a stranger's process
    with pytest.raises(ConfigError, match="token"):
        commands_job._call("POST", f"{BASE}/command", args, json=train)
    write_local_secret(role.home, guard.local_secret)
    assert commands_job._headers(args) == {"Authorization": f"Bearer {guard.local_secret}"}
    out = commands_job._call("POST", f"{BASE}/command", args, json=train).json()
    assert out["job_id"] == "job-new" and role.submitted[0][0] == data
    got = commands_job._call("GET", f"{BASE}/api/v1/jobs/job-1/result", args)
    assert got.content == b"decrypted weights" and role.results_served == 1
    # another API than the node at --home never gets this node's secret; a token wins over it
    assert commands_job._headers(argparse.Namespace(api="http://127.0.0.1:9", home=role.home, token=None)) == {}
    assert commands_job._headers(argparse.Namespace(api=BASE + "/", home=role.home, token=None)) != {}
    assert commands_job._headers(argparse.Namespace(api=None, home=role.home, token="tok")) == {"Authorization": "Bearer tok"}
    assert commands_job._headers(argparse.Namespace(api=None, home=tmp_path / "nowhere", token=None)) == {}


async def test_token_on_loopback_guards_changes_and_the_session_exchange(tmp_path: Path) -> None:
    app, role, _ = make(tmp_path, token="tok")
    async with client(app) as c:
        assert "set-cookie" not in (await c.get("/")).headers
        r = await c.post("/api/v1/jobs", files=job_files())
        assert r.status_code == 401
        assert (await c.post("/api/v1/session")).status_code == 401
        r = await c.post("/api/v1/session", headers={"Authorization": "Bearer tok", "Origin": BASE})
        assert r.status_code == 200 and "HttpOnly" in r.headers["set-cookie"]
        r = await c.post("/api/v1/jobs", files=job_files(), headers={"Origin": BASE})
        assert r.status_code == 200  # admitted by the cookie the token bought
    assert len(role.submitted) == 1


async def test_allowed_origins_get_cors_and_no_one_else(tmp_path: Path) -> None:
    app, _, _ = make(tmp_path, origins=["https://ui.example"])
    pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    async with client(app) as c:
        r = await c.options("/api/v1/quote", headers={"Origin": "https://ui.example", **pre})
        assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "https://ui.example"
        r = await c.options("/api/v1/quote", headers={"Origin": "https://evil.example", **pre})
        assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
        r = await c.get("/status", headers={"Origin": "https://ui.example"})
        assert r.headers["access-control-allow-origin"] == "https://ui.example"
        r = await c.get("/status", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


# ------------------------------------------------------------------ bodies: caps while streaming


async def test_declared_oversize_body_is_refused_before_reading(tmp_path: Path) -> None:
    app, role, guard = make(tmp_path)
    async with client(app) as c:
        r = await c.post("/command", content=b"{}", headers={"Content-Length": str(10 << 20),
                                                              "Content-Type": "application/json"})
        assert r.status_code == 413
        one_line_error(r)
        assert guard.body_cap("POST", "/api/v1/jobs") > 2 << 30  # the upload route declared its cap
        big = guard.body_cap("POST", "/api/v1/jobs") + 1
        r = await c.post("/api/v1/jobs", content=b"x", headers={"Content-Length": str(big),
                                                                 "Content-Type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413
    assert role.submitted == [] and uploads_left(role) == []


async def test_undeclared_body_is_cut_off_at_the_cap(tmp_path: Path) -> None:
    app, role, guard = make(tmp_path)
    sent = 0

    async def endless():
        nonlocal sent
        for _ in range(1000):
            sent += 16384
            yield b" " * 16384

    async with client(app) as c:
        r = await c.post("/command", content=endless(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "cap" in one_line_error(r)
    assert sent < 1000 * 16384  # stopped reading, did not drain the stream
    assert guard.refused["too-large"] == 1


async def test_a_part_over_its_cap_is_refused_and_removed(tmp_path: Path) -> None:
    app, role, _ = make(tmp_path)
    async with client(app) as c:
        r = await c.post("/api/v1/jobs", files=job_files(model=b" " * ((1 << 20) + 1)))
        assert r.status_code == 413 and "model" in one_line_error(r)
        r = await c.post("/api/v1/jobs", files={**job_files(), "extra": ("x.bin", b"1")})
        assert r.status_code == 400 and "unexpected" in one_line_error(r)
        r = await c.post("/api/v1/jobs", data={"terms": "x" * (65 << 10)}, files=job_files())
        assert r.status_code == 413
    assert role.submitted == [] and uploads_left(role) == []


async def test_deeply_nested_model_or_terms_is_a_400_and_the_node_stays_up(tmp_path: Path) -> None:
    app, role, _ = make(tmp_path)
    bomb = b"[" * 100_000  # 100 KB: json.loads alone raises RecursionError (or overflows the C stack)
    async with client(app) as c:
        r = await c.post("/api/v1/jobs", files=job_files(model=bomb), data={"terms": "{}"})
        assert r.status_code == 400 and "deeper than 32" in one_line_error(r)
        r = await c.post("/api/v1/jobs", files=job_files(), data={"terms": "[" * 60_000})
        assert r.status_code == 400 and "bad terms" in one_line_error(r)
        assert role.submitted == [] and uploads_left(role) == []
        # still serving: the next good submission goes through
        r = await c.post("/api/v1/jobs", files=job_files(), data={"terms": "{}"})
        assert r.status_code == 200 and r.json()["job_id"] == "job-new"
        assert (await c.get("/status")).status_code == 200
    assert len(role.submitted) == 1


def raw_multipart(filename: bytes, boundary: bytes = b"XyZ") -> bytes:
    return (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"dataset\"; filename=\"" + filename
            + b"\"\r\nContent-Type: text/csv\r\n\r\na,label\n1,0\n\r\n--" + boundary + b"\r\n"
            + b"Content-Disposition: form-data; name=\"example\"\r\n\r\nbreast_cancer\r\n--" + boundary + b"--\r\n")


@pytest.mark.parametrize("name", [b"..", b".", b"", b"a/b.csv", b"..\\x.csv", b"a\x00b.csv", b"/etc/passwd",
                                  b"x" * 200 + b".csv", b"a\x1bb.csv"])
async def test_bad_filenames_are_a_400(tmp_path: Path, name: bytes) -> None:
    app, role, _ = make(tmp_path)
    async with client(app) as c:
        r = await c.post("/api/v1/jobs", content=raw_multipart(name),
                         headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
        assert r.status_code == 400, r.text
        one_line_error(r)
    assert role.submitted == [] and uploads_left(role) == []


async def test_good_raw_multipart_reaches_the_role(tmp_path: Path) -> None:
    app, role, _ = make(tmp_path)
    async with client(app) as c:
        r = await c.post("/api/v1/jobs", content=raw_multipart(b"my data.csv"),
                         headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
        assert r.status_code == 200, r.text
    path, _, name = role.submitted[0]
    assert name == "my data.csv" and path.name == "my data.csv" and path.read_text() == "a,label\n1,0\n"


def test_safe_filename_rules() -> None:
    assert safe_filename("data.v2.csv") == "data.v2.csv"
    for bad in ("", ".", "..", "a/b", "a\\b", "a\x00", "\u202ecsv.exe"):
        with pytest.raises(UploadError):
            safe_filename(bad)


def test_split_host() -> None:
    assert split_host("127.0.0.1:80") == ("127.0.0.1", 80)
    assert split_host("[::1]:8080") == ("[::1]", 8080)
    assert split_host("LOCALHOST") == ("localhost", None)
    for bad in ("a b", "host:port", "a/b", "[::1]x", "u@h"):
        with pytest.raises(ValueError):
            split_host(bad)


# ------------------------------------------------------------------ fuzzing


part_names = st.sampled_from(["dataset", "model", "weights", "terms", "example", "other", ""])
file_names = st.one_of(st.none(), st.text(max_size=20), st.sampled_from(["..", "a.csv", "x/y", "\x00"]))


@st.composite
def multipart_bodies(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=400))
    out = b""
    for _ in range(draw(st.integers(0, 5))):
        name = draw(part_names)
        fname = draw(file_names)
        disp = f'form-data; name="{name}"' + (f'; filename="{fname}"' if fname is not None else "")
        out += b"--B\r\nContent-Disposition: " + disp.encode("utf-8", "surrogatepass") + b"\r\n\r\n"
        out += draw(st.binary(max_size=100)) + b"\r\n"
    if draw(st.booleans()):
        out += b"--B--\r\n"
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=multipart_bodies())
def test_fuzzed_multipart_never_crashes_and_leaves_nothing(tmp_path_factory: pytest.TempPathFactory, body: bytes) -> None:
    app, role, _ = make(tmp_path_factory.mktemp("fuzz"))

    async def run() -> httpx.Response:
        async with client(app) as c:
            return await c.post("/api/v1/jobs", content=body,
                                headers={"Content-Type": "multipart/form-data; boundary=B"})

    r = trio.run(run)
    assert r.status_code in (200, 400, 413), (r.status_code, r.text)
    if r.status_code != 200:
        one_line_error(r)
        assert role.submitted == [] and uploads_left(role) == []


# ------------------------------------------------------------------ a real node (hypercorn)


@pytest.mark.slow
def test_real_node_checks_host_and_writes_a_private_secret(tmp_path: Path) -> None:
    import stat

    from fedswarm.api.guard import read_local_secret
    from fedswarm.roles.launcher import start_node

    node = start_node("bootstrap", tmp_path / "b")
    try:
        secret_file = tmp_path / "b" / "api-secret"
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        port = node.api.rsplit(":", 1)[1]
        assert httpx.get(f"{node.api}/status", timeout=10).status_code == 200
        r = httpx.get(f"{node.api}/status", headers={"Host": f"evil.example:{port}"}, timeout=10)
        assert r.status_code == 421 and "not this node" in one_line_error(r)
        r = httpx.post(f"{node.api}/command", json={"cmd": "local"}, headers={"Origin": "http://evil.example"}, timeout=10)
        assert r.status_code == 403
        secret = read_local_secret(tmp_path / "b")
        r = httpx.post(f"{node.api}/command", json={"cmd": "local"}, timeout=10,
                       headers={"Authorization": f"Bearer {secret}", "Origin": node.api})
        assert r.status_code == 200 and r.json()["status"] == "ok"
        refused = httpx.get(f"{node.api}/status", timeout=10).json()["api_guard"]["refused"]
        assert refused == {"bad-host": 1, "bad-origin": 1}
        assert secret not in node.log_path.read_text()
    finally:
        node.stop()
