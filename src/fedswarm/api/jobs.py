"""The client node's job API: REST under ``/api/v1/jobs`` (+ quote, examples, node info), the
seed's ``/command`` verbs ``train`` and ``advertize``, and server-sent events for live views.

Built from the client role's own methods; the role's domain errors become HTTP answers here
(:class:`SubmitError` 400, :class:`JobNotFound` 404, an ended job 400, a stored result that is
not the recorded one 502). A client whose backends are missing gets :func:`jobs_unavailable`."""

from __future__ import annotations

import json
import secrets
import time
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import trio
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from fedswarm import crypto
from fedswarm.api.app import ApiError, RoleParts, principal_of, read_json
from fedswarm.api.clients import ClientView, client_entry, clients_router
from fedswarm.api.guard import Refusal, max_body
from fedswarm.api.uploads import UploadError, UploadForm, UploadLimits, read_form, remove_tree
from fedswarm.api.wallet import WalletCredential, WalletSessions, wallet_router
from fedswarm.api.wallet_jobs import chain_info, check_owner, visible, wallet_detail
from fedswarm.examples import example_specs
from fedswarm.market.client_book import ClientBook
from fedswarm.p2p.node import Rejected
from fedswarm.protocol.decode import DecodeError, decode_json
from fedswarm.roles.client import (
    TERMINAL,
    ClientRole,
    EscrowRecord,
    JobNotFound,
    JobRecord,
    JobTerms,
    SubmitError,
    in_thread,
)
from fedswarm.roles.client.records import NODE_OWNER
from fedswarm.storage.sealed import SealedError

MAX_UPLOAD = 2 << 30  # a dataset file
MAX_MODEL_UPLOAD = 1 << 20  # a model spec (the spec parser's own cap)
MAX_WEIGHTS_UPLOAD = 512 << 20  # initial weights of an exported graph
MAX_FORM_FIELD = 64 << 10  # terms, example name
JOB_FORM = UploadLimits(files={"dataset": MAX_UPLOAD, "model": MAX_MODEL_UPLOAD, "weights": MAX_WEIGHTS_UPLOAD},
                        fields={"terms": MAX_FORM_FIELD, "example": 256, "result_public_key": 64,
                                "result_key_origin": 200})
COLUMNS_FORM = UploadLimits(files={"dataset": MAX_UPLOAD}, fields={})


LOSS_TOLERANCE_GONE = ("bad terms: loss_tolerance is no longer used (updates are judged against the client's "
                       "own re-executed reference, with bounds measured on honest runs); remove it, or raise "
                       "reexec_fraction for stricter checks")


