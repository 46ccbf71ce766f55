"""Short-lived peers for the gossip health tests: N fedswarm nodes in one OS process.

    python gossip_churn_peer.py BOOTSTRAP_MULTIADDR HOME N

Starts N trainer-role nodes (each subscribes to the market and directory topics), prints
``ready <peer id> ...`` once every one of them has heard the bootstrap's mesh summary, then
runs until SIGTERM (every node closes its host: a clean departure) or SIGKILL (abrupt: the
bootstrap sees the connections reset). One process for N peers keeps the churn cheap.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import trio

from fedswarm.identity import load_identity
from fedswarm.p2p.node import Node
from fedswarm.protocol.messages import Role


async def main(bootstrap: str, home: Path, count: int) -> None:
    # The handler is in place before "ready": a SIGTERM right after it must close cleanly.
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nodes = [Node(load_identity(home / f"peer{i}"), Role.TRAINER, bootstrap=[bootstrap],
                          heartbeat_interval=0.5, peer_timeout=3.0) for i in range(count)]
            for node in nodes:
                await nursery.start(node.serve)
            with trio.fail_after(60):
                while not all(n.last_summary is not None for n in nodes):
                    await trio.sleep(0.05)
            print("ready", *(n.peer_id for n in nodes), flush=True)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]))
