"""What a trainer checks before it spends compute and before it hands over an update's key.

Pure functions over wire messages, records and the escrow's views (no I/O): each returns the
one-line reason to refuse, or raises with it, so the unit flow and the fast tests share them.

- :func:`assignment_refusal`: a work unit is complete (settlement v2 fields), names this
  trainer, the job's escrow, chain and operator, and the operator signed it.
- :func:`chain_refusal`: before the first unit of a job, the chain says the job is open, run by
  the operator that announced it, with us registered at exactly our bid price, its deadline
  ahead and a settle window we accept.
- :func:`check_receipt` / :func:`check_refusal`: the operator's answer to our delivery.
"""

from __future__ import annotations

from eth_utils import to_checksum_address

from fedswarm.ledger.escrow_types import JobStatusV2, JobView, Registration
from fedswarm.ledger.receipts import EscrowDomain, Receipt, ReceiptError, verify_receipt
from fedswarm.market.operator import SignatureError, verify_assignment, verify_refusal
from fedswarm.protocol.job import UnitReceipt, UnitRefused, WorkUnit
from fedswarm.roles.trainer.records import JobRecord


def _same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and a.lower() == b.lower()  # type: ignore[union-attr]


def assignment_refusal(job: JobRecord, wu: WorkUnit, me: str, chain_id: int) -> str | None:
    """None if ``wu`` is a unit the job's operator assigned to ``me`` (our address) on our
    chain and the job's escrow; else the reason to refuse it."""
    if not job.is_v2:
        return f"job {wu.job_id} was not announced by a signing operator on the v2 escrow"
    missing = [f for f in ("job_key", "contract", "chain_id", "operator", "trainer", "assignment_sig")
               if getattr(wu, f) is None]
    if missing:
        return f"work unit lacks the operator's assignment ({', '.join(missing)})"
    assert wu.job_key and wu.contract and wu.operator and wu.trainer and wu.assignment_sig
    if not _same(wu.trainer, me):
        return f"unit {wu.round}/{wu.unit} is assigned to {wu.trainer}, not to this trainer"
    if not _same(wu.contract, job.contract) or wu.chain_id != chain_id:
        return f"unit names escrow {wu.contract} on chain {wu.chain_id}, the job was announced on {job.contract}"
    if not _same(wu.operator, job.operator):
        return f"unit names operator {wu.operator}, the job was announced by {job.operator}"
    if job.job_key is not None and wu.job_key != job.job_key:
        return f"unit names job key {wu.job_key[:12]}..., earlier units named {job.job_key[:12]}..."
    try:
        verify_assignment(wu.operator, wu.assignment_sig, job_key=wu.job_key, contract=wu.contract,
                          chain_id=wu.chain_id, round_=wu.round, unit=wu.unit, trainer=wu.trainer,
                          deadline=wu.deadline, global_sha256=wu.global_sha256,
                          chunk_sha256s=[c.sha256 for c in wu.chunks])
    except SignatureError as exc:
        return f"assignment not signed by the operator: {exc}"
    return None


def chain_refusal(job: JobRecord, view: JobView, reg: Registration, *, now: float,
                  max_settle_window_s: int) -> str | None:
    """None if the chain's job and our registration are what we bid for; else why not."""
    if view.status != JobStatusV2.OPEN:
        return f"job is {view.status.name.lower()} on chain, not open"
    if not _same(view.operator, job.operator):
        return f"chain names operator {view.operator}, the job was announced by {job.operator}"
    if not reg.registered:
        return "this trainer is not registered for the job on chain"
    if reg.price != job.price_wei:
        return f"registered at {reg.price} wei per unit on chain, we bid {job.price_wei}"
    if reg.units <= 0:
        return "registered for no units on chain"
    if view.deadline <= now:
        return "the job's deadline on chain has passed"
    if view.settle_window > max_settle_window_s:
        return f"settle window {view.settle_window} s is over our limit of {max_settle_window_s} s"
    return None


def check_receipt(msg: UnitReceipt, wu: WorkUnit, me: str, update_sha256: str, *,
                  domain: EscrowDomain, operator: str, now: float, skew_s: int) -> Receipt:
    """The :class:`Receipt` in ``msg`` if it is the operator's receipt for exactly what we
    delivered (``wu``'s job key, round and unit, us, our update's hash), issued within
    ``skew_s`` of ``now``; raises :class:`ReceiptError` (one line) otherwise."""
    expected = {"job_id": wu.job_id, "round": wu.round, "unit": wu.unit, "job_key": wu.job_key,
                "update_sha256": update_sha256}
    for name, value in expected.items():
        if getattr(msg, name) != value:
            raise ReceiptError(f"receipt {name} is {str(getattr(msg, name))[:20]}, we delivered {str(value)[:20]}")
    if not _same(msg.trainer, me):
        raise ReceiptError(f"receipt names trainer {msg.trainer}, not this trainer")
    if abs(msg.issued_at - now) > skew_s:
        raise ReceiptError(f"receipt issued at {msg.issued_at}, {msg.issued_at - now:+.0f} s from our clock "
                           f"(at most {skew_s} s allowed)")
    receipt = Receipt(job_key=bytes.fromhex(msg.job_key), round=msg.round, unit=msg.unit,
                      trainer=to_checksum_address(me), update_hash=bytes.fromhex(update_sha256),
                      issued_at=msg.issued_at)
    verify_receipt(receipt, domain, bytes.fromhex(msg.signature[2:]), operator)
    return receipt


def check_refusal(msg: UnitRefused, wu: WorkUnit, me: str, update_sha256: str, operator: str) -> None:
    """Raise :class:`SignatureError` unless ``msg`` is the operator's signed refusal of the
    update we delivered for ``wu``."""
    if (msg.job_id, msg.round, msg.unit) != (wu.job_id, wu.round, wu.unit) or msg.update_sha256 != update_sha256:
        raise SignatureError("refusal is about another unit or update than the one we delivered")
    if not _same(msg.trainer, me):
        raise SignatureError(f"refusal names trainer {msg.trainer}, not this trainer")
    assert wu.job_key is not None
    verify_refusal(operator, msg.signature, wu.job_key, wu.round, wu.unit, me, update_sha256, msg.reason)


__all__ = ["ReceiptError", "SignatureError", "assignment_refusal", "chain_refusal", "check_receipt",
           "check_refusal"]
