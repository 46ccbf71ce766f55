"""A trainer's withdrawal with no job topic (node-level) is audited on the node's ``TOPIC_ID``
(the audit log's ``default_topic``), and on the job's topic when there is one."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import trio

from fedswarm.roles.trainer.pay import Payments


class FakeSource:
    """An escrow holding ``pending`` wei for us; withdraw empties it."""

    def __init__(self, pending: int) -> None:
        self.left = pending

    def pending(self) -> int:
        return self.left

    def withdraw(self, limiter: Any = None) -> Any:
        self.left = 0
        return SimpleNamespace(tx_hash="0x" + "ab" * 32)


def trainer(default_topic: str | None, pending: int = 7) -> tuple[Any, list[tuple[str, Any, str, dict[str, Any]]]]:
    sent: list[tuple[str, Any, str, dict[str, Any]]] = []
    escrow = FakeSource(pending)
    node = SimpleNamespace(
        db=SimpleNamespace(job=lambda job_id: None), escrow=escrow, ledger=FakeSource(0), contract="0x0",
        stats=SimpleNamespace(bump=lambda name: None), _chain_limiter=trio.CapacityLimiter(1),
        audit=SimpleNamespace(default_topic=default_topic), pending_wei=None,
        _audit=lambda topic, job_id, state, **kw: sent.append((topic, job_id, state, kw)),
    )
    return node, sent


async def test_node_level_withdraw_goes_to_the_default_topic() -> None:
    node, sent = trainer("0.0.77")
    await Payments._withdraw(node, None, None)  # type: ignore[arg-type]
    assert [(t, j, s, kw["amount_wei"]) for t, j, s, kw in sent] == [("0.0.77", None, "withdrawn", "7")]
    assert node.pending_wei == 0


async def test_job_topic_wins_and_no_topic_means_no_message() -> None:
    node, sent = trainer("0.0.77")
    await Payments._withdraw(node, "job-1", "0.0.5")  # type: ignore[arg-type]
    assert [(t, j) for t, j, _, _ in sent] == [("0.0.5", "job-1")]
    node, sent = trainer(None)
    await Payments._withdraw(node, None, None)  # type: ignore[arg-type]
    assert sent == [] and node.escrow.left == 0  # withdrawn all the same, just not audited
