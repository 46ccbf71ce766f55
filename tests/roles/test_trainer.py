"""The trainer role end to end: a devnet, a bootstrap and trainer nodes as real processes; the
test itself plays the job's client with an in-process Node and the real store, ledger and
audit log (nothing faked).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import trio

from fedswarm.crypto import (
    decrypt_from_box,
    derive_chunk_key,
    encrypt_bytes,
    new_job_secret,
    seal_key,
    sha256_bytes,
)
from fedswarm.devnet import Devnet, ensure_funded
from fedswarm.examples import example_spec
from fedswarm.identity import Identity, load_identity
from fedswarm.learning.dataset import PreparedDataset, prepare_dataset
from fedswarm.learning.train import initial_state, parse_model_spec
from fedswarm.learning.weights import layout_of, load_weights_bytes, save_weights_bytes
from fedswarm.ledger.audit_factory import make_audit_log
from fedswarm.ledger.contract import UnitStatus
from fedswarm.ledger.evm import job_id_from
from fedswarm.ledger.factory import make_ledger
from fedswarm.market.bids import verify_bid
from fedswarm.p2p.node import Node, RpcError
from fedswarm.protocol.job import (
    Ack,
    Bid,
    BidAck,
    ChunkRef,
    JobAnnounce,
    JobFinished,
    UnitAccepted,
    UnitDone,
    UnitFailed,
    WorkUnit,
)
from fedswarm.protocol.messages import Role
from fedswarm.protocol.topics import MARKET_TOPIC, job_topic
from fedswarm.roles.launcher import NodeProcess, start_node, start_nodes
from fedswarm.storage.factory import make_object_store

pytestmark = pytest.mark.slow

HEARTBEAT = ["--heartbeat", "0.5", "--peer-timeout", "4"]
PRICE = 10**15
SETTLE_WINDOW = 4  # seconds: short, so the claim of an unsettled unit shows up in the test


# -- processes (module scope) ------------------------------------------------------------------


class Swarm:
    def __init__(self, root: Path, devnet: Devnet, bootstrap: NodeProcess, trainer: NodeProcess,
                 lazy: NodeProcess) -> None:
        self.root, self.devnet, self.bootstrap, self.trainer, self.lazy = root, devnet, bootstrap, trainer, lazy


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    root = tmp_path_factory.mktemp("trainer")
    devnet = Devnet.start(root / "devnet")
    procs: list[NodeProcess] = []
    try:
        common = ["--devnet-home", str(devnet.home), *HEARTBEAT]
        boot = start_node("bootstrap", root / "bootstrap", extra_args=common)
        procs.append(boot)
        trainer, lazy = start_nodes([
            ("trainer", root / "trainer", {"bootstrap": boot.addr,
                                           "extra_args": [*common, "--price-wei", str(PRICE), "--no-gpu"]}),
            ("trainer", root / "lazy", {"bootstrap": boot.addr, "fault": "lazy",
                                        "extra_args": [*common, "--price-wei", str(PRICE), "--no-gpu",
                                                       "--worker-idle", "3"]}),
        ])
        procs += [trainer, lazy]
        swarm = Swarm(root, devnet, boot, trainer, lazy)
        yield swarm
        procs.append(swarm.lazy)  # a test may have replaced (restarted) it
    finally:
        for p in reversed(procs):
            p.stop()  # safe on an already stopped process
        devnet.stop()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[PreparedDataset, dict[str, Any]]:
    from sklearn.datasets import load_breast_cancer

    tmp = tmp_path_factory.mktemp("data")
    data = load_breast_cancer()
    csv = tmp / "bc.csv"
    header = ",".join([f"f{i}" for i in range(data.data.shape[1])] + ["target"])
    rows = np.column_stack([data.data, data.target])
    np.savetxt(csv, rows, delimiter=",", header=header, comments="", fmt="%.6g")
    prepared = prepare_dataset(csv, tmp / "chunks", label="target", num_chunks=4, seed=1)
    return prepared, example_spec("breast_cancer")


# -- the client side, played by the test -------------------------------------------------------


class Client:
    """A minimal job client: in-process node, real store, ledger and audit log."""

    def __init__(self, swarm: Swarm, home: Path) -> None:
        self.swarm = swarm
        self.settings = swarm.devnet.settings()
        self.identity: Identity = load_identity(home)
        ensure_funded(self.settings, self.identity.address)
        self.ledger = make_ledger(self.settings, self.identity)
        self.store = make_object_store(self.settings)
        self.audit = make_audit_log(self.settings, self.identity)
        self.node = Node(self.identity, Role.CLIENT, bootstrap=[swarm.bootstrap.addr], heartbeat_interval=0.5)
        self.bids: dict[str, Bid] = {}
        self.bid_peers: dict[str, str] = {}
        self.send_done, self.recv_done = trio.open_memory_channel[tuple[str, Any]](64)
        self.node.on_rpc(Bid, self._on_bid)
        self.node.on_rpc(UnitDone, self._on_unit_msg)
        self.node.on_rpc(UnitFailed, self._on_unit_msg)

    async def _on_bid(self, peer: str, bid: Bid, blob: bytes | None) -> tuple[Any, None]:
        self.bids[peer] = bid
        return BidAck(job_id=bid.job_id, received=True), None

    async def _ignore(self, sender: str, msg: Any) -> None:
        return None

    async def _on_unit_msg(self, peer: str, msg: Any, blob: bytes | None) -> tuple[Any, None]:
        await self.send_done.send((peer, msg))
        return Ack(), None

    async def wait_online(self, peers: list[str], timeout: float = 60) -> None:
        with trio.fail_after(timeout):
            while not all((r := self.node.directory.get(p)) and self.node.directory.is_online(r) for p in peers):
                await trio.sleep(0.2)

    async def open_job(self, job_id: str, trainers: list[NodeProcess], settle_window: int) -> str:
        """Announce, collect the trainers' bids, fund the job and register them. Returns the
        audit topic."""
        topic = await trio.to_thread.run_sync(self.audit.create_topic, f"job {job_id}")
        await self.node.subscribe(job_topic(job_id), self._ignore)  # so our publishes find a mesh
        await self.wait_online([t.peer_id for t in trainers])
        ann = JobAnnounce(
            job_id=job_id, client_peer_id=self.node.peer_id, trainers=len(trainers), standby=0,
            rounds=1, price_cap_wei=PRICE * 2, model_params=1000, train_rows=400,
            bid_deadline=time.time() + 60, chain_id=self.ledger.get_chain_id(),
            contract=self.ledger.contract_address, audit_topic=topic, client_addrs=self.node.addrs,
        )
        with trio.fail_after(60):
            # Re-announce until every trainer bid: the gossip mesh may still be forming.
            while not all(t.peer_id in self.bids for t in trainers):
                await self.node.publish(MARKET_TOPIC, ann)
                with trio.move_on_after(2):
                    while not all(t.peer_id in self.bids for t in trainers):
                        await trio.sleep(0.1)
        chain_job = job_id_from(job_id)
        addrs = [self.bids[t.peer_id].address for t in trainers]
        await trio.to_thread.run_sync(lambda: self.ledger.create_job(
            chain_job, b"\x01" * 32, int(time.time()) + 3600, settle_window, PRICE * 10 * len(trainers)))
        await trio.to_thread.run_sync(lambda: self.ledger.add_trainers(
            chain_job, addrs, [PRICE] * len(addrs), [10] * len(addrs)))
        return topic

    def upload_unit(self, job_id: str, round_: int, unit: int, trainer_box: str, data: PreparedDataset,
                    spec: dict[str, Any], topic: str, *, chunk_ids: list[int] | None = None,
                    corrupt_hash: bool = False, deadline_s: float = 120) -> tuple[WorkUnit, bytes]:
        """Encrypt + upload the global weights and chunks; the WorkUnit and the global plaintext."""
        secret = new_job_secret()
        glob = save_weights_bytes(initial_state(parse_model_spec(spec), seed=3))
        gkey = os.urandom(32)
        genc = encrypt_bytes(glob, gkey, job_id, f"global-{round_}")
        gname = f"{job_id}/global-r{round_}-u{unit}"
        self.store.put(gname, genc)
        refs = []
        for i in chunk_ids or [0, 1]:
            chunk = data.chunks[i]
            key = derive_chunk_key(secret, job_id, chunk.chunk_id)
            enc = encrypt_bytes(chunk.path.read_bytes(), key, job_id, chunk.chunk_id)
            name = f"{job_id}/{chunk.chunk_id}"
            self.store.put(name, enc)
            digest = sha256_bytes(enc)
            if corrupt_hash:
                digest = ("0" if digest[0] != "0" else "1") + digest[1:]
            refs.append(ChunkRef(chunk_id=chunk.chunk_id, url=self.store.presign_get(name, 600),
                                 sha256=digest, size=len(enc), rows=chunk.rows,
                                 sealed_key=base64.b64encode(seal_key(key, trainer_box)).decode()))
        wu = WorkUnit(
            job_id=job_id, round=round_, unit=unit, model=spec, preprocessing=data.preprocessing,
            global_url=self.store.presign_get(gname, 600), global_sha256=sha256_bytes(genc),
            global_size=len(genc), global_sealed_key=base64.b64encode(seal_key(gkey, trainer_box)).decode(),
            chunks=refs, epochs=2, batch_size=32, lr=0.005, seed=7, deadline=time.time() + deadline_s,
            put_url=self.store.presign_put(self.update_key(job_id, round_, unit), 600, 10 << 20),
            put_max_bytes=10 << 20, client_box_public=self.identity.box_public_hex, audit_topic=topic,
        )
        return wu, glob

    @staticmethod
    def update_key(job_id: str, round_: int, unit: int) -> str:
        return f"{job_id}/updates/r{round_}-u{unit}"

    async def next_unit_msg(self, timeout: float = 120) -> tuple[str, Any]:
        with trio.fail_after(timeout):
            return await self.recv_done.receive()

    def fetch_update(self, job_id: str, round_: int, unit: int) -> tuple[bytes, bytes]:
        """(encrypted object, decrypted safetensors) of an update."""
        buf = io.BytesIO()
        self.store.get(self.update_key(job_id, round_, unit), buf)
        enc = buf.getvalue()
        return enc, decrypt_from_box(enc, self.identity.box_key, job_id, f"update-{round_}-{unit}")

    def audit_states(self, topic: str, peer: str) -> list[dict[str, Any]]:
        return [m.json() for m in self.audit.iter_messages(topic) if m.json().get("peer") == peer]

    async def wait_audit(self, topic: str, peer: str, state: str, timeout: float = 60) -> list[dict[str, Any]]:
        with trio.fail_after(timeout):
            while True:
                msgs = await trio.to_thread.run_sync(self.audit_states, topic, peer)
                if any(m["state"] == state for m in msgs):
                    return msgs
                await trio.sleep(0.5)


async def _with_client(swarm: Swarm, home: Path, body: Any) -> None:
    client = await trio.to_thread.run_sync(Client, swarm, home)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.node.serve)
        try:
            await body(client)
        finally:
            nursery.cancel_scope.cancel()


def _in_order(states: list[str], expected: list[str]) -> bool:
    it = iter(states)
    return all(any(s == e for s in it) for e in expected)


# -- tests -------------------------------------------------------------------------------------


async def test_unit_trained_committed_delivered_and_claimed(swarm: Swarm, dataset, tmp_path: Path) -> None:
    data, spec = dataset
    trainer = swarm.trainer
    job_id = "job-main"

    async def body(client: Client) -> None:
        # Prepare: a job the trainer bids on.
        topic = await client.open_job(job_id, [trainer], SETTLE_WINDOW)
        bid = client.bids[trainer.peer_id]
        verify_bid(bid, trainer.peer_id, job_id)  # raises on a bad signature
        assert bid.address == trainer.info["address"] and bid.price_wei == PRICE
        wu, glob = client.upload_unit(job_id, 0, 0, bid.box_public, data, spec, topic)

        # Execute
        reply, _ = await client.node.request(trainer.peer_id, wu, expect=(UnitAccepted,))
        peer, done = await client.next_unit_msg()

        # Assert: UnitDone matches the chain, the update decrypts to trained weights.
        assert isinstance(reply, UnitAccepted) and (reply.round, reply.unit) == (0, 0)
        assert peer == trainer.peer_id and isinstance(done, UnitDone), done
        onchain = await trio.to_thread.run_sync(client.ledger.unit, job_id_from(job_id), 0, 0)
        assert onchain.status == UnitStatus.COMMITTED
        assert onchain.update_hash.hex() == done.update_sha256
        assert onchain.trainer.lower() == bid.address.lower()
        enc, plain = client.fetch_update(job_id, 0, 0)
        assert hashlib.sha256(enc).hexdigest() == done.update_sha256 and len(enc) == done.update_size
        glob_state = load_weights_bytes(glob)
        upd = load_weights_bytes(plain, layout_of(glob_state))
        delta = sum(float(np.abs(upd[k] - glob_state[k]).sum()) for k in glob_state)
        assert delta > 1e-3, "training did not change the weights"
        assert done.num_samples == wu.epochs * sum(data.chunks[i].rows for i in (0, 1))  # samples seen
        assert done.train_loss is not None and np.isfinite(done.train_loss)

        msgs = await client.wait_audit(topic, trainer.peer_id, "delivered")
        states = [m["state"] for m in msgs]
        assert _in_order(states, ["joined", "downloading", "training", "uploaded", "committed", "delivered"]), states
        assert all(m["job"] == job_id and m["role"] == "trainer" and m["v"] == 1 for m in msgs)

        # A client that never settles: after the settle window the trainer claims and withdraws.
        await client.wait_audit(topic, trainer.peer_id, "claimed", timeout=60)
        onchain = await trio.to_thread.run_sync(client.ledger.unit, job_id_from(job_id), 0, 0)
        assert onchain.status == UnitStatus.CLAIMED
        msgs = await client.wait_audit(topic, trainer.peer_id, "withdrawn", timeout=30)
        assert [m["amount_wei"] for m in msgs if m["state"] == "withdrawn"] == [str(PRICE)]
        assert await trio.to_thread.run_sync(client.ledger.pending, bid.address) == 0

        # The REST view lists the unit without its work order.
        import httpx

        units = httpx.get(f"{trainer.api}/api/v1/trainer/units", timeout=10).json()["units"]
        mine = [u for u in units if u["job_id"] == job_id]
        assert mine and mine[0]["state"] == "claimed" and "work" not in mine[0]

    await _with_client(swarm, tmp_path / "client", body)


async def test_forbidden_bad_hash_and_lazy(swarm: Swarm, dataset, tmp_path: Path) -> None:
    data, spec = dataset
    trainer, lazy = swarm.trainer, swarm.lazy
    job_id = "job-faults"

    async def body(client: Client) -> None:
        topic = await client.open_job(job_id, [trainer, lazy], 3600)
        box = client.bids[trainer.peer_id].box_public

        # A work unit from a peer that is not the job's client is refused.
        intruder = Node(load_identity(tmp_path / "intruder"), Role.CLIENT,
                        bootstrap=[swarm.bootstrap.addr], heartbeat_interval=0.5)
        async with trio.open_nursery() as nursery:
            await nursery.start(intruder.serve)
            with trio.fail_after(60):  # learn the trainer's address from its heartbeats
                while not ((r := intruder.directory.get(trainer.peer_id)) and intruder.directory.is_online(r)):
                    await trio.sleep(0.2)
            wu, _ = client.upload_unit(job_id, 0, 5, box, data, spec, topic)
            with pytest.raises(RpcError) as err:
                await intruder.request(trainer.peer_id, wu, timeout=20)
            assert err.value.code == "forbidden"
            nursery.cancel_scope.cancel()

        # A bad chunk hash: accepted, then given back with a reason; nothing committed.
        bad, _ = client.upload_unit(job_id, 0, 1, box, data, spec, topic, corrupt_hash=True)
        await client.node.request(trainer.peer_id, bad, expect=(UnitAccepted,))
        peer, failed = await client.next_unit_msg()
        assert peer == trainer.peer_id and isinstance(failed, UnitFailed), failed
        assert failed.unit == 1 and "sha256" in failed.reason
        onchain = await trio.to_thread.run_sync(client.ledger.unit, job_id_from(job_id), 0, 1)
        assert onchain.status == UnitStatus.NONE
        msgs = await client.wait_audit(topic, trainer.peer_id, "error")
        assert any(m["state"] == "error" and m["unit"] == 1 and m["reason"] for m in msgs)

        # ... and the trainer keeps serving.
        good, _ = client.upload_unit(job_id, 0, 2, box, data, spec, topic, chunk_ids=[2])
        await client.node.request(trainer.peer_id, good, expect=(UnitAccepted,))
        # The same unit twice (an RPC retry) is answered the same way and worked on once.
        again, _ = await client.node.request(trainer.peer_id, good, timeout=20)
        assert isinstance(again, UnitAccepted) and again.unit == 2
        peer, done = await client.next_unit_msg()
        assert isinstance(done, UnitDone) and done.unit == 2, done

        # The lazy trainer hands back the global weights unchanged (and still commits).
        lbox = client.bids[lazy.peer_id].box_public
        lwu, glob = client.upload_unit(job_id, 0, 3, lbox, data, spec, topic)
        await client.node.request(lazy.peer_id, lwu, expect=(UnitAccepted,))
        peer, ldone = await client.next_unit_msg()
        assert peer == lazy.peer_id and isinstance(ldone, UnitDone), ldone
        _, plain = client.fetch_update(job_id, 0, 3)
        assert plain == glob
        onchain = await trio.to_thread.run_sync(client.ledger.unit, job_id_from(job_id), 0, 3)
        assert onchain.update_hash.hex() == ldone.update_sha256

        # JobFinished on the job topic: the units are settled, so the trainers withdraw.
        await trio.to_thread.run_sync(lambda: client.ledger.settle(
            job_id_from(job_id), 0, [2, 3], [True, False], [b"\x00" * 32, b"\x02" * 32]))
        await client.node.publish(job_topic(job_id), JobFinished(job_id=job_id, state="done"))
        await client.wait_audit(topic, trainer.peer_id, "withdrawn", timeout=60)

    await _with_client(swarm, tmp_path / "client", body)


def _workers(node: NodeProcess) -> list[psutil.Process]:
    """The node's live training-worker children."""
    out = []
    for child in psutil.Process(node.popen.pid).children():
        with contextlib.suppress(psutil.Error):
            if child.status() != psutil.STATUS_ZOMBIE and "fedswarm.learning.worker" in child.cmdline():
                out.append(child)
    return out


