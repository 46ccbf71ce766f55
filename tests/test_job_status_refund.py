"""`fedswarm job status`'s refund line, from the job detail's escrow block."""

from __future__ import annotations

import time

from fedswarm.commands_job import refund_line

KEY = "ab" * 32


def test_refund_line_says_when_then_how_much() -> None:
    at = int(time.time()) + 40
    before = refund_line({"job_key": KEY, "contract": "0xC", "refunded_wei": 0,
                          "refund_available_at": at, "released": False})
    assert before is not None
    assert time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) in before
    assert f"fedswarm ledger release 0x{KEY}" in before and "so far" not in before
    partly = refund_line({"job_key": KEY, "refunded_wei": 7, "refund_available_at": at})
    assert partly is not None and "7 wei refunded so far" in partly
    after = refund_line({"job_key": KEY, "contract": "0xC", "refunded_wei": 123, "released": True,
                         "refund_available_at": at})
    assert after is not None and after.startswith("refund: 123 wei back to the payer; escrow released")
    pending = refund_line({"job_key": KEY, "refund_available_at": None})
    assert pending is not None and "after the job closes" in pending


def test_no_refund_line_before_funding() -> None:
    assert refund_line(None) is None
    assert refund_line({"job_key": None}) is None
