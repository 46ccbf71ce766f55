"""A js-libp2p 3.x peer (tools/js-peer: TCP, Noise, yamux, gossipsub with strict signing,
identify, ping) joins a running fedswarm bootstrap: it hears the directory, is heard in turn, and
its `/fedswarm/rpc/1` requests are answered. Then 20 such peers come and go (some killed -9) and
the bootstrap's gossipsub stays healthy: heartbeat ticking, replay bounded by the cache window.

Needs node and `make tools` (npm ci into .tools/js-peer); skips otherwise. Runtime ~45 s: one
peer ~2 s, 20 in waves of 5 ~20-25 s, then a wait until the bootstrap is past py-libp2p's first
rescoring (30 s), when the old stall began."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fedswarm.roles.launcher import NodeProcess, start_node
from fedswarm.tools import tools_dir

pytestmark = pytest.mark.slow

PEER_SOURCE = Path(__file__).resolve().parents[2] / "tools" / "js-peer"
LATE_S = 36.0  # bootstrap age at the health check: past py-libp2p's rescoring at 30 s
MAX_REPLAYED, MAX_AGE_S = 12, 8.0  # ~3 s of 0.5 s summaries, with room for a loaded machine
HEARTBEAT = ["--heartbeat", "0.5", "--peer-timeout", "3"]  # as the other p2p tests' nodes


def eventually(predicate: Any, timeout: float, what: str) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.2)


def online_in_directory(node: NodeProcess, peer_id: str) -> bool:
    rows = httpx.get(f"{node.api}/api/v1/peers", timeout=10).json()["directory"]
    return any(r["peer_id"] == peer_id and r["online"] for r in rows)


@pytest.fixture(scope="module")
def js_peer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with peer.mjs next to the pinned node_modules (ESM resolves from the script)."""
    node_modules = tools_dir() / "js-peer" / "node_modules"
    if shutil.which("node") is None:
        pytest.skip("node is not installed (make setup installs it)")
    if not (node_modules / "libp2p" / "package.json").is_file():
        pytest.skip(f"the js-libp2p peer is not installed in {node_modules.parent} (run make tools)")
    run = tmp_path_factory.mktemp("js-peer")
    for name in ("peer.mjs", "node20.mjs"):
        shutil.copy(PEER_SOURCE / name, run / name)
    (run / "node_modules").symlink_to(node_modules)
    return run / "peer.mjs"


@pytest.fixture(scope="module")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    node = start_node("bootstrap", tmp_path_factory.mktemp("bootstrap"), extra_args=HEARTBEAT)
    try:
        yield node
    finally:
        node.stop()


