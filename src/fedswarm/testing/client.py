"""Clients that misbehave, for tests and the demo: the real :class:`ClientRole` with one seam
changed.

:class:`NeverSettleClient` runs jobs exactly like an honest client (bids, escrow, receipts,
rounds, checks, aggregation, the result) but never puts a verdict on chain and never completes
the job there, so the escrow stays locked and every receipted unit stays unsettled: its trainers
must claim their pay with their receipts once the job's settle window has passed.
:class:`MisregisteringClient` / :class:`UnregisteringClient` fund the job with their trainers
registered at the wrong price or not at all: the trainers must decline to work. Started with
``python -m fedswarm.testing.node client --fault never-settle|misregister-price|misregister-absent``
(the launcher's ``fault=...``).
"""

from __future__ import annotations

from eth_account import Account

from fedswarm.ledger.escrow import SettleOutcome, TrainerTerms, Verdict
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


class MisregisteringClient(ClientRole):
    """Funds each job but registers its trainers wrongly (:attr:`fault`): at another price
    than they bid, or not at all (strangers take their places). Trainers must read the chain
    before their first unit and decline to work; the job then fails or is reassigned."""

    fault = ClientFault.MISREGISTER_PRICE

    def fund_trainers(self, job: JobRecord) -> list[TrainerTerms]:
        """The honest registrations, changed as :attr:`fault` says."""
        honest = super().fund_trainers(job)
        if self.fault == ClientFault.MISREGISTER_ABSENT:
            return [TrainerTerms(Account.create().address, t.price, t.units) for t in honest]
        return [TrainerTerms(t.trainer, max(1, t.price - 1), t.units) for t in honest]


class UnregisteringClient(MisregisteringClient):
    """A :class:`MisregisteringClient` that registers strangers instead of its trainers."""

    fault = ClientFault.MISREGISTER_ABSENT


CLIENT_DOUBLES: dict[ClientFault, type[ClientRole]] = {
    ClientFault.NEVER_SETTLE: NeverSettleClient,
    ClientFault.MISREGISTER_PRICE: MisregisteringClient,
    ClientFault.MISREGISTER_ABSENT: UnregisteringClient,
}
