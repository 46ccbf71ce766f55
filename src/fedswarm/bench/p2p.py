"""`fedswarm bench p2p`: what the network layer costs on this machine.

Measures (all on 127.0.0.1):

- idle RSS of a bootstrap, a client and a trainer process (psutil, after they settle);
- time for a freshly spawned trainer to appear in the bootmesh (from spawn and from ready);
- RPC latency between two in-process nodes: :meth:`Node.request` (one new yamux stream per
  request, the way every fedswarm RPC goes) and ping-pong frames on one reused stream (a tiny
  echo protocol registered only here, because the node's RPC handler serves one request per
  stream);
- pubsub latency one hop (A-B connected) and two hops (A-B-C, A and C never connect, so B relays).

The in-process nodes share one trio loop and one core: latencies include that scheduling.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from fedswarm.p2p.framing import FrameReader, pack_frame
from fedswarm.p2p.node import Node
from fedswarm.protocol.messages import Chat, Ping, Role

ECHO_PROTOCOL = "/fedswarm/bench-echo/1.0.0"
BENCH_TOPIC = "fedswarm/bench/latency"
HEARTBEAT = ["--heartbeat", "0.5", "--peer-timeout", "3"]


def _stats_ms(samples: list[float]) -> dict[str, float]:
    """Median, p90, min and max of ``samples`` (seconds) in milliseconds."""
    s = sorted(samples)
    p90 = s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]
    return {"median_ms": statistics.median(s) * 1e3, "p90_ms": p90 * 1e3, "min_ms": s[0] * 1e3,
            "max_ms": s[-1] * 1e3, "n": len(s)}


class _ChainNode(Node):
    """A node that dials only the peers it is told to (so A-B-C stays a chain).

    The normal reconnect loop dials every online peer it hears of; for the two-hop measurement
    A must reach C only through B.
    """

    allowed: set[str]

    async def _dial(self, peer_id: str, addrs: list[str]) -> None:
        if peer_id in getattr(self, "allowed", set()):
            await super()._dial(peer_id, addrs)


async def _echo_handler(stream: Any) -> None:
    # Echo frames until the peer closes; nothing may escape a libp2p stream handler.
    reader = FrameReader(stream, 30.0)
    try:
        while True:
            frame = await reader.read_frame()
            await stream.write(pack_frame(frame))
    except Exception:
        with contextlib.suppress(Exception):
            await stream.reset()


async def _wait(pred: Any, timeout: float, what: str) -> None:
    with trio.move_on_after(timeout):
        while not pred():
            await trio.sleep(0.05)
        return
    raise RuntimeError(f"{what} did not happen within {timeout:.0f} s")


async def _in_process(work: Path, quick: bool) -> dict[str, Any]:
    """RPC and pubsub latencies among three in-process nodes A, B, C."""
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID

    from fedswarm.identity import load_identity

    n_rpc = 30 if quick else 200
    n_pub = 15 if quick else 100
    out: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        b = _ChainNode(load_identity(work / "b"), Role.BOOTSTRAP, heartbeat_interval=0.5)
        await nursery.start(b.serve)
        a = _ChainNode(load_identity(work / "a"), Role.CLIENT, bootstrap=[b.addrs[0]], heartbeat_interval=0.5)
        c = _ChainNode(load_identity(work / "c"), Role.TRAINER, bootstrap=[b.addrs[0]], heartbeat_interval=0.5)
        a.allowed, c.allowed, b.allowed = {b.peer_id}, {b.peer_id}, set()
        await nursery.start(a.serve)
        await nursery.start(c.serve)
        await _wait(lambda: b.peer_id in a.connected_peers() and b.peer_id in c.connected_peers(), 30,
                    "A and C connecting to B")
        b.host.set_stream_handler(TProtocol(ECHO_PROTOCOL), _echo_handler)
        a.remember_addrs(b.peer_id)

        # RPC, a new stream per request (what Node.request does).
        for _ in range(3):
            await a.request(b.peer_id, Ping(nonce=0))
        new_stream: list[float] = []
        for i in range(n_rpc):
            t0 = time.perf_counter()
            await a.request(b.peer_id, Ping(nonce=i))
            new_stream.append(time.perf_counter() - t0)
        out["rpc_new_stream"] = _stats_ms(new_stream)

        # One stream reused: 64-byte frames ping-ponged.
        stream = await a.host.new_stream(ID.from_base58(b.peer_id), [TProtocol(ECHO_PROTOCOL)])
        reader = FrameReader(stream, 30.0)
        payload = bytes(64)
        reused: list[float] = []
        for i in range(n_rpc + 3):
            t0 = time.perf_counter()
            await stream.write(pack_frame(payload))
            echoed = await reader.read_frame()
            if i >= 3:  # warm-up
                reused.append(time.perf_counter() - t0)
            assert echoed == payload
        await stream.close()
        out["rpc_reused_stream"] = _stats_ms(reused)

        # Pubsub: all three subscribe (B must, to relay); A publishes, B (1 hop) and C (2 hops) time it.
        sent: dict[str, float] = {}
        got: dict[str, dict[str, float]] = {"b": {}, "c": {}}

        def handler(name: str) -> Any:
            async def on(sender: str, msg: Any) -> None:
                if isinstance(msg, Chat) and msg.text in sent:
                    got[name].setdefault(msg.text, time.perf_counter() - sent[msg.text])
            return on

        async def noop(sender: str, msg: Any) -> None:
            return None

        await a.subscribe(BENCH_TOPIC, noop)
        await b.subscribe(BENCH_TOPIC, handler("b"))
        await c.subscribe(BENCH_TOPIC, handler("c"))
        # Wait until a probe crosses both hops (gossipsub grafts on its 1 s heartbeat).
        with trio.move_on_after(30):
            k = 0
            while True:
                key = f"warm-{k}"
                sent[key] = time.perf_counter()
                await a.publish(BENCH_TOPIC, Chat(text=key))
                await trio.sleep(0.3)
                if key in got["c"]:
                    break
                k += 1
        if not got["c"]:
            raise RuntimeError("pubsub messages never crossed A-B-C within 30 s")
        for i in range(n_pub):
            key = f"m-{i}"
            sent[key] = time.perf_counter()
            await a.publish(BENCH_TOPIC, Chat(text=key))
            # One message in flight at a time: latency, not throughput.
            with trio.move_on_after(5):
                while key not in got["c"] or key not in got["b"]:
                    await trio.sleep(0.001)
        one = [got["b"][k] for k in sent if k.startswith("m-") and k in got["b"]]
        two = [got["c"][k] for k in sent if k.startswith("m-") and k in got["c"]]
        out["pubsub_one_hop"] = {**_stats_ms(one), "lost": n_pub - len(one)}
        out["pubsub_two_hop"] = {**_stats_ms(two), "lost": n_pub - len(two)}
        out["chain_direct_a_c"] = c.peer_id in a.connected_peers()
        nursery.cancel_scope.cancel()
    return out


def _processes(work: Path) -> dict[str, Any]:
    """Idle RSS of real node processes and the time for a new node to reach the bootmesh."""
    import psutil

    from fedswarm.devnet import Devnet
    from fedswarm.roles.launcher import spawn_node, start_node, start_nodes, wait_ready

    nodes = []
    out: dict[str, Any] = {}
    devnet = None
    try:
        # Client and trainer nodes need the devnet's store/chain endpoints to start at all.
        devnet = Devnet.start(work / "devnet")
        dn = ["--devnet-home", str(work / "devnet")]
        boot = start_node("bootstrap", work / "bootstrap", extra_args=HEARTBEAT)
        nodes.append(boot)
        started = start_nodes([
            ("client", work / "client", {"bootstrap": boot.addr, "extra_args": [*dn, *HEARTBEAT]}),
            ("trainer", work / "trainer0", {"bootstrap": boot.addr, "extra_args": [*dn, *HEARTBEAT, "--no-gpu"]}),
        ])
        nodes += started
        client = started[0]
        time.sleep(3.0)  # let imports finish and heartbeats settle before calling it idle
        rss: dict[str, float] = {}
        for n in nodes:
            rss[n.role] = psutil.Process(n.popen.pid).memory_info().rss / 2**20
        out["idle_rss_mb"] = rss

        t_spawn = time.monotonic()
        popen, log_path = spawn_node("trainer", work / "trainer1", bootstrap=boot.addr,
                                     extra_args=[*dn, *HEARTBEAT, "--no-gpu"])
        new = wait_ready("trainer", work / "trainer1", popen, log_path)
        nodes.append(new)
        t_ready = time.monotonic()
        deadline = t_ready + 60
        seen = None
        while time.monotonic() < deadline:
            reply = client.command("bootmesh")
            rows = [r for rs in reply.get("bootmesh", {}).values() for r in rs] if reply.get("status") == "ok" else []
            if any(r.get("peer_id") == new.peer_id for r in rows):
                seen = time.monotonic()
                break
            time.sleep(0.05)
        if seen is None:
            raise RuntimeError("the new trainer did not appear in the bootmesh within 60 s")
        out["join_bootmesh_s"] = {"from_spawn": seen - t_spawn, "from_ready": seen - t_ready,
                                  "process_start": t_ready - t_spawn}
    finally:
        for n in reversed(nodes):
            n.stop()
        if devnet is not None:
            devnet.stop()
    return out


def run(workdir: Path | None = None, quick: bool = False) -> dict[str, Any]:
    """Run every p2p measurement; returns one JSON-ready dict."""
    work = Path(tempfile.mkdtemp(prefix="fedswarm-bench-p2p-", dir=workdir))
    try:
        result: dict[str, Any] = {"quick": quick}
        result.update(_processes(work / "procs"))
        result.update(trio.run(_in_process, work / "inproc", quick))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def main(args: argparse.Namespace) -> int:
    """Entry point of ``fedswarm bench p2p [--json] [--quick] [--workdir DIR]``."""
    workdir = Path(args.workdir) if getattr(args, "workdir", None) else None
    if workdir:
        workdir.mkdir(parents=True, exist_ok=True)
    result = run(workdir, bool(getattr(args, "quick", False)))
    if getattr(args, "json", False):
        print(json.dumps(result))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="fedswarm bench p2p" + (" (quick)" if result["quick"] else ""))
    table.add_column("measure")
    table.add_column("value", justify="right")
    for role, mb in result["idle_rss_mb"].items():
        table.add_row(f"idle RSS {role}", f"{mb:.0f} MB")
    j = result["join_bootmesh_s"]
    table.add_row("new node in bootmesh (from spawn / from ready)", f"{j['from_spawn']:.2f} s / {j['from_ready']:.2f} s")
    for key, label in (("rpc_new_stream", "RPC, new stream"), ("rpc_reused_stream", "RPC, reused stream"),
                       ("pubsub_one_hop", "pubsub, one hop"), ("pubsub_two_hop", "pubsub, two hops")):
        s = result[key]
        table.add_row(label, f"median {s['median_ms']:.2f} ms, p90 {s['p90_ms']:.2f} ms (n={s['n']})")
    Console().print(table)
    return 0
