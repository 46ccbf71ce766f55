"""``GET /api/v1/clients`` against the real FastAPI app: client nodes from a real directory (fed
heartbeats, so ``PeerRecord.api`` comes through), each with the rejection rate of its operator
from escrow events read incrementally by a :class:`ClientBook` (from the deployment block, then
from the saved cursor), and ``null`` where the node cannot know it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import trio

from fedswarm.api.app import create_app
from fedswarm.api.clients import ClientView, clients_router
from fedswarm.api.guard import ApiGuard
from fedswarm.market.client_book import ClientBook
from fedswarm.p2p.directory import Directory
from fedswarm.protocol.messages import Heartbeat, Role

OPERATOR_BAD, OPERATOR_GOOD, SELF = "0x" + "aa" * 20, "0x" + "bb" * 20, "0x" + "11" * 20
PEER_BAD, PEER_GOOD, PEER_UNKNOWN, PEER_TRAINER = ("12D3KooWbad1111111", "12D3KooWgood111111",
                                                   "12D3KooWunknown111", "12D3KooWtrainer111")
SELF_PEER = "12D3KooWself111111"


class FakeEscrow:
    """The three things ``sync_book`` asks of an EscrowV2, with the blocks it was asked for."""

    def __init__(self, events: list[dict[str, Any]], deploy_block: int = 100) -> None:
        self.events, self.deploy_block, self.latest, self.asked = events, deploy_block, 120, []
        self.ledger = SimpleNamespace(read_events=self.read_events)

    def block_number(self) -> int:
        return self.latest

    def read_events(self, _: Any, *, from_block: int, to_block: int) -> list[dict[str, Any]]:
        self.asked.append((from_block, to_block))
        return [e for e in self.events if from_block <= e["block"] <= to_block]


def job_events(key: str, operator: str, verdicts: list[bool], block: int) -> list[dict[str, Any]]:
    out = [{"name": "JobFunded", "block": block, "args": {"jobKey": key, "payer": operator, "operator": operator}}]
    out += [{"name": "UnitSettled", "block": block,
             "args": {"jobKey": key, "round": 0, "unit": i, "trainer": "0x" + "cc" * 20, "accepted": ok,
                      "amount": 10**15 if ok else 0}} for i, ok in enumerate(verdicts)]
    return out


def node(role: Role = Role.CLIENT) -> Any:
    now = [1000.0]
    directory = Directory(lambda: now[0], timeout=4.0, forget_after=60.0)
    for seq, (peer, r, api) in enumerate([(PEER_BAD, Role.CLIENT, "https://bad.example"),
                                          (PEER_GOOD, Role.CLIENT, None),
                                          (PEER_TRAINER, Role.TRAINER, None)]):
        directory.observe(Heartbeat(peer_id=peer, role=r, addrs=["/ip4/127.0.0.1/tcp/1"], api=api, seq=seq))
    now[0] += 10.0  # everyone heard so far is now silent past the timeout ...
    directory.observe(Heartbeat(peer_id=PEER_UNKNOWN, role=Role.CLIENT, addrs=["/ip4/127.0.0.1/tcp/2"], seq=9))
    directory.observe(Heartbeat(peer_id=PEER_GOOD, role=Role.CLIENT, addrs=["/ip4/127.0.0.1/tcp/3"], seq=10))
    return SimpleNamespace(role=role, peer_id=SELF_PEER, addrs=[], identity=SimpleNamespace(address=SELF),
                           api_addr="http://127.0.0.1:9000", directory=directory, started_at=0.0, stats={},
                           limits_status=dict, gossip_status=dict, connected_peers=list)


async def get(app: Any, path: str) -> Any:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
        r = await c.get(path)
    assert r.status_code == 200, r.text
    return r.json()


def app_for(n: Any, view: ClientView | None) -> Any:
    routers = [clients_router(n, view)] if view is not None else []
    return create_app(n, guard=ApiGuard(bind_host="127.0.0.1"), extra_routers=routers)


async def test_clients_lists_client_nodes_with_chain_rejection_rates(tmp_path: Path) -> None:
    escrow = FakeEscrow(job_events("01" * 32, OPERATOR_BAD, [False] * 18 + [True] * 6, 105)
                        + job_events("02" * 32, OPERATOR_GOOD, [True] * 4, 110))
    book = ClientBook(tmp_path, escrow)
    view = ClientView(book, lambda: {PEER_BAD: OPERATOR_BAD, PEER_GOOD: OPERATOR_GOOD})
    assert book.stale(30.0)
    assert book.refresh() == 2 + 28
    assert escrow.asked == [(100, 120)]  # from the deployment block, never from block 0
    escrow.events += job_events("03" * 32, OPERATOR_GOOD, [False], 125)
    escrow.latest = 130
    assert book.refresh() == 2 and escrow.asked[-1] == (121, 130)  # from the cursor on
    assert not book.stale(30.0)

    rows = {r["peer_id"]: r for r in (await get(app_for(node(), view), "/api/v1/clients"))["clients"]}
    assert PEER_TRAINER not in rows  # clients only
    assert rows[PEER_BAD] == {"peer_id": PEER_BAD, "api": "https://bad.example", "online": False,
                              "operator": OPERATOR_BAD, "rejection_rate": 0.75, "units_judged": 24}
    assert rows[PEER_GOOD] == {"peer_id": PEER_GOOD, "api": None, "online": True, "operator": OPERATOR_GOOD,
                               "rejection_rate": 0.2, "units_judged": 5}
    # Operator unknown to this node: no rate, and no address guessed.
    assert rows[PEER_UNKNOWN]["operator"] is None and rows[PEER_UNKNOWN]["rejection_rate"] is None
    # The node itself is a client: its own wallet, no settled unit yet.
    assert rows[SELF_PEER] == {"peer_id": SELF_PEER, "api": "http://127.0.0.1:9000", "online": True,
                               "operator": SELF, "rejection_rate": None, "units_judged": 0}
    # The records persist: a new book reads from disk and resumes at the cursor.
    again = ClientBook(tmp_path, escrow)
    assert again.record("0x" + "AA" * 20).rejected == 18  # addresses in any case
    assert again.refresh() == 0 and escrow.asked[-1] == (121, 130)  # nothing new: no read


async def test_every_node_answers_even_without_a_chain() -> None:
    """A bootstrap (no role parts) still lists the client nodes; rates are null, not 0."""
    rows = (await get(app_for(node(Role.BOOTSTRAP), None), "/api/v1/clients"))["clients"]
    assert [r["peer_id"] for r in rows] == [PEER_GOOD, PEER_UNKNOWN, PEER_BAD]  # online first
    assert all(r["rejection_rate"] is None and r["units_judged"] == 0 and r["operator"] is None for r in rows)


async def test_client_view_refreshes_in_the_background_and_survives_a_dead_chain(tmp_path: Path) -> None:
    escrow = FakeEscrow(job_events("01" * 32, OPERATOR_BAD, [False, True], 101))
    view = ClientView(ClientBook(tmp_path, escrow))
    assert view.records() == {}
    with trio.move_on_after(1.0):
        await view.run()
    assert view.records()[OPERATOR_BAD].rejected == 1

    def dead(*_: Any, **__: Any) -> Any:
        raise ConnectionError("relay away")

    escrow.ledger.read_events = dead
    escrow.latest = 200
    with trio.move_on_after(0.5):
        await view.run()  # logs and keeps going
    assert view.records()[OPERATOR_BAD].settled == 2


def test_a_bid_carries_the_operator_rate_its_trainer_saw(tmp_path: Path) -> None:
    """The trainer puts what its book says of the job's operator into its bid; the job's owner
    sees it per bidder in the job detail (``trainers_detail[].client_rejection_rate``)."""
    from fedswarm.protocol.job import Bid
    from fedswarm.protocol.messages import Capabilities
    from fedswarm.roles.trainer.bidding import Bidding

    escrow = FakeEscrow(job_events("01" * 32, OPERATOR_BAD, [False] * 3 + [True], 101))
    book = ClientBook(tmp_path, escrow)
    book.refresh()
    me = SimpleNamespace(client_book=book)
    seen = Bidding._client_seen(me, OPERATOR_BAD)  # type: ignore[arg-type]
    assert seen == {"client_rejection_rate": 0.75, "client_units_judged": 4}
    assert Bidding._client_seen(me, OPERATOR_GOOD) == {"client_rejection_rate": None,  # type: ignore[arg-type]
                                                        "client_units_judged": 0}
    bid = Bid(job_id="j1", peer_id=PEER_TRAINER, address="0x" + "cc" * 20, box_public="ab" * 32, price_wei=1,
              capabilities=Capabilities(cpu_cores=1, ram_mb=1), signature="0x" + "00" * 65, **seen)
    assert Bid.model_validate_json(bid.model_dump_json()).client_rejection_rate == 0.75