def parse_terms(raw: str | dict[str, Any] | None) -> JobTerms:
    """Job terms from a form field or a /command argument (JSON text through the bounded
    decoder) or an already decoded object. Raises :class:`ApiError` (400, one line)."""
    try:
        data = decode_json(raw, max_bytes=MAX_FORM_FIELD, what="terms") if isinstance(raw, str) else (raw or {})
        if isinstance(data, dict) and "loss_tolerance" in data:
            raise ApiError(LOSS_TOLERANCE_GONE)
        return JobTerms.model_validate(data)
    except DecodeError as exc:
        raise ApiError(f"bad terms: {exc}") from None
    except (ValueError, ValidationError) as exc:
        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            raise ApiError(f"bad terms: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
        raise ApiError(f"bad terms: not JSON ({exc})") from None


def job_summary(job: JobRecord) -> dict[str, Any]:
    return {"job_id": job.job_id, "state": job.state, "dataset": job.dataset_name, "created": job.created,
            "updated": job.updated, "rounds": job.terms.rounds, "current_round": job.current_round,
            "trainers": job.terms.trainers, "deposited_wei": job.deposited_wei, "error": job.error,
            "final_accuracy": job.final_metrics.get("accuracy")}


def job_detail(role: ClientRole, job: JobRecord) -> dict[str, Any]:
    """Everything the job page and `fedswarm job status` show."""
    rounds = role.db.rounds(job.job_id)
    units = role.db.units(job.job_id)
    trainers: dict[str, dict[str, Any]] = {}
    for bid in [*job.chosen, *job.standby]:
        trainers[bid["peer_id"]] = {"peer_id": bid["peer_id"], "address": bid["address"], "price_wei": bid["price_wei"],
                                    "standby": bid in job.standby, "units_assigned": 0, "units_committed": 0,
                                    "units_accepted": 0, "units_rejected": 0, "paid_wei": 0,
                                    # this job's operator as the bidder saw it on chain
                                    "client_rejection_rate": bid.get("client_rejection_rate"),
                                    "client_units_judged": bid.get("client_units_judged")}
    for u in units:
        t = trainers.setdefault(u.trainer_peer, {"peer_id": u.trainer_peer, "address": u.trainer_address,
                                                 "price_wei": u.price_wei, "standby": False, "units_assigned": 0,
                                                 "units_committed": 0, "units_accepted": 0, "units_rejected": 0, "paid_wei": 0})
        t["units_assigned"] += 1
        t["units_committed"] += u.state in ("delivered", "checked")
        t["units_accepted"] += u.verdict == "accepted"
        t["units_rejected"] += u.verdict == "rejected"
        if u.verdict == "accepted" and u.settled and u.settle_tx:
            t["paid_wei"] += u.price_wei
    return {
        **job_summary(job),
        "terms": job.terms.model_dump(mode="json"),
        "audit_topic": job.audit_topic,
        "train_rows": job.train_rows,
        "num_params": job.num_params,
        "rounds_detail": [{"round": r.round, "state": r.state, "val_loss": r.metrics.get("loss"),
                           "val_accuracy": r.metrics.get("accuracy"), "metrics": r.metrics,
                           "units": sum(1 for u in units if u.round == r.round), "accepted": r.accepted,
                           "rejected": r.rejected, "reassigned": r.reassigned,
                           # start to settlement (the next round starts then); check_seconds
                           # stops when the new global model exists
                           "seconds": round((r.settled or r.finished or time.time()) - r.started, 3),
                           "check_seconds": round((r.finished or time.time()) - r.started, 3),
                           "settle_tx": r.settle_tx}
                          for r in rounds],
        "units": [u.model_dump(mode="json") for u in units],
        "trainers_detail": list(trainers.values()),
        "paid_wei": sum(t["paid_wei"] for t in trainers.values()),
        "escrow": escrow_detail(job, role.db.get_escrow(job.job_id)),
        "final_metrics": job.final_metrics,
        **wallet_detail(job, role.db.get_escrow(job.job_id)),
        "events": job.events[-100:],
    }


def audit_writers(role: ClientRole, job: JobRecord) -> list[str]:
    """Who may write to ``job``'s audit topic: the operator (this client node's wallet) and
    the job's trainers (the addresses of its chosen and standby bids)."""
    return [role.identity.address, *(bid["address"] for bid in [*job.chosen, *job.standby] if bid.get("address"))]


def escrow_detail(job: JobRecord, esc: EscrowRecord) -> dict[str, Any]:
    """The job's escrow: where it was funded, money in and out, when the payer can release the
    reservations, and every transaction the client sent for it (by kind, with gas)."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for tx in esc.txs:
        by_kind.setdefault(tx.kind, []).append({**tx.model_dump(mode="json"), "hash": tx.tx_hash})
    return {"contract": job.contract, "job_key": job.job_key, "nonce": job.nonce, "payer": job.payer,
            "operator": job.operator, "deposited_wei": job.deposited_wei, "paid_wei": esc.paid_wei,
            "refunded_wei": esc.refunded_wei, "refund_available_at": esc.release_at, "closing": esc.closing,
            "closed": esc.closed, "released": esc.released, "cleaned": esc.cleaned, "skipped": esc.skipped,
            "transactions": by_kind, "gas_used": sum(tx.gas_used for tx in esc.txs), "error": esc.error}


def job_parts(role: ClientRole) -> RoleParts:
    """The client's API routes, /command verbs, status fields and start-up tasks."""
    router = APIRouter(prefix="/api/v1")
    uploads = role.home / "uploads"
    # The network's clients and this node's own rejection rate, read from the escrow's events
    # in the background (incrementally, from a saved cursor). A stand-in role without a chain
    # or a node (the API's tests) gets no rates, and the app's fallback /clients route.
    escrow, node = getattr(role, "escrow", None), getattr(role, "node", None)
    view = ClientView(ClientBook(role.home, escrow) if escrow is not None else None)
    clients = [clients_router(node, view)] if node is not None else []

    sessions = WalletSessions(lambda: role.escrow.get_chain_id())  # read when first needed

    def get_job(job_id: str, request: Request | None = None) -> JobRecord:
        try:
            job = role.job(job_id)
        except JobNotFound as exc:
            raise ApiError(str(exc), 404) from None
        return check_owner(request, job) if request is not None else job

    def wallet_terms(request: Request, form: UploadForm, terms: JobTerms) -> tuple[JobTerms, dict[str, Any]]:
        # A wallet's job: the result goes to the key the wallet derived, the wallet pays.
        principal = principal_of(request)
        if principal.kind != "wallet":
            return terms, {}
        pub, origin = form.fields.get("result_public_key", ""), form.fields.get("result_key_origin", "")
        if not pub or not origin:
            raise ApiError("a wallet's job needs result_public_key (64 hex, X25519) and result_key_origin")
        try:
            terms = JobTerms.model_validate({**terms.model_dump(), "user_box_public": pub.lower(),
                                             "result_key_origin": origin})
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ApiError(f"bad result key: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
        return terms, {"owner": principal.owner}

    async def receive_form(request: Request, dest: Path, limits: UploadLimits) -> UploadForm:
        # streamed straight into dest, each part under its cap (see api/uploads.py)
        try:
            form = await read_form(request, dest, limits)
        except UploadError as exc:
            remove_tree(dest)
            raise ApiError(str(exc), exc.status) from None
        if "dataset" not in form.files:
            remove_tree(dest)
            raise ApiError("send the dataset file in the form field 'dataset'")
        return form

    def load_model(raw: bytes, name: str) -> dict[str, Any]:
        # Through the bounded decoder: 100 KB of "[" is a 400, not a RecursionError.
        try:
            model = decode_json(raw, max_bytes=MAX_MODEL_UPLOAD, what=f"model file {name[:80]}")
        except DecodeError as exc:
            raise ApiError(f"{exc} (send a fedswarm-seq/1 spec or an exported graph)") from None
        if not isinstance(model, dict):
            raise ApiError("the model must be a JSON object")
        return model

    @router.post("/jobs", openapi_extra={"requestBody": {"content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["dataset"], "properties": {
            "dataset": {"type": "string", "format": "binary"}, "model": {"type": "string", "format": "binary"},
            "weights": {"type": "string", "format": "binary"}, "example": {"type": "string"},
            "terms": {"type": "string", "description": "JSON job terms"}}}}}}})
    @max_body(JOB_FORM.max_body)
    async def submit_job(request: Request) -> dict[str, Any]:
        """Multipart: ``dataset`` file, ``model`` file or ``example`` name, ``terms`` JSON,
        optional ``weights``. A refused submission leaves nothing behind."""
        dest = uploads / secrets.token_hex(6)
        form = await receive_form(request, dest, JOB_FORM)
        try:
            job_terms, owner = wallet_terms(request, form, parse_terms(form.fields.get("terms", "{}")))
            example = form.fields.get("example")
            if "model" in form.files:
                model = form.files["model"]
                spec = load_model(model.path.read_bytes(), model.filename)
            elif example:
                path = example_specs().get(example)
                if path is None:
                    raise ApiError(f"no bundled example {example[:60]!r}; known: {', '.join(example_specs())}")
                spec = json.loads(path.read_text())
            else:
                raise ApiError("send a model file or pick a bundled example")
            weights = form.files.get("weights")
            dataset = form.files["dataset"]
            job_id = await role.submit(dataset.path, spec, job_terms, dataset.filename,
                                       weights.path if weights else None, **owner)
        except SubmitError as exc:
            remove_tree(dest)
            raise ApiError(str(exc)) from None
        except BaseException:
            remove_tree(dest)
            raise
        return {"status": "ok", "job_id": job_id}

    @router.get("/jobs")
    async def list_jobs(request: Request) -> dict[str, Any]:
        return {"jobs": [job_summary(j) for j in reversed(visible(request, role.db.jobs()))]}

    @router.get("/jobs/{job_id}/funding")
    async def job_funding(job_id: str, request: Request) -> dict[str, Any]:
        """The fund() call a wallet user's job waits for (409 for a node-funded job)."""
        job = get_job(job_id, request)
        if job.funding is None:
            raise ApiError(f"job {job_id} has no funding call (state {job.state}: "
                           "it is paid by the node, or bids are still coming in)", 409)
        return {**job.funding, "state": job.state}

    @router.post("/jobs/{job_id}/funding")
    async def job_funding_hint(job_id: str, request: Request) -> dict[str, Any]:
        """The wallet's funding transaction hash (a hint: the node checks the chain itself)."""
        get_job(job_id, request)  # exists and is the caller's
        tx = (await read_json(request, what="funding hint")).get("tx_hash")
        if not isinstance(tx, str) or len(tx) != 66 or not tx.startswith("0x"):
            raise ApiError("send {\"tx_hash\": \"0x...\"} (32 bytes)")
        # Read again after the await: the driver may have written the job meanwhile (a late
        # payment found, say), and writing back an older copy would undo that.
        job = get_job(job_id, request)
        if job.funding is None:
            raise ApiError(f"job {job_id} is not waiting for a wallet's payment", 409)
        job.funding_tx_hint = tx
        role.db.put_job(job)
        return {"status": "ok", "state": job.state}

    @router.get("/jobs/{job_id}")
    async def job_status(job_id: str, request: Request) -> dict[str, Any]:
        job = get_job(job_id, request)
        # What trainers read on chain about this job's operator (they refuse to bid above their
        # limit, 50 % of at least 20 units by default); each bid also says what its trainer saw.
        seen = client_entry("", None, True, job.operator, view.records())
        return {**job_detail(role, job), "operator_record": {k: seen[k] for k in ("operator", "rejection_rate",
                                                                                  "units_judged")}}

    @router.get("/jobs/{job_id}/audit")
    async def job_audit(job_id: str, request: Request) -> dict[str, Any]:
        """The job's audit topic, chain-verified, each message's signed envelope checked
        against the job's writers (:func:`audit_writers`); a message from anyone else is
        shown, marked."""
        from fedswarm.web import read_audit

        job = get_job(job_id, request)
        if not job.audit_topic:
            raise ApiError(f"job {job_id} has no audit topic yet", 404)
        try:
            return await trio.to_thread.run_sync(read_audit, None, job.audit_topic,
                                                 audit_writers(role, job), role.audit)
        except Exception as exc:  # a dead or unreachable log is a state to show, not a crash
            first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            raise ApiError(f"cannot read audit topic {job.audit_topic}: {first[:300]}", 502) from None

    @router.post("/jobs/{job_id}/cancel")
    async def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
        get_job(job_id, request)
        try:
            job = role.request_cancel(job_id)
        except Rejected as exc:  # the job already ended
            raise ApiError(str(exc)) from None
        if not role.is_running(job_id):  # nothing drives it (e.g. failed to start): cancel now
            role.start(job_id)
        return {"status": "ok", "job_id": job_id, "state": job.state}

    @router.get("/jobs/{job_id}/events")
    async def job_events(job_id: str, request: Request) -> StreamingResponse:
        get_job(job_id, request)

        async def stream() -> Any:
            last = None
            for _ in range(20_000):  # bounded: a client reconnects (EventSource does it itself)
                job = role.db.get_job(job_id)
                if job is None:
                    return
                if job.updated != last or last is None:
                    last = job.updated
                    yield f"event: job\ndata: {json.dumps(job_detail(role, job))}\n\n"
                    if job.state in TERMINAL:
                        yield "event: end\ndata: {}\n\n"
                        return
                else:
                    yield ": keep-alive\n\n"
                await trio.sleep(0.5)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @router.get("/jobs/{job_id}/result")
    async def job_result(job_id: str, request: Request) -> Response:
        job = get_job(job_id, request)
        if getattr(job, "owner", NODE_OWNER) != NODE_OWNER:
            raise ApiError("encrypted to your wallet: use result/link", 409)
        # the decrypted weights go to the job's owner only (the node's token or UI session; a
        # wallet session for the wallet that owns the job)
        if not principal_of(request).owns(getattr(job, "owner", None)):
            raise Refusal(403, "not-owner", f"the result of {job_id} is served to its owner only: "
                          "use the node's UI, the API token, or `fedswarm job fetch`")
        if job.state != "done" or not job.result_key:
            raise ApiError(f"job {job_id} has no result yet (state {job.state})", 409)
        try:
            data = await in_thread(role.fetch_result, job)
        except SealedError as exc:
            raise ApiError(f"the stored result is not the recorded one: {exc}", 502) from None
        return Response(data, media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{job_id}.safetensors"',
                                 "X-Result-Sha256": job.result_sha256 or "",
                                 "X-Result-Plain-Sha256": crypto.sha256_bytes(data)})

    @router.get("/jobs/{job_id}/result/link")
    async def job_result_link(job_id: str, request: Request) -> dict[str, Any]:
        job = get_job(job_id, request)
        if not job.result_key:
            raise ApiError(f"job {job_id} has no result yet (state {job.state})", 409)
        url = await in_thread(role.store.presign_get, job.result_key, 3600)
        result = wallet_detail(job, role.db.get_escrow(job_id))["result"]
        return {"url": url, "sha256": job.result_sha256, "job_id": job_id, "plain_sha256": result["plain_sha256"],
                "envelope": result["envelope"], "key_origin": result["key_origin"], "size": result["size"]}

    @router.post("/quote")
    async def quote(request: Request) -> dict[str, Any]:
        return make_quote(role, parse_terms(await read_json(request, what="terms")))

    @router.get("/examples")
    async def examples() -> dict[str, Any]:
        return {"examples": [{"name": n, "spec": json.loads(p.read_text())} for n, p in example_specs().items()]}

    @router.post("/columns")
    @max_body(COLUMNS_FORM.max_body)
    async def columns(request: Request) -> dict[str, Any]:
        from fedswarm.learning.dataset import DatasetError, peek_columns

        folder = uploads / ("peek-" + secrets.token_hex(4))
        form = await receive_form(request, folder, COLUMNS_FORM)
        try:
            cols = await in_thread(peek_columns, form.files["dataset"].path)
        except DatasetError as exc:
            raise ApiError(str(exc)) from None
        finally:
            remove_tree(folder)
        return {"columns": [{"name": c.name, "kind": str(c.kind), "numeric": c.numeric} for c in cols]}

    @router.get("/node")
    async def node_info() -> dict[str, Any]:
        ident = role.identity
        try:
            balance = await in_thread(role.ledger.balance, ident.address)
        except Exception:
            balance = None
        return {"peer_id": ident.peer_id, "address": ident.address, "box_public": ident.box_public_hex,
                "balance_wei": balance, "network": role.settings.network,
                "storage": type(role.store).__name__, "ledger": "anvil (devnet)" if role.settings.is_devnet else "Hedera",
                "contract": role.escrow.contract_address, "api_token_required": bool(role.settings.api_token),
                "chain": await in_thread(chain_info, role)}

    async def cmd_train(args: list[Any]) -> dict[str, Any]:
        if len(args) < 2 or not all(isinstance(a, str) for a in args[:2]):
            raise ApiError("train needs [dataset_path, model_path_or_example, {terms}]")
        spec_path: Path | Traversable = Path(args[1])
        if args[1] in example_specs():
            spec_path = example_specs()[args[1]]
        if not spec_path.is_file():
            raise ApiError(f"model {args[1]} not found")
        terms = parse_terms(args[2] if len(args) > 2 else None)
        try:
            with spec_path.open("rb") as fh:  # at most one byte over the cap: load_model refuses it
                raw = fh.read(MAX_MODEL_UPLOAD + 1)
            job_id = await role.submit(Path(args[0]), load_model(raw, spec_path.name), terms)
        except SubmitError as exc:
            raise ApiError(str(exc)) from None
        return {"status": "ok", "job_id": job_id}

    async def cmd_advertize(args: list[Any]) -> dict[str, Any]:
        from fedswarm.protocol.topics import PRESENCE_TOPIC

        await role.node.publish(PRESENCE_TOPIC, role.node.heartbeat())
        return {"status": "ok", "advertized": role.node.peer_id}

    def status() -> dict[str, Any]:
        jobs = role.db.jobs()
        return {"jobs": len(jobs), "jobs_running": sum(1 for j in jobs if j.state not in TERMINAL)}

    async def resume() -> None:
        role.resume_all()

    return RoleParts(routers=[router, wallet_router(sessions), *clients],
                     commands={"train": cmd_train, "advertize": cmd_advertize},
                     credentials=[WalletCredential(sessions)], status=status, tasks=[resume, view.run])


