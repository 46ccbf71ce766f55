"""Update checks: each accepts an honest update and rejects its bad case with a reason."""

from __future__ import annotations

import numpy as np

from fedswarm.learning.checks import UnitReport, Verdict, check_finite, check_shape, reason_hash


def test_shape_check() -> None:
    g = np.zeros(4, np.float32)
    assert check_shape(np.ones(4, np.float32), g).accepted
    v = check_shape(np.ones(5, np.float32), g)
    assert (v.accepted, v.check) == (False, "shape") and "(5,)" in v.reason
    v = check_shape(np.ones((2, 2), np.float32), g)
    assert not v.accepted and "shape" in v.reason
    v = check_shape(np.ones(4, np.float64), g)
    assert not v.accepted and "dtype float64" in v.reason
    assert not check_shape([0.0] * 4, g).accepted  # type: ignore[arg-type]


def test_finite_check() -> None:
    assert check_finite(np.ones(4, np.float32)).accepted
    v = check_finite(np.array([1, np.nan, np.inf, 2], np.float32))
    assert (v.accepted, v.check) == (False, "finite")
    assert v.reason == "2 of 4 values are NaN or infinite"


def test_reason_hash_is_keccak_of_the_reason() -> None:
    v = Verdict(False, "2 of 4 values are NaN or infinite", "finite")
    h = reason_hash(v)
    assert isinstance(h, bytes) and len(h) == 32
    assert h != reason_hash(Verdict(False, "other reason", "finite"))
    # keccak256("") — the Ethereum constant, so the chain and we agree on the hash function.
    assert reason_hash(Verdict(True, "", "x")).hex() == (
        "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    )


def test_unit_report_names_the_first_rejection() -> None:
    ok, bad = Verdict(True, "fine", "shape"), Verdict(False, "2 of 4 values are NaN", "finite")
    assert UnitReport("u", (ok,)).accepted and UnitReport("u", (ok,)).verdict.reason == "passed: shape"
    report = UnitReport("u", (ok, bad, Verdict(False, "later", "x")))
    assert not report.accepted and report.verdict is bad
