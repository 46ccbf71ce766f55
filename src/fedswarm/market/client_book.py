"""Clients' rejection rates from the escrow's events, kept in step incrementally.

Every node that can read the chain sees the same history: a trainer reads it to refuse clients
that reject much of the work they are given, the network view (``GET /api/v1/clients``) shows
it beside each client node, and a bid carries the rate its trainer saw. The events are read from
the contract's deployment block with a saved cursor (``client-cursor.json``), and the settlement
records built so far are kept beside it (``client-settlements.json``, written before the cursor
so a crash re-reads and never skips): see :func:`fedswarm.market.settlement_sync.sync_book`.
The scoring is :func:`fedswarm.market.reputation.client_records` and ``client_refusal``.

Blocking (chain reads): :meth:`ClientBook.refresh` belongs in a thread; the rest is in memory.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from fedswarm.ledger.escrow import EscrowV2
from fedswarm.market.reputation import ClientRecord, SettlementBook, client_records, client_refusal
from fedswarm.market.settlement_sync import sync_book

__all__ = ["BOOK_FILE", "CURSOR_FILE", "ClientBook"]

BOOK_FILE = "client-settlements.json"
CURSOR_FILE = "client-cursor.json"


class ClientBook:
    """The escrow's settlements as one node sees them, scored per payer and operator."""

    def __init__(self, home: Path, escrow: EscrowV2, max_rate: float = 0.5, min_units: int = 20) -> None:
        home.mkdir(parents=True, exist_ok=True)  # a trainer's work dir may not exist yet
        self.book_path = home / BOOK_FILE
        self.cursor_path = home / CURSOR_FILE
        self.escrow = escrow
        self.max_rate = max_rate
        self.min_units = min_units
        self.book = SettlementBook.load(self.book_path)
        self.clients: dict[str, ClientRecord] = client_records(self.book.all())
        self.refreshed_at: float | None = None  # monotonic time of the last successful read
        # Bidding and the network view both refresh: one read at a time, on one book.
        self._refreshing = threading.Lock()

    def refresh(self) -> int:
        """Read the events since the cursor (blocking: call in a thread); returns how many."""
        with self._refreshing:
            read = sync_book(self.book, self.book_path, self.cursor_path, self.escrow)
            self.clients = client_records(self.book.all())
            self.refreshed_at = time.monotonic()
            return read

    def stale(self, max_age_s: float) -> bool:
        """Whether the last successful read is older than ``max_age_s`` (or never happened)."""
        return self.refreshed_at is None or time.monotonic() - self.refreshed_at > max_age_s

    def record(self, address: str | None) -> ClientRecord | None:
        """The payer's or operator's record (None: unknown address or nothing settled yet)."""
        return self.clients.get(address.lower()) if address else None

    def refusal(self, *parties: str | None) -> str | None:
        """Why not to bid for a job with these payer/operator addresses (None: bid)."""
        return client_refusal(self.clients, [p for p in parties if p], max_rate=self.max_rate,
                              min_units=self.min_units)

    def public(self) -> dict[str, object]:
        """For a trainer's status: the limit and the clients it would refuse now."""
        refused = {who: rec.as_dict() for who, rec in self.clients.items() if self.refusal(who)}
        return {"max_client_rejection_rate": self.max_rate, "min_client_units": self.min_units,
                "clients_known": len(self.clients), "clients_refused": refused}
