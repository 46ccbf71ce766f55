"""A real swarm on loopback: bootstrap + client + 3 trainers, each its own OS process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fedswarm.roles.launcher import NodeProcess, start_node, start_nodes

HEARTBEAT = ["--heartbeat", "0.5", "--peer-timeout", "3"]


class Swarm:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.bootstrap: NodeProcess | None = None
        self.others: list[NodeProcess] = []

    @property
    def nodes(self) -> list[NodeProcess]:
        return [n for n in [self.bootstrap, *self.others] if n is not None]

    @property
    def trainers(self) -> list[NodeProcess]:
        return [n for n in self.others if n.role == "trainer"]

    @property
    def client(self) -> NodeProcess:
        return next(n for n in self.others if n.role == "client")

    def start(self, trainers: int = 3) -> None:
        self.bootstrap = start_node("bootstrap", self.root / "bootstrap", extra_args=HEARTBEAT)
        specs = [("client", self.root / "client", {"bootstrap": self.bootstrap.addr, "extra_args": HEARTBEAT})]
        specs += [("trainer", self.root / f"trainer{i}", {"bootstrap": self.bootstrap.addr, "extra_args": HEARTBEAT})
                  for i in range(trainers)]
        self.others = start_nodes(specs)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    s = Swarm(tmp_path_factory.mktemp("swarm"))
    try:
        s.start()
        yield s
    finally:
        s.stop()


def bootmesh_roles(node: NodeProcess) -> dict[str, str]:
    """peer id -> role in the node's bootmesh (all topics together)."""
    out = node.command("bootmesh")
    assert out["status"] == "ok", out
    return {row["peer_id"]: row["role"] for rows in out["bootmesh"].values() for row in rows}


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except (httpx.HTTPError, KeyError) as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout} s (last: {last!r})")


async def wait_until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    """In-process tests (trio): poll ``predicate`` until true; TooSlowError after ``timeout``."""
    import trio

    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)


def trainer_online(observer: NodeProcess, peer_id: str) -> bool | None:
    """Whether ``observer``'s directory lists ``peer_id`` as online (None if absent)."""
    rows = httpx.get(f"{observer.api}/api/v1/peers", timeout=5).json()["directory"]
    for row in rows:
        if row["peer_id"] == peer_id:
            return row["online"]
    return None
