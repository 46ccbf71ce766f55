"""A node's advertised API URL (a client's delegate address, ``--public-api``) survives every
hop: heartbeat -> directory -> mesh summary on the wire -> another node's directory."""

from __future__ import annotations

from fedswarm.p2p.directory import Directory
from fedswarm.protocol.messages import Heartbeat, MeshSummary, Role

A = "12D3KooWA1DZPvKuXVnJsuKadhvKUAwxaSY9hwPz8z1geqX6ssPJ"
ME = "12D3KooWCkMFLXW2nNwAREDXrDkUcnQechJDndxfkMZ8cKApoG5V"
ADDR = "/ip4/127.0.0.1/tcp/4001/p2p/" + A
URL = "https://delegate.example.org:8443"


def test_api_url_survives_directory_summary_and_merge() -> None:
    now = [1000.0]
    boot = Directory(lambda: now[0], timeout=4.0)
    assert boot.observe(Heartbeat(peer_id=A, role=Role.CLIENT, addrs=[ADDR], api=URL, seq=1))
    (entry,) = boot.entries()
    assert entry.api == URL
    # on the wire and back, as a bootstrap's summary
    wire = MeshSummary(peers=boot.entries(), at=now[0]).model_dump_json()
    summary = MeshSummary.model_validate_json(wire)
    assert summary.peers[0].api == URL
    other = Directory(lambda: now[0], timeout=4.0)
    other.merge_summary(summary.peers, self_id=ME)
    rec = other.get(A)
    assert rec is not None and rec.api == URL
    assert other.entries()[0].api == URL
    # a later summary (second-hand only) carries a changed URL
    moved = summary.peers[0].model_copy(update={"api": URL + "/v2"})
    other.merge_summary([moved], self_id=ME)
    assert other.get(A).api == URL + "/v2"  # type: ignore[union-attr]
