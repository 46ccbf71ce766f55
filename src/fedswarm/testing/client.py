"""A client that never pays, for tests and the demo: the real :class:`ClientRole` with its
settlement seam turned off.

It runs jobs exactly like an honest client (bids, escrow, rounds, checks, aggregation, the
result) but never settles a round on chain and never records the result there, so the escrow
stays locked and every committed unit stays unsettled: its trainers must claim their pay once
the job's settle window has passed. Started with ``python -m fedswarm.testing.node client
--fault never-settle`` (the launcher's ``fault="never-settle"``).
"""

from __future__ import annotations

from fedswarm.roles.client import ClientRole, JobRecord
from fedswarm.testing.faults import ClientFault


class NeverSettleClient(ClientRole):
    """A client whose settlement does nothing (see the module doc)."""

    fault = ClientFault.NEVER_SETTLE

    async def settle_round(self, job: JobRecord, r: int) -> str | None:
        """Send nothing to the chain: the round is recorded as settled with no transaction."""
        return None

    async def complete_job(self, job: JobRecord, pointer: bytes) -> None:
        """Leave the job open on chain (completing it would settle the units for us)."""
        return None
