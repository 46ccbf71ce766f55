"""The directory's liveness rules with an injected clock (no network)."""

from __future__ import annotations

from fedswarm.p2p.directory import Directory, keeps_link
from fedswarm.protocol.messages import Heartbeat, PeerEntry, Role

A = "12D3KooWA1DZPvKuXVnJsuKadhvKUAwxaSY9hwPz8z1geqX6ssPJ"
B = "12D3KooWAPGXLZjcVToEr7iNaoPpbRUzMH6ha3wkYSnUBUtrSg4V"
ME = "12D3KooWCkMFLXW2nNwAREDXrDkUcnQechJDndxfkMZ8cKApoG5V"
ADDR = "/ip4/127.0.0.1/tcp/4001/p2p/" + A


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _entry(peer: str, age: float, price: int | None = None, online: bool = True) -> PeerEntry:
    return PeerEntry(peer_id=peer, role=Role.TRAINER, addrs=[ADDR], price_wei=price, age_s=age, online=online)


def test_summary_keeps_a_peer_alive_only_as_long_as_the_summarizer_heard_it() -> None:
    clock = Clock()
    d = Directory(clock, timeout=4.0)
    d.merge_summary([_entry(A, age=1.0, price=5), _entry(ME, age=0.0)], self_id=ME)
    rec = d.get(A)
    assert rec is not None and d.is_online(rec) and rec.price_wei == 5
    assert d.get(ME) is None  # never ourselves
    clock.now += 2.9
    assert d.is_online(rec)  # heard 3.9 s ago
    clock.now += 0.2
    assert not d.is_online(rec)  # 4.1 s: silent past the timeout
    # A later summary that heard it again brings it back and refreshes second-hand fields.
    d.merge_summary([_entry(A, age=0.5, price=7)], self_id=ME)
    assert d.is_online(rec) and d.get(A).price_wei == 7  # type: ignore[union-attr]


def test_stale_or_offline_summary_entries_never_revive_a_silent_peer() -> None:
    clock = Clock()
    d = Directory(clock, timeout=4.0)
    d.merge_summary([_entry(A, age=0.0)], self_id=ME)
    clock.now += 10
    d.merge_summary([_entry(A, age=500.0), _entry(B, age=0.0, online=False)], self_id=ME)
    assert not d.is_online(d.get(A))  # type: ignore[arg-type]
    assert d.get(B) is None


def test_first_hand_heartbeat_wins_over_a_summary() -> None:
    clock = Clock()
    d = Directory(clock, timeout=4.0)
    d.observe(Heartbeat(peer_id=A, role=Role.TRAINER, addrs=[ADDR], price_wei=9, seq=3))
    d.merge_summary([_entry(A, age=3.0, price=1)], self_id=ME)
    rec = d.get(A)
    assert rec is not None and rec.price_wei == 9 and rec.last_seen == clock.now  # not moved back
    assert not d.observe(Heartbeat(peer_id=A, role=Role.TRAINER, addrs=[ADDR], seq=2))  # replay


def test_summary_entries_carry_their_age() -> None:
    clock = Clock()
    d = Directory(clock, timeout=4.0)
    d.observe(Heartbeat(peer_id=A, role=Role.TRAINER, addrs=[ADDR], seq=1))
    clock.now += 1.5
    (entry,) = d.entries()
    assert entry.age_s == 1.5 and entry.online


def test_trainers_link_only_to_the_bootstrap_and_clients() -> None:
    assert not keeps_link(Role.TRAINER, Role.TRAINER)
    for a, b in [(Role.TRAINER, Role.CLIENT), (Role.CLIENT, Role.TRAINER), (Role.TRAINER, Role.BOOTSTRAP),
                 (Role.CLIENT, Role.CLIENT), (Role.BOOTSTRAP, Role.CLIENT)]:
        assert keeps_link(a, b)
