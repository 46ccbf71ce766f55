"""The settlement book follows the chain incrementally: from the deployment block, then the cursor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedswarm.market.reputation import SettlementBook, trainer_reputation
from fedswarm.market.settlement_sync import sync_book

PAYER, OPERATOR, TRAINER = "0x" + "a1" * 20, "0x" + "b2" * 20, "0x" + "c3" * 20
JOB = "0x" + "11" * 32


class _Ledger:
    def __init__(self, events: list[tuple[int, dict[str, Any]]]) -> None:
        self.events = events
        self.reads: list[tuple[int, int]] = []

    def read_events(self, cursor: object, *, from_block: int, to_block: int) -> list[dict[str, Any]]:
        self.reads.append((from_block, to_block))
        return [e for b, e in self.events if from_block <= b <= to_block]


class _Escrow:
    """An in-process stand-in for EscrowV2's event reads (the chain layer below the market)."""

    def __init__(self, deploy_block: int, head: int, events: list[tuple[int, dict[str, Any]]]) -> None:
        self.deploy_block, self.head, self.ledger = deploy_block, head, _Ledger(events)

    def block_number(self) -> int:
        return self.head


def _settled(unit: int) -> dict[str, Any]:
    return {"name": "UnitSettled", "args": {"jobKey": JOB, "round": 0, "unit": unit, "trainer": TRAINER,
                                            "accepted": True, "amount": 1000}}


def test_first_read_starts_at_the_deployment_block_then_follows_the_cursor(tmp_path: Path) -> None:
    # Prepare
    funded = {"name": "JobFunded", "args": {"jobKey": JOB, "payer": PAYER, "operator": OPERATOR}}
    escrow = _Escrow(deploy_block=5_000, head=5_010, events=[(5_001, funded), (5_002, _settled(0))])
    book, book_path, cursor = SettlementBook(), tmp_path / "book.json", tmp_path / "cursor.json"
    # Execute
    assert sync_book(book, book_path, cursor, escrow) == 2  # type: ignore[arg-type]
    escrow.head = 5_020
    escrow.ledger.events.append((5_015, _settled(1)))
    assert sync_book(book, book_path, cursor, escrow) == 1  # type: ignore[arg-type]
    # Assert: never from block 0, no block read twice, and the book survives a restart
    assert escrow.ledger.reads == [(5_000, 5_010), (5_011, 5_020)]
    again = SettlementBook.load(book_path)
    assert trainer_reputation(again.all())[TRAINER.lower()].settled == 2
