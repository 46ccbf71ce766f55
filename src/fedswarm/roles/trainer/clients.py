"""What a trainer knows of clients: each payer's and operator's rejection rate from the escrow's
events, so it can refuse to bid for clients that reject much of the work they are given.

The events are read incrementally from the contract's deployment block with a saved cursor
(``client-cursor.json`` in the trainer's home), and the settlement records built so far are kept
beside it (``client-settlements.json``, written before the cursor so a crash re-reads and never
skips). :func:`fedswarm.market.reputation.client_records` and ``client_refusal`` do the scoring.
"""

from __future__ import annotations

import logging
from pathlib import Path

import trio

from fedswarm.ledger.escrow import EscrowV2
from fedswarm.market.reputation import ClientRecord, SettlementBook, client_records, client_refusal
from fedswarm.market.settlement_sync import sync_book

log = logging.getLogger("fedswarm.trainer")
REFRESH_S = 30.0


class ClientBook:
    """The escrow's settlements as seen by one trainer, refreshed in the background."""

    def __init__(self, home: Path, escrow: EscrowV2, max_rate: float, min_units: int) -> None:
        self.book_path = home / "client-settlements.json"
        self.cursor_path = home / "client-cursor.json"
        self.escrow = escrow
        self.max_rate = max_rate
        self.min_units = min_units
        self.book = SettlementBook.load(self.book_path)
        self.clients: dict[str, ClientRecord] = client_records(self.book.all())

    def refresh(self) -> int:
        """Read the events since the cursor (blocking: call in a thread); returns how many."""
        read = sync_book(self.book, self.book_path, self.cursor_path, self.escrow)
        self.clients = client_records(self.book.all())
        return read

    def refusal(self, *parties: str | None) -> str | None:
        """Why not to bid for a job with these payer/operator addresses (None: bid)."""
        return client_refusal(self.clients, [p for p in parties if p], max_rate=self.max_rate,
                              min_units=self.min_units)

    def public(self) -> dict[str, object]:
        """For the trainer's status: the limit and the clients it would refuse now."""
        refused = {who: rec.as_dict() for who, rec in self.clients.items() if self.refusal(who)}
        return {"max_client_rejection_rate": self.max_rate, "min_client_units": self.min_units,
                "clients_known": len(self.clients), "clients_refused": refused}

    async def run(self) -> None:
        """Refresh every :data:`REFRESH_S` seconds; a failed read is logged and retried."""
        while True:
            try:
                await trio.to_thread.run_sync(self.refresh)
            except Exception as exc:  # the chain being away must not stop the trainer
                log.warning("client records not refreshed: %s", exc)
            await trio.sleep(REFRESH_S)
