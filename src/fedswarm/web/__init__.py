"""The browser UI: a no-build single-page app served by the node's own HTTP server.

Everything under ``static/`` ships with the package (no CDN, no runtime fetch elsewhere). The
app talks to the node's REST API and its server-sent events (or to a delegate's, a client node
the user picked), to the user's browser wallet (EIP-1193), and, for a wallet user's result, to
the object store's signed URL. Besides the static files,
this module adds one read-only JSON route: an audit topic read from the mirror-style endpoint and
verified (running-hash chain) on the server. The job page uses the client's
``/api/v1/jobs/{id}/audit`` instead (:mod:`fedswarm.api.jobs`), which also checks every
message's signed envelope against the job's operator and trainers through :func:`read_audit`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

if TYPE_CHECKING:
    from fedswarm.ledger.audit import AuditLog

STATIC_DIR = Path(__file__).resolve().parent / "static"
TOPIC_RE = re.compile(r"^\d{1,10}\.\d{1,10}\.\d{1,18}$")
MAX_AUDIT_MESSAGES = 5000  # a job writes tens of messages; this bounds a hostile topic

# The SPA is one document; its strict CSP forbids anything but our own files (no inline code).
# connect-src reaches further than 'self' for two things only: a delegate (another client node's
# public API, picked on the Network page) and the object store's signed URL a wallet user's
# sealed result is downloaded from; both over https, or plain http on this machine's loopback.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self' https: http://127.0.0.1:* http://localhost:*; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


def mount_ui(app: FastAPI, role: str, settings: Any | None = None) -> None:
    """Serve the UI at ``/`` (``/ui/static/...`` for assets) and add ``GET /api/v1/audit/{topic}``.

    ``role`` is the node's role; the UI is most useful on the client node (jobs), other roles
    still get the Network and Settings pages. ``settings`` (a :class:`fedswarm.config.Settings`)
    picks the audit backend; without it ``app.state.settings`` or the environment is used.
    """
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="ui-static")

    @app.get("/", include_in_schema=False)
    async def index(request: Request) -> FileResponse:
        headers = {"Content-Security-Policy": CSP, "Cache-Control": "no-store",
                   "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
        # The page hands the browser this start's session cookie (HttpOnly, SameSite=Strict):
        # what the UI's changes and result downloads are admitted by (see fedswarm.api.guard).
        # With a token configured, or bound publicly, the UI exchanges the token instead.
        guard = getattr(request.app.state, "guard", None)
        cookie = guard.session_cookie(request) if guard is not None else None
        if cookie:
            headers["Set-Cookie"] = cookie
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=headers)

    @app.get("/ui", include_in_schema=False)
    async def ui_redirect() -> RedirectResponse:
        return RedirectResponse("/")

    @app.get("/api/v1/ui")
    async def ui_info() -> dict[str, Any]:
        """Which role serves this UI (the SPA hides job pages on non-client nodes)."""
        return {"role": role, "pages": ui_pages(role)}

    @app.get("/api/v1/audit/{topic_id}")
    async def audit(topic_id: str, request: Request) -> Any:
        if not TOPIC_RE.match(topic_id):
            return JSONResponse({"status": "error", "error": f"bad topic id {topic_id!r} (want shard.realm.num)"},
                                status_code=400)
        import trio

        chosen = settings or getattr(request.app.state, "settings", None)
        try:
            return await trio.to_thread.run_sync(read_audit, chosen, topic_id)
        except Exception as exc:  # a dead or unreachable log is a state to show, not a crash
            return JSONResponse({"status": "error", "error": f"cannot read audit topic {topic_id}: {exc}"},
                                status_code=502)


def ui_pages(role: str) -> list[str]:
    """The pages this node's UI offers (job pages only where jobs are run: the client)."""
    base = ["network", "settings"]
    return ["network", "new", "history", "job", "settings"] if role == "client" else base


def read_audit(settings: Any | None, topic_id: str, allowed: list[str] | None = None,
               log: AuditLog | None = None) -> dict[str, Any]:
    """Every message of ``topic_id`` (chunks re-assembled, payloads decoded) and the result of
    verifying the whole running-hash chain from the topic's first message.

    With ``allowed`` (the job's writers: its operator and trainers) each message also gets a
    ``check`` (``status`` ok / unsigned / bad_signature / stranger / not_json, ``signer``,
    ``reason``), the verdict :meth:`AuditLog.read_checked` gives, taken on the same single read
    the chain was verified on; ``not_ok`` counts the rest. ``log`` is the caller's own audit log
    (left open); without it a read-only one is made from ``settings`` and closed after."""
    from fedswarm.config import load_settings
    from fedswarm.ledger.audit import ChunkAssembler
    from fedswarm.ledger.audit_envelope import check_envelope
    from fedswarm.ledger.audit_factory import make_audit_log
    from fedswarm.ledger.runninghash import ZERO_HASH
    from fedswarm.ledger.verify import verify_messages

    own = log is None
    reader = make_audit_log(settings or load_settings(), None) if log is None else log
    raw: list[dict[str, Any]] = []
    try:
        for msg in reader.iter_raw(topic_id):
            raw.append(msg)
            if len(raw) >= MAX_AUDIT_MESSAGES:
                break
    finally:
        close = getattr(reader, "close", None)
        if own and close:
            close()
    result = verify_messages(raw, ZERO_HASH, topic_id=topic_id)
    assembler = ChunkAssembler()
    entries: list[dict[str, Any]] = []
    for msg in raw:
        whole = assembler.add(msg)
        if whole is None:
            continue
        payload: Any
        body: Any
        try:
            payload = body = whole.json()
        except ValueError:
            payload, body = None, {"raw": whole.payload[:200].decode("utf-8", "replace")}
        entry = {"sequence": whole.last_sequence, "timestamp": whole.consensus_timestamp,
                 "payer": whole.payer_account_id, "body": body}
        if allowed is not None:
            check = check_envelope(topic_id, whole.last_sequence, payload, allowed)
            entry["check"] = {"status": check.status, "signer": check.signer, "reason": check.reason}
        entries.append(entry)
    return {"topic": topic_id, "messages": entries, "raw_count": len(raw),
            "verified": bool(result.ok) and bool(raw), "checked": result.checked,
            "reason": None if result.ok else result.describe(),
            "running_hash": result.running_hash.hex() if raw else None,
            "signers_checked": allowed is not None,
            "not_ok": sum(1 for e in entries if e.get("check", {}).get("status", "ok") != "ok")}