class JsPeer:
    """One `node peer.mjs` process and the JSON events it prints."""

    def __init__(self, script: Path, bootstrap: str, leave: str = "clean") -> None:
        self.popen = subprocess.Popen(["node", str(script), "--bootstrap", bootstrap, "--leave", leave],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.events: list[dict[str, Any]] = []

    def read_until(self, event: str, timeout: float = 60.0) -> dict[str, Any]:
        """Events up to the first ``event``; fails on an error event or an early exit."""
        deadline = time.monotonic() + timeout
        assert self.popen.stdout is not None
        while time.monotonic() < deadline:
            line = self.popen.stdout.readline()
            if not line:
                raise AssertionError(f"js peer exited ({self.popen.wait(5)}) before {event!r}: {self.events[-3:]}")
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue  # a library's stray console output
            self.events.append(ev)
            if ev["event"] == "error":
                raise AssertionError(f"js peer failed: {ev['error'][:2000]}")
            if ev["event"] == event:
                return ev
        raise AssertionError(f"js peer: no {event!r} within {timeout} s")

    def of(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)


def status(node: NodeProcess) -> dict[str, Any]:
    return httpx.get(f"{node.api}/status", timeout=10).json()


def test_js_peer_joins_hears_the_directory_calls_rpc_and_leaves(js_peer: Path, bootstrap: NodeProcess) -> None:
    # Execute: one peer, start to clean stop.
    peer = JsPeer(js_peer, bootstrap.addr)
    try:
        started = peer.read_until("started")
        peer.read_until("stopped")
        assert peer.popen.wait(10) == 0
    finally:
        peer.kill()
    me = started["peer_id"]

    # Assert: identify told it our protocols, ping answered...
    ping = peer.of("ping")[0]
    assert ping["rtt_ms"] >= 0
    assert {"/fedswarm/rpc/1", "/meshsub/1.1.0", "/ipfs/ping/1.0.0"} <= set(ping["protocols"])
    # ...the directory came as signed mesh summaries from the bootstrap, listing it...
    assert peer.of("directory")[0]["bootstrap_listed"] is True
    messages = peer.of("message")
    assert messages and all(m["signed"] and m["from"] == bootstrap.peer_id and m["type"] == "mesh_summary"
                            for m in messages)
    # ...its own heartbeat reached the bootstrap and came back in a summary (gossip both ways)...
    assert peer.of("listed")[0]["role"] == "trainer"
    # ...and both RPCs got valid answers.
    rpc = {e["request"]: e for e in peer.of("rpc")}
    assert rpc["ping"]["ok"] and rpc["ping"]["reply"]["role"] == "bootstrap"
    assert rpc["mesh_request"]["ok"] and rpc["mesh_request"]["peers"] >= 2
    # The bootstrap saw nothing invalid, and lets the peer go.
    st = status(bootstrap)
    assert st["stats"].get("pubsub_invalid", 0) == 0 and st["stats"]["rpc_served"] >= 2
    assert not any(st["limits"]["counters"].get(k, 0) for k in ("gossip_invalid", "rpc_bad_request", "rpc_bad_frame")), st["limits"]
    eventually(lambda: me not in bootstrap.command("peers")["peers"], 10, "js peer disconnected")
    eventually(lambda: not online_in_directory(bootstrap, me), 10, "js peer offline in the directory")


def test_20_js_peers_come_and_go_and_the_bootstrap_stays_healthy(js_peer: Path, bootstrap: NodeProcess) -> None:
    # Execute: 4 waves of 5 peers; in each wave 3 stop cleanly and 2 are killed -9 once done.
    gone: set[str] = set()
    for wave in range(4):
        peers = [JsPeer(js_peer, bootstrap.addr, leave="hang" if i >= 3 else "clean") for i in range(5)]
        try:
            for p in peers:
                gone.add(p.read_until("started")["peer_id"])
                p.read_until("done")
            for p in peers[3:]:
                p.kill()
            for p in peers[:3]:
                p.read_until("stopped")
                assert p.popen.wait(10) == 0
        finally:
            for p in peers:
                p.kill()
        assert all(e["ok"] for p in peers for e in p.of("rpc")), f"wave {wave}: an RPC failed"

    # Assert: past the age where the heartbeat used to slow down, it ticks at 1 s...
    time.sleep(max(0.0, LATE_S - status(bootstrap)["uptime_s"]))
    first = status(bootstrap)["gossip"]
    time.sleep(4.0)
    second = status(bootstrap)["gossip"]
    assert second["interval_s"] == 1 and second["forced_shifts"] == 0, second
    assert second["heartbeats"] - first["heartbeats"] >= 2 and second["since_heartbeat_s"] < 4.0, (first, second)
    # ...a fresh peer is replayed a few seconds of the directory, no more...
    fresh = JsPeer(js_peer, bootstrap.addr)
    try:
        subscribed = fresh.read_until("subscribed")["t"]
        fresh.read_until("stopped")
    finally:
        fresh.kill()
    summaries = [m for m in fresh.of("message") if m["type"] == "mesh_summary"]
    older = [m for m in summaries if m["at"] < subscribed]
    max_age = max(m["t"] - m["at"] for m in summaries)
    print(f"\nfresh js peer after 20 came and went: {len(older)} replayed, oldest {max_age:.1f} s; gossip {second}")
    assert len(older) <= MAX_REPLAYED and max_age <= MAX_AGE_S, summaries
    # ...and none of the 20 is left in its connections or its mesh.
    def departed_dropped() -> bool:
        peers = set(bootstrap.command("peers")["peers"])
        mesh = {p for ps in bootstrap.command("mesh")["mesh"].values() for p in ps}
        return not (gone & (peers | mesh))
    eventually(departed_dropped, 15, "departed js peers dropped")