def make_quote(role: ClientRole, terms: JobTerms) -> dict[str, Any]:
    """An estimate before paying, from the asking prices trainers announce in their heartbeats
    (the real selection uses signed bids: the price can only be lower or equal)."""
    from fedswarm.protocol.messages import Role

    online = [r for r in role.node.directory.records(role=Role.TRAINER) if r.price_wei is not None]
    fit = sorted((r for r in online if r.price_wei <= terms.price_cap_wei), key=lambda r: (r.price_wei, r.peer_id))
    chosen, standby = fit[: terms.trainers], fit[terms.trainers: terms.trainers + terms.standby]
    total = sum(r.price_wei * terms.rounds for r in chosen) + sum(r.price_wei * terms.rounds for r in standby)
    ok = len(chosen) >= terms.trainers
    reason = None
    if not ok:
        cheapest = min((r.price_wei for r in online), default=None)
        reason = (f"only {len(chosen)} of {terms.trainers} trainers online within the cap of {terms.price_cap_wei} wei"
                  + (f" (cheapest asks {cheapest} wei)" if cheapest is not None else " (no trainer online)"))
    return {"ok": ok, "reason": reason, "total_wei": total,
            "trainers": [{"peer_id": r.peer_id, "price_wei": r.price_wei, "standby": False} for r in chosen]
            + [{"peer_id": r.peer_id, "price_wei": r.price_wei, "standby": True} for r in standby]}


def jobs_unavailable(reason: str) -> RoleParts:
    """A client node whose store or ledger is missing still serves the mesh and the UI; every
    job route answers 503 with ``reason`` and ``/status`` says it too."""
    router = APIRouter(prefix="/api/v1")

    @router.api_route("/jobs", methods=["GET", "POST"])
    @router.api_route("/jobs/{rest:path}", methods=["GET", "POST"])
    async def no_jobs(rest: str = "") -> None:
        raise ApiError(f"this client node cannot run jobs: {reason}", 503)

    return RoleParts(routers=[router], status=lambda: {"jobs_unavailable": reason})
