"""A client that never pays, for tests and the demo: the real :class:`ClientRole` with its
settlement seam turned off.

It runs jobs exactly like an honest client (bids, escrow, receipts, rounds, checks,
aggregation, the result) but never puts a verdict on chain and never completes the job there,
so the escrow stays locked and every receipted unit stays unsettled: its trainers must claim
their pay with their receipts once the job's settle window has passed. Started with ``python -m fedswarm.testing.node client
--fault never-settle`` (the launcher's ``fault="never-settle"``).
"""

from __future__ import annotations

from fedswarm.ledger.escrow import SettleOutcome, Verdict
from fedswarm.ledger.evm import TxReceipt
from fedswarm.roles.client import ClientRole, JobRecord
from fedswarm.testing.faults import ClientFault


class NeverSettleClient(ClientRole):
    """A client whose settlement does nothing (see the module doc)."""

    fault = ClientFault.NEVER_SETTLE

    async def submit_verdicts(self, job: JobRecord, batch: list[Verdict]) -> SettleOutcome | None:
        """Send nothing to the chain: the verdicts are recorded as not sent."""
        return None

    async def complete_job(self, job: JobRecord, pointer: bytes, result_sha256: bytes) -> TxReceipt | None:
        """Leave the job open on chain until its deadline."""
        return None
