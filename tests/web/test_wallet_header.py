"""The browser's wallet header decides who acts even when the page's own UI cookie rides along:
a same-origin XMLHttpRequest (the UI's upload with progress) always carries the page's cookies,
and the job must still be the wallet's."""

from __future__ import annotations

import pytest
from starlette.requests import HTTPConnection

from fedswarm.api.guard import ApiGuard, Principal, Refusal, SessionCredential


class FakeWalletCredential:
    name = "wallet"

    def authenticate(self, conn: HTTPConnection) -> Principal | None:
        scheme, _, token = conn.headers.get("authorization", "").partition(" ")
        cookie = conn.cookies.get("fedswarm_wallet_8080")
        ok = (scheme.lower() == "wallet" and token == "t0k") or cookie == "t0k"
        return Principal("wallet", "0x" + "ab" * 20) if ok else None


def conn(headers: dict[str, str], path: str = "/api/v1/jobs", method: str = "POST") -> HTTPConnection:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return HTTPConnection({"type": "http", "method": method, "path": path, "headers": raw,
                           "server": ("127.0.0.1", 8080), "query_string": b""})


def test_wallet_header_wins_over_the_ui_cookie() -> None:
    guard = ApiGuard(credentials=[FakeWalletCredential()])
    cookie = f"{SessionCredential.cookie_name(8080)}={guard.session_secret}"
    both = guard.authenticate(conn({"Cookie": cookie, "Authorization": "Wallet t0k"}))
    assert both is not None and both.kind == "wallet"
    only_cookie = guard.authenticate(conn({"Cookie": cookie}))
    assert only_cookie is not None and only_cookie.kind == "ui-session"


def test_wallet_cookie_does_not_lock_the_page_out() -> None:
    """After a same-origin sign-in the browser holds the wallet's cookie: a reload of the UI page
    and the mesh views must still open (the cookie speaks for the wallet routes only)."""
    guard = ApiGuard()
    guard.add_credential(FakeWalletCredential())  # as the node does: asked before the UI cookie
    ui = f"{SessionCredential.cookie_name(8080)}={guard.session_secret}"
    both = f"{ui}; fedswarm_wallet_8080=t0k"
    assert guard.admit(conn({"Cookie": "fedswarm_wallet_8080=t0k", "Host": "127.0.0.1:8080"}, "/", "GET")).kind == "local"
    got = guard.admit(conn({"Cookie": both, "Host": "127.0.0.1:8080"}, "/api/v1/trainers", "GET"))
    assert got.kind == "ui-session"
    on_jobs = guard.admit(conn({"Cookie": both, "Host": "127.0.0.1:8080"}, "/api/v1/jobs", "GET"))
    assert on_jobs.kind == "wallet"  # on the wallet routes the wallet's cookie speaks
    # an explicit wallet header on a route a wallet may not use is still refused
    with pytest.raises(Refusal, match="wallet session cannot use"):
        guard.admit(conn({"Cookie": both, "Host": "127.0.0.1:8080", "Authorization": "Wallet t0k"}, "/api/v1/peers", "GET"))
