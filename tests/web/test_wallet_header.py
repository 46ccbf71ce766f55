"""The browser's wallet header decides who acts even when the page's own UI cookie rides along:
a same-origin XMLHttpRequest (the UI's upload with progress) always carries the page's cookies,
and the job must still be the wallet's."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from fedswarm.api.guard import ApiGuard, Principal, SessionCredential


class FakeWalletCredential:
    name = "wallet"

    def authenticate(self, conn: HTTPConnection) -> Principal | None:
        scheme, _, token = conn.headers.get("authorization", "").partition(" ")
        return Principal("wallet", "0x" + "ab" * 20) if scheme.lower() == "wallet" and token == "t0k" else None


def conn(headers: dict[str, str]) -> HTTPConnection:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return HTTPConnection({"type": "http", "method": "POST", "path": "/api/v1/jobs", "headers": raw,
                           "server": ("127.0.0.1", 8080), "query_string": b""})


def test_wallet_header_wins_over_the_ui_cookie() -> None:
    guard = ApiGuard(credentials=[FakeWalletCredential()])
    cookie = f"{SessionCredential.cookie_name(8080)}={guard.session_secret}"
    both = guard.authenticate(conn({"Cookie": cookie, "Authorization": "Wallet t0k"}))
    assert both is not None and both.kind == "wallet"
    only_cookie = guard.authenticate(conn({"Cookie": cookie}))
    assert only_cookie is not None and only_cookie.kind == "ui-session"
