"""The trainer role end to end: a devnet, a bootstrap and trainer nodes as real processes; the
test itself plays the job's client and operator (settlement v2) with an in-process Node and the
real store, escrow and audit log (nothing faked): it signs the announcement and each
assignment, funds the job on the v2 escrow, answers UnitDone with a receipt (or a refusal, or a
forged receipt) and takes the update's key.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import trio
from eth_account import Account

from fedswarm.crypto import (
    decrypt_bytes,
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
from fedswarm.ledger.escrow import JobTerms, TrainerTerms, UnitStatusV2, Verdict
from fedswarm.ledger.factory import make_escrow
from fedswarm.market.bids import verify_bid
from fedswarm.market.operator import sign_announcement, sign_assignment, sign_refusal
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
    UnitReceipt,
    UnitRefused,
    UpdateKey,
    WorkUnit,
)
from fedswarm.protocol.messages import Role
from fedswarm.protocol.topics import MARKET_TOPIC, job_topic
from fedswarm.roles.launcher import NodeProcess, start_node, start_nodes
from fedswarm.roles.trainer.records import ReceiptStatus, TrainerDB
from fedswarm.storage.factory import make_object_store
from fedswarm.storage.sealed import open_key_b64

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
    """A minimal job client and operator: in-process node, real store, v2 escrow and audit log.

    ``answers[(job, round, unit)]`` says how it answers that unit's UnitDone: ``receipt``
    (default), ``refuse`` (a signed UnitRefused) or ``forge`` (a receipt signed by a stranger).
    """

    def __init__(self, swarm: Swarm, home: Path) -> None:
        self.swarm = swarm
        self.settings = swarm.devnet.settings()
        self.identity: Identity = load_identity(home)
        ensure_funded(self.settings, self.identity.address)
        self.escrow = make_escrow(self.settings, self.identity)
        self.chain_id = self.escrow.get_chain_id()
        self.store = make_object_store(self.settings)
        self.audit = make_audit_log(self.settings, self.identity)
        self.node = Node(self.identity, Role.CLIENT, bootstrap=[swarm.bootstrap.addr], heartbeat_interval=0.5)
        self.bids: dict[str, Bid] = {}
        self.job_keys: dict[str, str] = {}
        self.answers: dict[tuple[str, int, int], str] = {}
        self.keys: dict[tuple[str, int, int], bytes] = {}
        self.send_done, self.recv_done = trio.open_memory_channel[tuple[str, Any]](64)
        self.node.on_rpc(Bid, self._on_bid)
        self.node.on_rpc(UnitDone, self._on_unit_done)
        self.node.on_rpc(UnitFailed, self._on_unit_msg)
        self.node.on_rpc(UpdateKey, self._on_update_key)

    async def _on_bid(self, peer: str, bid: Bid, blob: bytes | None) -> tuple[Any, None]:
        self.bids[peer] = bid
        return BidAck(job_id=bid.job_id, received=True), None

    async def _ignore(self, sender: str, msg: Any) -> None:
        return None

    async def _on_unit_msg(self, peer: str, msg: Any, blob: bytes | None) -> tuple[Any, None]:
        await self.send_done.send((peer, msg))
        return Ack(), None

    async def _on_unit_done(self, peer: str, done: UnitDone, blob: bytes | None) -> tuple[Any, None]:
        await self.send_done.send((peer, done))
        trainer = self.bids[peer].address
        job_key = self.job_keys[done.job_id]
        answer = self.answers.get((done.job_id, done.round, done.unit), "receipt")
        if answer == "refuse":
            sig = sign_refusal(self.identity.wallet, job_key, done.round, done.unit, trainer,
                               done.update_sha256, "reassigned")
            return UnitRefused(job_id=done.job_id, round=done.round, unit=done.unit, trainer=trainer,
                               update_sha256=done.update_sha256, reason="reassigned", signature=sig), None
        signer = Account.create() if answer == "forge" else self.identity.wallet
        receipt, sig = await trio.to_thread.run_sync(lambda: self.escrow.issue_receipt(
            bytes.fromhex(job_key), done.round, done.unit, trainer, bytes.fromhex(done.update_sha256)))
        if answer == "forge":
            from fedswarm.ledger.receipts import sign_receipt

            sig = sign_receipt(receipt, self.escrow.domain(), signer)
        return UnitReceipt(job_id=done.job_id, round=done.round, unit=done.unit, job_key=job_key,
                           trainer=trainer, update_sha256=done.update_sha256, issued_at=receipt.issued_at,
                           signature="0x" + sig.hex()), None

    async def _on_update_key(self, peer: str, msg: UpdateKey, blob: bytes | None) -> tuple[Any, None]:
        self.keys[(msg.job_id, msg.round, msg.unit)] = open_key_b64(msg.sealed_key, self.identity.box_key)
        await self.send_done.send((peer, msg))
        return Ack(), None

    async def wait_online(self, peers: list[str], timeout: float = 60) -> None:
        with trio.fail_after(timeout):
            while not all((r := self.node.directory.get(p)) and self.node.directory.is_online(r) for p in peers):
                await trio.sleep(0.2)

    async def open_job(self, job_id: str, trainers: list[NodeProcess], settle_window: int, *,
                       price: int = PRICE, register: bool = True, standby: list[NodeProcess] = ()) -> str:
        """Announce (signed as the operator), collect the trainers' bids, fund the job on the v2
        escrow registering them at ``price`` (or registering a stranger instead). Returns the
        audit topic."""
        topic = await trio.to_thread.run_sync(self.audit.create_topic, f"job {job_id}")
        await self.node.subscribe(job_topic(job_id), self._ignore)  # so our publishes find a mesh
        everyone = [*trainers, *standby]
        await self.wait_online([t.peer_id for t in everyone])
        contract = self.escrow.contract_address
        ann = JobAnnounce(
            job_id=job_id, client_peer_id=self.node.peer_id, trainers=len(trainers), standby=len(standby),
            rounds=1, price_cap_wei=PRICE * 2, model_params=1000, train_rows=400,
            bid_deadline=time.time() + 60, chain_id=self.chain_id, contract=contract, audit_topic=topic,
            client_addrs=self.node.addrs, operator=self.identity.address,
            operator_sig=sign_announcement(self.identity.wallet, job_id, self.node.peer_id, self.chain_id, contract),
        )
        with trio.fail_after(60):
            # Re-announce until every trainer bid: the gossip mesh may still be forming.
            while not all(t.peer_id in self.bids and self.bids[t.peer_id].job_id == job_id for t in everyone):
                await self.node.publish(MARKET_TOPIC, ann)
                with trio.move_on_after(2):
                    while not all(t.peer_id in self.bids and self.bids[t.peer_id].job_id == job_id
                                  for t in everyone):
                        await trio.sleep(0.1)
        addrs = [self.bids[t.peer_id].address for t in everyone] if register else [Account.create().address]
        units = 10
        claim_window = await trio.to_thread.run_sync(self.escrow.min_claim_window)
        terms = JobTerms(operator=self.identity.address, deadline=int(time.time()) + 3600,
                         settle_window=settle_window, claim_window=claim_window, price_cap=PRICE * 2,
                         unit_budget=units * len(addrs))
        nonce = secrets.randbits(63)
        funded = await trio.to_thread.run_sync(lambda: self.escrow.fund(
            nonce, terms, [TrainerTerms(a, price, units) for a in addrs], price * units * len(addrs)))
        self.job_keys[job_id] = funded.job_key.hex()
        return topic

    def upload_unit(self, job_id: str, round_: int, unit: int, trainer: Bid, data: PreparedDataset,
                    spec: dict[str, Any], topic: str, *, chunk_ids: list[int] | None = None,
                    corrupt_hash: bool = False, deadline_s: float = 120) -> tuple[WorkUnit, bytes]:
        """Encrypt + upload the global weights and chunks; the signed WorkUnit for ``trainer``
        (its bid) and the global plaintext."""
        trainer_box = trainer.box_public
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
        deadline = time.time() + deadline_s
        job_key, contract = self.job_keys[job_id], self.escrow.contract_address
        sig = sign_assignment(self.identity.wallet, job_key=job_key, contract=contract, chain_id=self.chain_id,
                              round_=round_, unit=unit, trainer=trainer.address, deadline=deadline,
                              global_sha256=sha256_bytes(genc), chunk_sha256s=[r.sha256 for r in refs])
        wu = WorkUnit(
            job_id=job_id, round=round_, unit=unit, model=spec, preprocessing=data.preprocessing,
            global_url=self.store.presign_get(gname, 600), global_sha256=sha256_bytes(genc),
            global_size=len(genc), global_sealed_key=base64.b64encode(seal_key(gkey, trainer_box)).decode(),
            chunks=refs, epochs=2, batch_size=32, lr=0.005, seed=7, deadline=deadline,
            put_url=self.store.presign_put(self.update_key(job_id, round_, unit), 600, 10 << 20),
            put_max_bytes=10 << 20, client_box_public=self.identity.box_public_hex, audit_topic=topic,
            job_key=job_key, contract=contract, chain_id=self.chain_id, operator=self.identity.address,
            trainer=trainer.address, assignment_sig=sig,
        )
        return wu, glob

    @staticmethod
    def update_key(job_id: str, round_: int, unit: int) -> str:
        return f"{job_id}/updates/r{round_}-u{unit}"

    async def next_unit_msg(self, timeout: float = 120) -> tuple[str, Any]:
        with trio.fail_after(timeout):
            return await self.recv_done.receive()

    def fetch_update(self, job_id: str, round_: int, unit: int) -> tuple[bytes, bytes]:
        """(encrypted object, decrypted safetensors) of an update whose key we were given."""
        buf = io.BytesIO()
        self.store.get(self.update_key(job_id, round_, unit), buf)
        enc = buf.getvalue()
        key = self.keys[(job_id, round_, unit)]
        return enc, decrypt_bytes(enc, key, job_id, f"update-{round_}-{unit}")

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


async def test_unit_trained_receipted_delivered_and_claimed(swarm: Swarm, dataset, tmp_path: Path) -> None:
    data, spec = dataset
    trainer, standby = swarm.trainer, swarm.lazy
    job_id = "job-main"

    async def body(client: Client) -> None:
        # Prepare: a job the trainer bids on, with a standby that is never assigned anything.
        topic = await client.open_job(job_id, [trainer], SETTLE_WINDOW, standby=[standby])
        bid = client.bids[trainer.peer_id]
        verify_bid(bid, trainer.peer_id, job_id)  # raises on a bad signature
        assert bid.address == trainer.info["address"] and bid.price_wei == PRICE
        job_key = bytes.fromhex(client.job_keys[job_id])
        wu, glob = client.upload_unit(job_id, 0, 0, bid, data, spec, topic)

        # Execute
        reply, _ = await client.node.request(trainer.peer_id, wu, expect=(UnitAccepted,))
        peer, done = await client.next_unit_msg()
        _, key_msg = await client.next_unit_msg()

        # Assert: nothing on chain for the unit; the update decrypts (with the key handed over
        # after the receipt) to trained weights.
        assert isinstance(reply, UnitAccepted) and (reply.round, reply.unit) == (0, 0)
        assert peer == trainer.peer_id and isinstance(done, UnitDone) and done.commit_tx == "", done
        assert isinstance(key_msg, UpdateKey) and key_msg.update_sha256 == done.update_sha256
        onchain = await trio.to_thread.run_sync(client.escrow.unit, job_key, 0, 0)
        assert onchain.status == UnitStatusV2.NONE
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
        assert _in_order(states, ["joined", "downloading", "training", "uploaded", "receipted", "delivered"]), states
        assert "committed" not in states
        assert all(m["job"] == job_id and m["role"] == "trainer" and m["v"] == 1 for m in msgs)

        # A client that never settles: after the settle window the trainer claims with its
        # receipt and withdraws.
        await client.wait_audit(topic, trainer.peer_id, "claimed", timeout=60)
        onchain = await trio.to_thread.run_sync(client.escrow.unit, job_key, 0, 0)
        assert onchain.status == UnitStatusV2.CLAIMED and onchain.trainer.lower() == bid.address.lower()
        msgs = await client.wait_audit(topic, trainer.peer_id, "withdrawn", timeout=30)
        assert [m["amount_wei"] for m in msgs if m["state"] == "withdrawn"] == [str(PRICE)]
        assert await trio.to_thread.run_sync(client.escrow.pending, bid.address) == 0
        receipts = TrainerDB(trainer.home / "trainer.db").receipts(job_id)
        assert [(r.round, r.unit, r.status) for r in receipts] == [(0, 0, ReceiptStatus.CLAIMED)]

        # The standby was never assigned: it holds no receipt and is owed nothing, though the
        # settle window has passed (the unit above was claimable) and its pay is reserved.
        reg = await trio.to_thread.run_sync(client.escrow.trainer, job_key, client.bids[standby.peer_id].address)
        assert reg.registered and reg.used == 0
        sbid = client.bids[standby.peer_id]
        assert TrainerDB(standby.home / "trainer.db").receipts(job_id) == []
        assert await trio.to_thread.run_sync(client.escrow.pending, sbid.address) == 0

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
        bid = client.bids[trainer.peer_id]
        job_key = bytes.fromhex(client.job_keys[job_id])

        # A work unit from a peer that is not the job's client is refused.
        intruder = Node(load_identity(tmp_path / "intruder"), Role.CLIENT,
                        bootstrap=[swarm.bootstrap.addr], heartbeat_interval=0.5)
        async with trio.open_nursery() as nursery:
            await nursery.start(intruder.serve)
            with trio.fail_after(60):  # learn the trainer's address from its heartbeats
                while not ((r := intruder.directory.get(trainer.peer_id)) and intruder.directory.is_online(r)):
                    await trio.sleep(0.2)
            wu, _ = client.upload_unit(job_id, 0, 5, bid, data, spec, topic)
            with pytest.raises(RpcError) as err:
                await intruder.request(trainer.peer_id, wu, timeout=20)
            assert err.value.code == "forbidden"
            nursery.cancel_scope.cancel()

        # A bad chunk hash: accepted, then given back with a reason; no receipt asked for.
        bad, _ = client.upload_unit(job_id, 0, 1, bid, data, spec, topic, corrupt_hash=True)
        await client.node.request(trainer.peer_id, bad, expect=(UnitAccepted,))
        peer, failed = await client.next_unit_msg()
        assert peer == trainer.peer_id and isinstance(failed, UnitFailed), failed
        assert failed.unit == 1 and "sha256" in failed.reason
        msgs = await client.wait_audit(topic, trainer.peer_id, "error")
        assert any(m["state"] == "error" and m["unit"] == 1 and m["reason"] for m in msgs)

        # ... and the trainer keeps serving.
        good, _ = client.upload_unit(job_id, 0, 2, bid, data, spec, topic, chunk_ids=[2])
        await client.node.request(trainer.peer_id, good, expect=(UnitAccepted,))
        # The same unit twice (an RPC retry) is answered the same way and worked on once.
        again, _ = await client.node.request(trainer.peer_id, good, timeout=20)
        assert isinstance(again, UnitAccepted) and again.unit == 2
        peer, done = await client.next_unit_msg()
        assert isinstance(done, UnitDone) and done.unit == 2, done
        _, key_msg = await client.next_unit_msg()
        assert isinstance(key_msg, UpdateKey) and key_msg.unit == 2

        # The lazy trainer hands back the global weights unchanged.
        lbid = client.bids[lazy.peer_id]
        lwu, glob = client.upload_unit(job_id, 0, 3, lbid, data, spec, topic)
        await client.node.request(lazy.peer_id, lwu, expect=(UnitAccepted,))
        peer, ldone = await client.next_unit_msg()
        assert peer == lazy.peer_id and isinstance(ldone, UnitDone), ldone
        _, key_msg = await client.next_unit_msg()
        assert isinstance(key_msg, UpdateKey) and key_msg.unit == 3
        _, plain = client.fetch_update(job_id, 0, 3)
        assert plain == glob

        # The operator settles (accepts one, rejects the other) and announces JobFinished:
        # the trainers see their settlement and the honest one withdraws.
        await trio.to_thread.run_sync(lambda: client.escrow.settle_batch(job_key, [
            Verdict(0, 2, bid.address, bytes.fromhex(done.update_sha256), True),
            Verdict(0, 3, lbid.address, bytes.fromhex(ldone.update_sha256), False, b"\x02" * 32)]))
        await client.node.publish(job_topic(job_id), JobFinished(job_id=job_id, state="done"))
        await client.wait_audit(topic, trainer.peer_id, "withdrawn", timeout=60)
        await client.wait_audit(topic, trainer.peer_id, "paid", timeout=30)
        await client.wait_audit(topic, lazy.peer_id, "rejected", timeout=30)

    await _with_client(swarm, tmp_path / "client", body)


async def test_units_the_chain_does_not_pay_as_bid_are_declined(swarm: Swarm, dataset, tmp_path: Path) -> None:
    """Not registered, registered at another price, a settle window over the trainer's limit:
    the trainer declines the unit (one line, audited, recorded) and trains nothing."""
    data, spec = dataset
    trainer = swarm.trainer

    async def body(client: Client) -> None:
        cases = [("job-unregistered", {"register": False}, "not registered"),
                 ("job-other-price", {"price": PRICE * 2}, f"registered at {PRICE * 2} wei"),
                 ("job-long-window", {}, "settle window 172800 s is over our limit of 86400 s")]
        for job_id, kw, reason in cases:
            window = 2 * 86_400 if job_id == "job-long-window" else 3600
            topic = await client.open_job(job_id, [trainer], window, **kw)
            wu, _ = client.upload_unit(job_id, 0, 0, client.bids[trainer.peer_id], data, spec, topic)
            with pytest.raises(RpcError) as err:
                await client.node.request(trainer.peer_id, wu, timeout=30)
            assert err.value.code == "rejected" and reason in str(err.value), err.value
            msgs = await client.wait_audit(topic, trainer.peer_id, "declined")
            assert [m for m in msgs if m["state"] == "declined" and reason in m["reason"]]
            db = TrainerDB(trainer.home / "trainer.db")
            assert db.units(job_id=job_id) == []  # no work taken
            assert reason in (db.job(job_id).declined or "")  # type: ignore[union-attr]
            assert "downloading" not in [m["state"] for m in msgs]

    await _with_client(swarm, tmp_path / "client", body)


async def test_no_valid_receipt_stops_the_job_and_a_refusal_does_not(swarm: Swarm, dataset, tmp_path: Path) -> None:
    data, spec = dataset
    trainer = swarm.trainer
    job_id = "job-receipts"

    async def body(client: Client) -> None:
        topic = await client.open_job(job_id, [trainer], 3600)
        bid = client.bids[trainer.peer_id]
        client.answers[(job_id, 0, 0)] = "refuse"
        client.answers[(job_id, 0, 1)] = "forge"

        # A signed refusal: the unit ends, the key stays with the trainer, work goes on.
        wu, _ = client.upload_unit(job_id, 0, 0, bid, data, spec, topic, chunk_ids=[0])
        await client.node.request(trainer.peer_id, wu, expect=(UnitAccepted,))
        _, done = await client.next_unit_msg()
        assert isinstance(done, UnitDone) and done.unit == 0
        msgs = await client.wait_audit(topic, trainer.peer_id, "refused")
        assert [m["reason"] for m in msgs if m["state"] == "refused"] == ["reassigned"]

        # A receipt signed by someone else: no key, and no more work for this job.
        wu, _ = client.upload_unit(job_id, 0, 1, bid, data, spec, topic, chunk_ids=[1])
        await client.node.request(trainer.peer_id, wu, expect=(UnitAccepted,))
        _, done = await client.next_unit_msg()
        assert isinstance(done, UnitDone) and done.unit == 1
        msgs = await client.wait_audit(topic, trainer.peer_id, "stopped")
        stopped = [m["reason"] for m in msgs if m["state"] == "stopped"]
        assert len(stopped) == 1 and "invalid receipt for unit 0/1" in stopped[0], stopped
        wu, _ = client.upload_unit(job_id, 0, 2, bid, data, spec, topic, chunk_ids=[2])
        with pytest.raises(RpcError) as err:
            await client.node.request(trainer.peer_id, wu, timeout=30)
        assert "stopped working for job" in str(err.value)
        assert (job_id, 0, 0) not in client.keys and (job_id, 0, 1) not in client.keys
        db = TrainerDB(trainer.home / "trainer.db")
        assert {u.unit: u.state.value for u in db.units(job_id=job_id)} == {0: "refused", 1: "unreceipted"}
        assert db.receipts(job_id) == []

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
        wu, glob = client.upload_unit(job_id, 0, 0, client.bids[victim.peer_id], data, spec, topic,
                                      deadline_s=180)
        await client.node.request(victim.peer_id, wu, expect=(UnitAccepted,))
        victim.popen.kill()  # SIGKILL: no cleanup of any kind
        victim.popen.wait(10)
        argv_extra = ["--devnet-home", str(swarm.devnet.home), *HEARTBEAT, "--price-wei", str(PRICE), "--no-gpu"]
        swarm.lazy = await trio.to_thread.run_sync(lambda: start_node(
            "trainer", victim.home, bootstrap=swarm.bootstrap.addr, extra_args=argv_extra, fault="lazy"))
        peer, done = await client.next_unit_msg(timeout=150)
        assert peer == victim.peer_id and isinstance(done, UnitDone) and done.unit == 0, done
        _, key_msg = await client.next_unit_msg()
        assert isinstance(key_msg, UpdateKey) and key_msg.update_sha256 == done.update_sha256
        _, plain = client.fetch_update(job_id, 0, 0)
        assert plain == glob  # the lazy double hands the global weights back
        msgs = await client.wait_audit(topic, victim.peer_id, "delivered")
        assert "restarted" in [m["state"] for m in msgs]

    await _with_client(swarm, tmp_path / "client", body)
