"""The trainer's uplink estimate and the refusal of units it cannot upload in time."""

from __future__ import annotations

import pytest

from fedswarm.roles.trainer.uplink import FIXED_S, MIN_SAMPLE_BYTES, SAFETY, Uplink


def test_unmeasured_uplink_refuses_nothing() -> None:
    up = Uplink()
    assert up.upload_seconds(10**9) == 0.0
    assert up.refusal(10**9, 5.0) is None


def test_small_uploads_do_not_measure_the_link() -> None:
    up = Uplink()
    up.record(MIN_SAMPLE_BYTES - 1, 0.001)  # inside a token bucket's first burst: says nothing
    up.record(10**6, 0.0)
    assert up.bytes_per_s is None and up.samples == 0


def test_measured_uplink_budgets_the_upload_and_refuses_what_does_not_fit() -> None:
    up = Uplink()
    up.record(640_000, 20.0)  # 32 kB/s = 256 kbit/s
    assert up.public() == {"uplink_kbit_s": 256.0, "uplink_samples": 1}
    assert up.upload_seconds(320_000) == pytest.approx(FIXED_S + SAFETY * 10.0)
    assert up.refusal(320_000, 60.0) is None  # ~15 s of 60
    reason = up.refusal(2_400_000, 60.0)  # ~100 s of 60
    assert reason is not None and "256 kbit/s" in reason and "2.4 MB" in reason


def test_the_estimate_follows_a_changed_link() -> None:
    up = Uplink()
    up.record(1_000_000, 1.0)  # 1 MB/s
    for _ in range(6):
        up.record(1_000_000, 10.0)  # then 100 kB/s
    assert up.bytes_per_s is not None and up.bytes_per_s < 120_000
