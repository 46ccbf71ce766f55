"""Bootstrap, client and trainers as separate processes find each other and talk."""

from __future__ import annotations

import time

import httpx
import pytest

from conftest import Swarm, bootmesh_roles, wait_for

pytestmark = pytest.mark.slow


def test_everyone_in_every_bootmesh_within_5s(swarm: Swarm) -> None:
    # Prepare
    expected = {n.peer_id: n.role.upper() for n in swarm.nodes}
    started = time.monotonic()

    # Execute / Assert: every node's bootmesh lists all five with the right roles.
    for node in swarm.nodes:
        remaining = max(0.5, 5.0 - (time.monotonic() - started))
        wait_for(lambda node=node: bootmesh_roles(node) == expected, remaining + 5.0,
                 what=f"full bootmesh at {node.role}")
    assert time.monotonic() - started < 10.0


def test_links_form_a_star_around_the_bootstrap_and_the_client(swarm: Swarm) -> None:
    # Trainers keep links to the bootstrap and the client, never to each other: pairwise
    # trainer links cost N^2 handshakes and saturated a 2-core machine at 32 trainers.
    hubs = {swarm.bootstrap.peer_id, swarm.client.peer_id}
    trainer_ids = {t.peer_id for t in swarm.trainers}
    wait_for(lambda: all(hubs <= set(t.command("peers")["peers"]) for t in swarm.trainers), 15,
             what="every trainer linked to the bootstrap and the client")
    time.sleep(2.0)  # a few reconnect rounds: nobody dials a fellow trainer
    for t in swarm.trainers:
        assert not (set(t.command("peers")["peers"]) & trainer_ids), f"trainer {t.peer_id} linked to a trainer"
    # ...and the hubs keep every trainer in their market mesh (nothing pruned to gossip only).
    wait_for(lambda: trainer_ids <= set(swarm.client.command("mesh")["mesh"].get("fedswarm/market/1", [])), 15,
             what="every trainer in the client's market mesh")


def test_status_and_command_shapes(swarm: Swarm) -> None:
    st = httpx.get(f"{swarm.client.api}/status", timeout=5).json()
    assert st["status"] == "running" and st["role"] == "client"
    local = swarm.client.command("local")
    assert local["local"]["role"] == "CLIENT" and local["local"]["peer_id"] == swarm.client.peer_id
    bad = httpx.post(f"{swarm.client.api}/command", json={"cmd": "nope"}, timeout=5)
    assert bad.status_code == 400 and "unknown command" in bad.json()["error"]
    bad = httpx.post(f"{swarm.client.api}/command", content=b"{not json", timeout=5,
                     headers={"content-type": "application/json"})
    assert bad.status_code == 400
    trainers = httpx.get(f"{swarm.client.api}/api/v1/trainers", timeout=5).json()["trainers"]
    assert {t["peer_id"] for t in trainers} == {t.peer_id for t in swarm.trainers}
    assert all(t["capabilities"]["cpu_cores"] >= 1 and t["price_wei"] > 0 for t in trainers)
    assert httpx.get(f"{swarm.client.api}/docs", timeout=5).status_code == 200


def test_100_messages_back_to_back_reach_every_trainer(swarm: Swarm) -> None:
    # Prepare: trainers and the client join a job topic and the mesh forms.
    topic = "fedswarm/job/burst/1"
    for n in [*swarm.trainers, swarm.client]:
        assert n.command("join", topic)["status"] == "ok"
    wait_for(lambda: all(topic in r["topics"] for r in
                         httpx.get(f"{swarm.client.api}/api/v1/peers", timeout=5).json()["directory"]
                         if r["role"] == "trainer"), 10, what="trainers subscribed")
    time.sleep(1.0)

    # Execute: 100 publishes back to back.
    for i in range(100):
        assert swarm.client.command("publish", topic, f"m{i}")["status"] == "ok"

    # Assert: 100/100 at every trainer, in any order, no duplicates.
    def all_arrived() -> bool:
        for t in swarm.trainers:
            texts = [m["data"]["text"] for m in t.command("messages", topic)["messages"]]
            if sorted(texts) != sorted(f"m{i}" for i in range(100)):
                return False
        return True

    wait_for(all_arrived, 20, what="100/100 at every trainer")
