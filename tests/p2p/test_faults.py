"""Crashes, freezes and a bootstrap restart (each test gets its own swarm: they break it)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from conftest import HEARTBEAT, Swarm, bootmesh_roles, trainer_online, wait_for
from fedswarm.p2p.presence import drop_after
from fedswarm.roles.launcher import start_node

pytestmark = [pytest.mark.slow, pytest.mark.serial]
TIMEOUT = 3.0  # --peer-timeout given to every node in conftest
DROP_S = drop_after(TIMEOUT)  # a connected peer silent this long loses its connections


@pytest.fixture
def fresh_swarm(tmp_path):  # type: ignore[no-untyped-def]
    s = Swarm(tmp_path)
    s.start(trainers=3)
    try:
        wait_for(lambda: all(len(bootmesh_roles(n)) == 5 for n in s.nodes), 15, what="full mesh")
        yield s
    finally:
        s.stop()


def test_kill9_and_sigstop(fresh_swarm: Swarm) -> None:
    s = fresh_swarm
    victim, frozen = s.trainers[0], s.trainers[1]
    observers = [s.bootstrap, s.client, s.trainers[2]]

    # kill -9: gone (not online) from every directory within the heartbeat timeout (+ slack)
    victim.popen.send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    for obs in observers:
        wait_for(lambda obs=obs: trainer_online(obs, victim.peer_id) in (False, None), TIMEOUT + 3,
                 what="killed trainer marked gone")
    assert time.monotonic() - t0 < TIMEOUT + 3
    wait_for(lambda: victim.peer_id not in bootmesh_roles(s.client), TIMEOUT + 3, what="killed trainer out of bootmesh")

    # SIGSTOP: unresponsive within the timeout even though TCP stays up (py-libp2p has no
    # liveness); silent past the drop bound, the bootstrap and the client close their
    # connections to it and gossipsub drops it from the bootstrap's mesh; back after SIGCONT.
    boot, client = s.bootstrap, s.client
    wait_for(lambda: frozen.peer_id in _mesh_peers(boot), 10, what="trainer in the bootstrap's mesh")
    os.kill(frozen.popen.pid, signal.SIGSTOP)
    t_stop = time.monotonic()
    try:
        for obs in observers:
            wait_for(lambda obs=obs: trainer_online(obs, frozen.peer_id) is False, TIMEOUT + 3,
                     what="frozen trainer unresponsive")
        for obs in (boot, client):
            wait_for(lambda obs=obs: frozen.peer_id not in obs.command("peers")["peers"], DROP_S + 6,
                     what=f"frozen trainer's connections closed by the {obs.role}")
        t_dropped = time.monotonic() - t_stop
        wait_for(lambda: frozen.peer_id not in _mesh_peers(boot), 5, what="frozen trainer out of the bootstrap's mesh")
        assert DROP_S - 1 <= t_dropped <= DROP_S + 6, t_dropped  # not before its bound, not long after
    finally:
        os.kill(frozen.popen.pid, signal.SIGCONT)
    t_cont = time.monotonic()
    for obs in observers:
        # A thawed node first reads what its sockets held, so it may count the bootstrap as heard
        # and redial only after its silence rule (max(10 s, 3 peer timeouts)) plus a dial.
        try:
            wait_for(lambda obs=obs: trainer_online(obs, frozen.peer_id) is True, 20,
                     what=f"thawed trainer back in the {obs.role}'s directory")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; pubsub per node: {_pubsub_views(s, frozen.peer_id)}") from None
    wait_for(lambda: frozen.peer_id in boot.command("peers")["peers"] and frozen.peer_id in _mesh_peers(boot), 15,
             what="thawed trainer back in the bootstrap's connections and mesh")
    print(f"\nSIGSTOP: connections closed {t_dropped:.1f} s after the stop (bound {DROP_S:.0f} s); "
          f"back in the bootstrap's mesh {time.monotonic() - t_cont:.1f} s after SIGCONT")


def _pubsub_views(s: Swarm, frozen: str) -> dict[str, object]:
    """Each node's pubsub view of its peers, and the frozen trainer's directory rows (for
    failure messages)."""
    import httpx

    out: dict[str, object] = {}
    for node in s.nodes:
        try:
            status = httpx.get(f"{node.api}/status", timeout=5).json()
            rows = httpx.get(f"{node.api}/api/v1/peers", timeout=5).json()["directory"]
        except httpx.HTTPError as exc:
            out[node.role + node.peer_id[-4:]] = repr(exc)
            continue
        out[f"{node.role}-{node.peer_id[-4:]}"] = {
            "peers": {p[-4:]: v for p, v in status["gossip"].get("peers", {}).items()},
            "stats": {k: v for k, v in status["stats"].items() if "drop" in k or "reset" in k or "stuck" in k
                      or "duplicate_conn" in k or "dials" in k},
            "frozen_row": [r for r in rows if r["peer_id"] == frozen]}
    return out


def _mesh_peers(node) -> set[str]:  # type: ignore[no-untyped-def]
    """Every peer in ``node``'s gossipsub mesh, all topics together."""
    out = node.command("mesh")
    assert out["status"] == "ok", out
    return {p for peers in out["mesh"].values() for p in peers}


def test_bootstrap_restart_with_same_key(fresh_swarm: Swarm) -> None:
    s = fresh_swarm
    old = s.bootstrap
    listen = "/ip4/127.0.0.1/tcp/" + old.addr.split("/")[4]
    old.popen.send_signal(signal.SIGKILL)
    old.popen.wait(5)
    time.sleep(1.0)
    s.bootstrap = start_node("bootstrap", old.home, listen=listen, extra_args=HEARTBEAT)
    assert s.bootstrap.peer_id == old.peer_id  # same key file -> same identity
    t0 = time.monotonic()
    expected = {n.peer_id: n.role.upper() for n in s.nodes}
    for node in s.nodes:
        wait_for(lambda node=node: bootmesh_roles(node) == expected, 10, what=f"{node.role} back in bootmesh")
    assert time.monotonic() - t0 < 10
