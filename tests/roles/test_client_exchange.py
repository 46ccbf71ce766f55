"""The client's UnitDone handling when the delivered object cannot be read: a missing or
oversized object is the trainer's fault (signed refusal, the slot freed); a store the client
cannot reach (its own link down, the store failing) is not: no refusal, a retryable answer,
the unit kept, and a later delivery is receipted. A trainer's answer to its work order that
arrives after its delivery was receipted (a slow or flapping link) leaves the receipt in place.

Against the real client database and exchange; the store and the escrow's receipt signer are
in-process doubles of the layer below (the end-to-end flap of the client's link is in
``tests/net``)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, BinaryIO

import pytest
from eth_account import Account

from fedswarm.p2p.node import Rejected
from fedswarm.protocol.job import UnitDone, UnitReceipt, UnitRefused
from fedswarm.roles.client.exchange import Exchange
from fedswarm.roles.client.records import ClientDB, JobRecord, JobTerms, RoundRecord, UnitRecord
from fedswarm.storage.base import ObjectNotFound, StoreUnavailable

TRAINER_PEER = "12D3KooWtrainer"
TRAINER = Account.create().address
OPERATOR = Account.create()
BLOB = b"sealed update bytes"
SHA = hashlib.sha256(BLOB).hexdigest()


class FlakyStore:
    """Fails every get with ``error`` while it is set, else serves BLOB."""

    def __init__(self) -> None:
        self.error: Exception | None = None

    def get(self, key: str, dst: BinaryIO, *, max_bytes: int | None = None) -> None:
        if self.error is not None:
            raise self.error
        dst.write(BLOB)


def _setup(tmp_path: Path) -> tuple[Exchange, ClientDB, FlakyStore, list[str]]:
    db = ClientDB(tmp_path / "c.sqlite")
    store = FlakyStore()
    events: list[str] = []

    def issue_receipt(key: bytes, r: int, unit: int, trainer: str, update_hash: bytes) -> tuple[Any, bytes]:
        from fedswarm.ledger.receipts import Receipt

        receipt = Receipt(job_key=key, round=r, unit=unit, trainer=trainer, update_hash=update_hash,
                          issued_at=int(time.time()))
        return receipt, b"\x01" * 65

    async def audit_entry(job: JobRecord, entry: dict[str, Any]) -> None:
        pass

    svc = SimpleNamespace(db=db, store=store, escrow=SimpleNamespace(issue_receipt=issue_receipt),
                          identity=SimpleNamespace(wallet=OPERATOR), audit_entry=audit_entry,
                          job_dir=lambda job_id: tmp_path / job_id,
                          event=lambda job, text: events.append(text))
    job = JobRecord(job_id="job-x", terms=JobTerms(rounds=1, trainers=1), model={}, dataset_path="/x",
                    job_key="ab" * 32, state="running", num_params=10,
                    chosen=[{"peer_id": TRAINER_PEER, "address": TRAINER, "price_wei": 1}])
    db.put_job(job)
    db.put_round(RoundRecord(job_id="job-x", round=0, deadline=time.time() + 60))
    db.put_unit(UnitRecord(job_id="job-x", round=0, unit=0, slot=0, trainer_peer=TRAINER_PEER,
                           trainer_address=TRAINER, price_wei=1, update_key="jobs/job-x/u0"))
    woken: list[str] = []

    async def wake(job_id: str) -> None:
        woken.append(job_id)

    return Exchange(svc, wake), db, store, events  # type: ignore[arg-type]


def _done() -> UnitDone:
    return UnitDone(job_id="job-x", round=0, unit=0, update_sha256=SHA, update_size=len(BLOB), num_samples=10,
                    train_loss=0.5, seconds=1.0)


async def test_a_store_the_client_cannot_reach_is_not_the_trainers_fault(tmp_path: Path) -> None:
    exchange, db, store, events = _setup(tmp_path)
    store.error = StoreUnavailable("devnet store at http://10.0.0.2 failed during GET: timed out")
    with pytest.raises(Rejected) as caught:
        await exchange.on_unit_done(TRAINER_PEER, _done(), None)
    assert caught.value.code == "busy"  # retryable for the trainer (not a permanent code)
    [unit] = db.units("job-x", 0)
    assert unit.state == "assigned" and unit.receipt is None  # kept, not failed
    assert "delivers again" in events[-1]

    store.error = None  # back: the same delivery is receipted
    reply, _ = await exchange.on_unit_done(TRAINER_PEER, _done(), None)
    assert isinstance(reply, UnitReceipt)
    assert db.units("job-x", 0)[0].state == "receipted"


async def test_a_missing_object_is_refused_and_the_slot_freed(tmp_path: Path) -> None:
    exchange, db, store, events = _setup(tmp_path)
    store.error = ObjectNotFound("no object jobs/job-x/u0")
    reply, _ = await exchange.on_unit_done(TRAINER_PEER, _done(), None)
    assert isinstance(reply, UnitRefused) and reply.reason == "bad-object"
    assert db.units("job-x", 0)[0].state == "failed"


@pytest.mark.parametrize("answer", ["accepted", "lost"])
async def test_a_late_answer_to_the_order_keeps_the_receipt_issued_meanwhile(tmp_path: Path, answer: str) -> None:
    # A trainer trains in milliseconds: on a slow or flapping link its delivery (and the
    # exchange's receipt) can land before its answer to the work order does. The order's
    # answer, taken late or lost, must not write the unit back to "accepted" or "failed".
    from fedswarm.p2p.node import RpcError
    from fedswarm.protocol.job import UnitAccepted
    from fedswarm.roles.client.rounds import Rounds

    exchange, db, _, _ = _setup(tmp_path)
    svc = exchange.svc
    delivered: list[Any] = []

    async def request(peer: str, wu: Any, **kwargs: Any) -> tuple[Any, None]:
        reply, _ = await exchange.on_unit_done(TRAINER_PEER, _done(), None)
        delivered.append(reply)
        if answer == "lost":
            raise RpcError("timeout", "WorkUnit got no answer in 15 s")
        return UnitAccepted(job_id="job-x", round=0, unit=0), None

    svc.node = SimpleNamespace(request=request, rpc_timeout=15.0)
    rounds = Rounds(svc, review=None, checked=None, cancel_requested=lambda job_id: False)  # type: ignore[arg-type]
    rounds.work_unit = lambda *args: "the order"  # type: ignore[method-assign,assignment,return-value]
    job = db.get_job("job-x")
    rec = await rounds._assign(job, 0, 0, job.chosen[0], 0, None, time.time() + 60)  # type: ignore[arg-type]
    assert isinstance(delivered[0], UnitReceipt)
    [stored] = db.units("job-x", 0)
    assert stored.state == "receipted" and stored.receipt is not None and rec.state == "receipted"
