"""A real bootstrap (the normal CLI) while short-lived peers join and leave, some killed -9, some
cleanly: its gossipsub heartbeat keeps ticking at 1 s and a fresh subscriber is replayed only the
message cache's window (a few seconds of each topic), not everything since the churn began.

py-libp2p rescored the network 30 s after start and then slowed the heartbeat to 30 s, so the
last measurement waits until the bootstrap is LATE_S old. Runtime ~45-50 s (most of it that wait,
filled with the churn)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

from fedswarm.identity import load_identity
from fedswarm.p2p.node import Node
from fedswarm.protocol.messages import MeshSummary, Role
from fedswarm.roles.launcher import NodeProcess, start_node

pytestmark = pytest.mark.slow

CHURN_PEER = Path(__file__).with_name("gossip_churn_peer.py")
LATE_S = 42.0  # bootstrap age at the last probe: past py-libp2p's first rescoring (30 s) + 12 s
# A 1 s heartbeat and a 3-slot window replay at most ~3 s of a topic; the bootstrap publishes
# its summary every 0.5 s. Generous for a loaded 2-core machine; the stalled heartbeat replayed
# 20-90 s (40-180 summaries) at this point.
MAX_REPLAYED, MAX_AGE_S = 12, 8.0
HEARTBEAT = ["--heartbeat", "0.5", "--peer-timeout", "3"]  # as the other p2p tests' nodes


@dataclass
class Replay:
    """What a fresh subscriber got from the bootstrap on the directory topic."""

    older: int  # summaries published before the subscriber existed
    max_age_s: float  # the oldest summary's age when it arrived
    total: int
    peer_id: str


class _Probe(Node):
    """A trainer-role node that notes each summary it hears and when."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.heard: list[tuple[float, float]] = []  # (arrived, published)

    async def _on_market(self, sender: str, msg: object) -> None:
        if isinstance(msg, MeshSummary):
            self.heard.append((time.time(), msg.at))
        await super()._on_market(sender, msg)


async def probe_replay(bootstrap: str, home: Path, listen_s: float = 2.0) -> Replay:
    """Start a fresh subscriber, listen ``listen_s`` after its first summary, stop it."""
    started = time.time()
    async with trio.open_nursery() as nursery:
        probe = _Probe(load_identity(home), Role.TRAINER, bootstrap=[bootstrap], heartbeat_interval=0.5)
        await nursery.start(probe.serve)
        with trio.fail_after(20):
            while not probe.heard:
                await trio.sleep(0.05)
        await trio.sleep(listen_s)
        nursery.cancel_scope.cancel()
    return Replay(older=sum(1 for _, at in probe.heard if at < started),
                  max_age_s=max(arrived - at for arrived, at in probe.heard), total=len(probe.heard),
                  peer_id=probe.peer_id)


def gossip(node: NodeProcess) -> dict[str, object]:
    st = httpx.get(f"{node.api}/status", timeout=10).json()
    return {**st["gossip"], "uptime_s": st["uptime_s"]}


def churn(bootstrap: NodeProcess, root: Path, rounds: int = 2, per_process: int = 4) -> set[str]:
    """Each round: two processes of peers join; one is killed -9, the other stops cleanly."""
    gone: set[str] = set()
    for r in range(rounds):
        procs = [subprocess.Popen([sys.executable, str(CHURN_PEER), bootstrap.addr, str(root / f"r{r}p{i}"),
                                   str(per_process)], stdout=subprocess.PIPE, text=True) for i in range(2)]
        try:
            for p in procs:
                line = p.stdout.readline() if p.stdout else ""
                assert line.startswith("ready "), f"churn peers did not start: {line!r}"
                gone |= set(line.split()[1:])
            procs[0].send_signal(signal.SIGKILL)
            procs[1].send_signal(signal.SIGTERM)
            assert procs[1].wait(20) == 0  # left cleanly
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait(10)
    return gone


async def test_heartbeat_ticks_and_replay_stays_bounded_after_churn(tmp_path: Path) -> None:
    # Prepare: a bootstrap; a fresh subscriber's replay right away (the baseline).
    boot = start_node("bootstrap", tmp_path / "bootstrap", extra_args=HEARTBEAT)
    try:
        early = await probe_replay(boot.addr, tmp_path / "early")

        # Execute: 16 peers come and go (8 killed -9, 8 stopped cleanly), then wait until the
        # bootstrap is past the age where py-libp2p slowed its heartbeat.
        gone = await trio.to_thread.run_sync(churn, boot, tmp_path)
        uptime = float(gossip(boot)["uptime_s"])  # type: ignore[arg-type]
        await trio.sleep(max(0.0, LATE_S - uptime))
        first = gossip(boot)
        await trio.sleep(4.0)
        second = gossip(boot)
        late = await probe_replay(boot.addr, tmp_path / "late")
        print(f"\nreplay fresh: {early}; after churn at {first['uptime_s']} s: {late}; gossip: {second}")

        # Assert: the heartbeat ticks at its configured 1 s, nothing had to be forced...
        assert second["interval_s"] == 1 and second["forced_shifts"] == 0, second
        assert int(second["heartbeats"]) - int(first["heartbeats"]) >= 2, (first, second)  # type: ignore[call-overload]
        assert float(second["since_heartbeat_s"]) < 4.0, second  # type: ignore[arg-type]
        # ...a fresh subscriber is replayed the window only, as when the bootstrap was new...
        assert late.older <= MAX_REPLAYED and late.max_age_s <= MAX_AGE_S, (early, late)
        assert dict(second["replay_window"])["fedswarm/directory/1"] <= MAX_REPLAYED  # type: ignore[call-overload]
        # ...and the departed peers (the probes too: stopped in this process, which goes on)
        # are out of its connections and its mesh.
        gone |= {early.peer_id, late.peer_id}
        def departed_dropped() -> bool:
            peers = set(boot.command("peers")["peers"])
            mesh = {p for ps in boot.command("mesh")["mesh"].values() for p in ps}
            return not (gone & (peers | mesh))
        with trio.fail_after(15):
            while not await trio.to_thread.run_sync(departed_dropped):
                await trio.sleep(0.2)
    finally:
        boot.stop()