async def test_worker_runs_only_while_work_is_in_sight(swarm: Swarm, tmp_path: Path) -> None:
    """``--worker-idle 3``: the lazy trainer's worker (torch) stops a few seconds after its last
    unit, and its next bid starts a new one before any unit arrives."""
    lazy = swarm.lazy
    with trio.fail_after(30):
        while _workers(lazy):
            await trio.sleep(0.5)

    async def body(client: Client) -> None:
        await client.open_job("job-idle", [lazy], 3600)
        with trio.fail_after(60):
            while not _workers(lazy):
                await trio.sleep(0.5)

    await _with_client(swarm, tmp_path / "client", body)
    # The trainer with the default (120 s) keeps its worker warm between units.
    assert _workers(swarm.trainer)


async def test_killed_trainer_resumes_its_unit(swarm: Swarm, dataset, tmp_path: Path) -> None:
    """SIGKILL right after UnitAccepted; the restarted trainer (same home, new port) logs
    ``restarted``, finishes the unit and tells the client. Runs last: it replaces a process."""
    data, spec = dataset
    victim = swarm.lazy
    job_id = "job-restart"

    async def body(client: Client) -> None:
        topic = await client.open_job(job_id, [victim], 3600)
        box = client.bids[victim.peer_id].box_public
        wu, glob = client.upload_unit(job_id, 0, 0, box, data, spec, topic, deadline_s=180)
        await client.node.request(victim.peer_id, wu, expect=(UnitAccepted,))
        victim.popen.kill()  # SIGKILL: no cleanup of any kind
        victim.popen.wait(10)
        argv_extra = ["--devnet-home", str(swarm.devnet.home), *HEARTBEAT, "--price-wei", str(PRICE), "--no-gpu"]
        swarm.lazy = await trio.to_thread.run_sync(lambda: start_node(
            "trainer", victim.home, bootstrap=swarm.bootstrap.addr, extra_args=argv_extra, fault="lazy"))
        peer, done = await client.next_unit_msg(timeout=150)
        assert peer == victim.peer_id and isinstance(done, UnitDone) and done.unit == 0, done
        onchain = await trio.to_thread.run_sync(client.ledger.unit, job_id_from(job_id), 0, 0)
        assert onchain.update_hash.hex() == done.update_sha256
        msgs = await client.wait_audit(topic, victim.peer_id, "delivered")
        assert "restarted" in [m["state"] for m in msgs]

    await _with_client(swarm, tmp_path / "client", body)
