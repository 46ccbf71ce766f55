"""Keep a :class:`~fedswarm.market.reputation.SettlementBook` in step with the escrow's events.

Both sides of the market score each other from the same chain history: the client ranks
trainers by what they were really paid, trainers rate clients by how much work they reject.
Events are read incrementally, from the contract's deployment block on the first call (never
from block 0: on Hedera that would be tens of thousands of relay calls) and from a saved cursor
afterwards. The book is written before the cursor, so a crash between the two re-reads a range
(harmless: the book de-duplicates units) and never skips one.
"""

from __future__ import annotations

from pathlib import Path

from fedswarm.ledger.escrow import EscrowV2
from fedswarm.ledger.evm import EventCursor
from fedswarm.market.reputation import SettlementBook


def sync_book(book: SettlementBook, book_path: Path, cursor_path: Path, escrow: EscrowV2) -> int:
    """Ingest the escrow's events since the cursor into ``book`` and persist both.

    Blocking (chain reads): call it in a thread. Returns how many events were read.
    """
    cursor = EventCursor(cursor_path, escrow.deploy_block)
    start = cursor.load()
    latest = escrow.block_number()
    if latest < start:
        return 0
    events = escrow.ledger.read_events(None, from_block=start, to_block=latest)
    book.ingest(events)
    book.save(book_path)  # before the cursor: a crash re-reads, never skips
    cursor.save(latest + 1)
    return len(events)
