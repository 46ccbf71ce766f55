"""What this trainer's uplink can carry, measured from its own uploads, and whether an update
fits a unit's deadline.

A trainer behind a slow uplink (a home connection, a phone) that takes a unit whose update it
cannot upload in time wastes the round: the client waits for it until the deadline and then
redoes the slot. So the trainer times each upload it makes, keeps a moving estimate of its
throughput (only uploads big enough to measure it: a small one ends inside the first burst of
a token bucket and says nothing), and refuses a unit whose update would not be up before the
deadline with a margin. With no measurement yet it refuses nothing (and measures the first).
Pure logic; the clock is the caller's.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_SAMPLE_BYTES = 128 * 1024  # smaller uploads do not measure the link
EWMA_WEIGHT = 0.5  # weight of the newest sample (the link can change: follow it quickly)
SAFETY = 1.3  # an upload is planned at 1/SAFETY of the measured rate
FIXED_S = 2.0  # connection set-up, the store's answer, the exchange with the client
SHARE = 0.8  # the upload may take at most this share of the time left at assignment


@dataclass
class Uplink:
    """A moving estimate of the uplink in bytes per second (None until measured)."""

    bytes_per_s: float | None = None
    samples: int = 0

    def record(self, nbytes: int, seconds: float) -> None:
        """Note an upload of ``nbytes`` that took ``seconds``."""
        if nbytes < MIN_SAMPLE_BYTES or seconds <= 0:
            return
        rate = nbytes / seconds
        self.bytes_per_s = rate if self.bytes_per_s is None else (
            EWMA_WEIGHT * rate + (1 - EWMA_WEIGHT) * self.bytes_per_s)
        self.samples += 1

    def upload_seconds(self, nbytes: int) -> float:
        """Planned seconds to upload ``nbytes`` (0 when the uplink was never measured)."""
        if self.bytes_per_s is None:
            return 0.0
        return FIXED_S + SAFETY * nbytes / self.bytes_per_s

    def refusal(self, nbytes: int, seconds_left: float) -> str | None:
        """Why a unit whose update is about ``nbytes`` cannot be delivered in the
        ``seconds_left`` before its deadline, or None when it can (or we cannot tell)."""
        need = self.upload_seconds(nbytes)
        if need and need > SHARE * seconds_left:
            return (f"our uplink (~{self.bytes_per_s * 8 / 1000:.0f} kbit/s measured) needs ~{need:.0f} s "  # type: ignore[operator]
                    f"to upload this unit's ~{nbytes / 1e6:.1f} MB update; its deadline is {seconds_left:.0f} s away")
        return None

    def public(self) -> dict[str, float | int | None]:
        """What ``/status`` shows."""
        kbit = None if self.bytes_per_s is None else round(self.bytes_per_s * 8 / 1000, 1)
        return {"uplink_kbit_s": kbit, "uplink_samples": self.samples}
