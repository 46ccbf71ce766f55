"""The hardened node runtime: one libp2p host, gossipsub, RPC and liveness on one trio loop.

Everything else in fedswarm talks to the network through :class:`Node`, never through raw
py-libp2p calls, because the library has sharp edges:

- an exception escaping a stream handler kills the process, so every handler catches all;
- ``publish()`` never blocks and drops silently when a 32-entry peer queue is full, so
  publishes go through a bounded queue and a pacer that waits for room;
- there is no liveness and no reconnect, so nodes send heartbeats on the presence topic, judge
  peers by them, and redial the bootstrap and the peers they keep links with (unblock + dial
  with timeout). Links form a star around the bootstrap and the clients: trainers never
  connect to each other (:func:`~fedswarm.p2p.directory.keeps_link`). That part lives in
  :mod:`fedswarm.p2p.presence`, mixed into :class:`Node`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import multiaddr
import trio

from fedswarm.identity import Identity
from fedswarm.p2p.directory import Directory
from fedswarm.p2p.framing import FrameError, FrameReader, write_message
from fedswarm.p2p.gate import Gate, resource_manager
from fedswarm.p2p.gossip_health import GossipHealth, keep_subscriptions_while_connected
from fedswarm.p2p.limits import LimitsConfig, PeerLimits
from fedswarm.p2p.presence import Presence, SilenceWatch, drop_after
from fedswarm.p2p.rpc import Rejected, RpcError, RpcHandler, RpcServer
from fedswarm.protocol.decode import MAX_GOSSIP_MESSAGE
from fedswarm.protocol.messages import (
    BlobDigest,
    Capabilities,
    EchoBlob,
    ErrorReply,
    MeshRequest,
    MeshSummary,
    Ping,
    Pong,
    Role,
    WireError,
    WireModel,
    decode,
    encode,
)
from fedswarm.protocol.topics import DIRECTORY_TOPIC, MARKET_TOPIC, PRESENCE_TOPIC, RPC_PROTOCOL

log = logging.getLogger("fedswarm.p2p")

MAX_PUBSUB_MESSAGE = MAX_GOSSIP_MESSAGE  # gossipsub silently drops > 1 MiB; keep well under
GOSSIP_HEARTBEAT_S = 1  # gossipsub's mesh upkeep and message-cache ageing (the library's default is 120 s)
TopicHandler = Callable[[str, Any], Awaitable[None]]
TopicValidator = Callable[[str, WireModel], bool]


class _SeenSet:
    """Bounded memory of message ids (gossipsub replays recent messages to new subscribers)."""

    def __init__(self, size: int = 20_000) -> None:
        self._order: collections.deque[bytes] = collections.deque(maxlen=size)
        self._set: set[bytes] = set()

    def add(self, key: bytes) -> bool:
        """True if new."""
        if key in self._set:
            return False
        if len(self._order) == self._order.maxlen:
            self._set.discard(self._order[0])
        self._order.append(key)
        self._set.add(key)
        return True


class Node(Presence):
    """A running libp2p node. Create, then ``await nursery.start(node.serve)``.

    Parameters
    ----------
    identity: the node's keys (its Ed25519 key is the libp2p identity).
    role: what this node announces in its heartbeats.
    listen: multiaddr to listen on (``/ip4/127.0.0.1/tcp/0`` picks a free port).
    bootstrap: multiaddrs (with ``/p2p/<id>``) of bootstrap nodes; empty for the bootstrap itself.
    peer_drop_after: seconds a connected peer may stay silent before its connections are closed
        (None: 3 peer timeouts; see :func:`~fedswarm.p2p.presence.drop_after`).
    """

    def __init__(
        self,
        identity: Identity,
        role: Role,
        listen: str = "/ip4/127.0.0.1/tcp/0",
        bootstrap: list[str] | None = None,
        *,
        heartbeat_interval: float = 1.0,
        peer_timeout: float = 4.0,
        rpc_timeout: float = 15.0,
        capabilities: Capabilities | None = None,
        price_wei: int | None = None,
        hears_presence: bool | None = None,
        limits: LimitsConfig | None = None,
        peer_drop_after: float | None = None,
    ) -> None:
        self.identity = identity
        # Who keeps a first-hand directory (every heartbeat): the bootstrap, which summarizes
        # it for everyone, and clients, which pick trainers from it. Trainers don't need to.
        self.hears_presence = role in (Role.BOOTSTRAP, Role.CLIENT) if hears_presence is None else hears_presence
        self.role = role
        self.listen = listen
        self.bootstrap_addrs = list(bootstrap or [])
        self.bootstrap_ids: set[str] = set()
        for addr in self.bootstrap_addrs:
            try:
                self.bootstrap_ids.add(multiaddr.Multiaddr(addr).value_for_protocol("p2p"))
            except Exception:
                raise ValueError(f"bootstrap address {addr!r} must end in /p2p/<peer id>") from None
        # Hostile input: per-peer caps, strikes and bans (the bootstraps are never banned).
        self.limits = PeerLimits(limits, exempt=self.bootstrap_ids)
        self.gate = Gate(self.limits, identity.peer_id, max_gossip=MAX_PUBSUB_MESSAGE)
        self.heartbeat_interval = heartbeat_interval
        self.rpc_timeout = rpc_timeout
        self.capabilities = capabilities
        self.price_wei = price_wei
        self.api_addr: str | None = None
        self.peer_id = identity.peer_id
        self.directory = Directory(time.monotonic, timeout=peer_timeout)
        # A connected peer silent this long loses its connections (None: 3 peer timeouts).
        self.peer_drop_after = drop_after(peer_timeout, peer_drop_after)
        self.silence = SilenceWatch()
        self.stats: collections.Counter[str] = collections.Counter()
        self.last_summary: MeshSummary | None = None
        self._bootstrap_heard_at = time.monotonic()
        self._bootstrap_reset_at = 0.0
        self.started_at = time.time()
        self.rpc = RpcServer(self.limits, self.gate, self.stats, rpc_timeout)
        self._topic_handlers: dict[str, list[TopicHandler]] = {}
        self._topic_validators: dict[str, TopicValidator] = {}
        self._seen = _SeenSet()
        self.gossip_health = GossipHealth(GOSSIP_HEARTBEAT_S, self.stats)
        self._queue_ok_at: dict[Any, float] = {}
        self._send_pub, self._recv_pub = trio.open_memory_channel[tuple[str, bytes]](256)
        # Presence (heartbeats, mesh summaries) is "latest wins": a queued old heartbeat is
        # worthless once a newer one exists, and it must never delay job traffic.
        self._presence: dict[tuple[str, str], bytes] = {}
        self._presence_ready = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._hb_seq = int(time.time() * 1000)
        self.host: Any = None
        self.pubsub: Any = None
        self.ready = trio.Event()
        self.on_rpc(Ping, self._handle_ping)
        self.on_rpc(EchoBlob, self._handle_echo_blob)
        self.on_rpc(MeshRequest, self._handle_mesh_request)

    # -- lifecycle ---------------------------------------------------------------------------

    def _build_host(self) -> tuple[Any, Any, Any]:
        # py-libp2p's yamux answers every read with a WINDOW_UPDATE frame by default (one more
        # Noise-encrypted write per pubsub message); go-yamux's half-window hysteresis sends
        # one per half window. Measured: a fifth of an idle node's CPU. (Read per call.)
        os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")
        from libp2p import create_yamux_muxer_option, new_host
        from libp2p.crypto.x25519 import create_new_key_pair as new_x25519
        from libp2p.custom_types import TProtocol
        from libp2p.pubsub.gossipsub import GossipSub
        from libp2p.pubsub.pubsub import Pubsub
        from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
        from libp2p.security.noise.transport import Transport as NoiseTransport

        key_pair = self.identity.key_pair()
        # Noise only: a default host also accepts /plaintext/2.0.0 dialers (notes, item "Noise").
        sec_opt = {NOISE_ID: NoiseTransport(key_pair, noise_privkey=new_x25519().private_key)}
        host = new_host(
            key_pair=key_pair,
            sec_opt=sec_opt,
            muxer_opt=create_yamux_muxer_option(),
            listen_addrs=[multiaddr.Multiaddr(self.listen)],
            resource_manager=resource_manager(),
        )
        gossipsub = GossipSub(
            # 1.1/1.0 only: 1.2's IDONTWANT doubles per-message CPU and fills the same queues.
            protocols=[TProtocol("/meshsub/1.1.0"), TProtocol("/meshsub/1.0.0")],
            degree=6,
            degree_low=4,
            # No upper bound in practice: trainers link only to the bootstrap and clients
            # (keeps_link), so those hubs must keep every trainer that grafts in their mesh.
            # With the default 12 they pruned the rest, who then heard announcements only
            # through gossip (IHAVE/IWANT, a heartbeat late) or not at all.
            degree_high=1024,
            heartbeat_initial_delay=0.1,
            heartbeat_interval=GOSSIP_HEARTBEAT_S,
            # py-libp2p's "adaptive gossip" rescored the network every 30 s and, on a low score
            # (any small network: a lone bootstrap scored 0.30), set the heartbeat to 30-60 s
            # whatever we configured. The message cache then stopped ageing and every new
            # subscriber was replayed up to 90 s of each topic. Off: a fixed heartbeat.
            adaptive_gossip_enabled=False,
            time_to_live=30,
            spam_protection_enabled=False,  # it counts our own publishes; we pace instead
            # gossipsub queues every publish for each connected peer not (yet) subscribed to
            # the topic, in case its subscription is late. Most peers never subscribe to the
            # heartbeat topic: keep that queue short and young.
            max_pending_messages_per_peer=32,
            pending_messages_ttl=5.0,
            eclipse_protection_enabled=False,  # everything is on 127.0.0.1 in tests and devnet
        )
        pubsub = Pubsub(host, gossipsub, strict_signing=True)
        self.gossip_health.attach(gossipsub)
        keep_subscriptions_while_connected(pubsub, self.stats)
        self.gate.guard_pubsub(host, pubsub, gossipsub.get_protocols())
        return host, pubsub, gossipsub

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the node until cancelled. ``task_status.started()`` once it listens."""
        from libp2p.custom_types import TProtocol
        from libp2p.tools.anyio_service import background_trio_service

        from fedswarm.logs import route_libp2p_logging

        self.host, self.pubsub, gossipsub = self._build_host()
        route_libp2p_logging()
        self.host.set_stream_handler(TProtocol(RPC_PROTOCOL), self.rpc.handle_stream)
        async with (
            self.host.run(listen_addrs=[multiaddr.Multiaddr(self.listen)]),
            background_trio_service(self.pubsub),
            background_trio_service(gossipsub),
            trio.open_nursery() as nursery,
        ):
            self._nursery = nursery
            self.gate.attach(self.host, self.pubsub, nursery)
            await self.pubsub.wait_until_ready()
            await self.subscribe(MARKET_TOPIC, self._on_market, self._validate_market)
            if self.hears_presence:
                await self.subscribe(PRESENCE_TOPIC, self._on_market, self._validate_market)
            # The bootstrap subscribes to the topic it publishes its summary on: a publisher
            # outside a topic reaches only `degree` (6) of its subscribers (gossipsub fanout).
            if not self.hears_presence or self.role == Role.BOOTSTRAP:
                await self.subscribe(DIRECTORY_TOPIC, self._on_market, self._validate_directory)
            nursery.start_soon(self._publish_pacer)
            nursery.start_soon(self._heartbeat_loop)
            nursery.start_soon(self._reconnect_loop)
            nursery.start_soon(self.gossip_health.watch)
            self.ready.set()
            log.info("node %s (%s) listening on %s", self.peer_id, self.role.value, self.addrs)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True, deadline=trio.current_time() + 2):
                    await self._close_connections()

    @property
    def addrs(self) -> list[str]:
        """Our dialable multiaddrs, each ending in ``/p2p/<peer id>``."""
        if self.host is None:
            return []
        return [str(a) for a in self.host.get_addrs()]

    @property
    def nursery(self) -> trio.Nursery:
        assert self._nursery is not None, "node is not running"
        return self._nursery

    # -- RPC -----------------------------------------------------------------------------------

    def on_rpc(self, msg_type: type[WireModel], handler: RpcHandler) -> None:
        """Serve requests of ``msg_type`` with ``handler(peer_id, msg, blob) -> (reply, blob)``."""
        self.rpc.on(msg_type, handler)

    async def request(
        self,
        peer_id: str,
        msg: WireModel,
        blob: bytes | None = None,
        *,
        timeout: float | None = None,
        expect: tuple[type[WireModel], ...] | None = None,
    ) -> tuple[WireModel, bytes | None]:
        """Send one request on a new stream; returns the reply. Raises :class:`RpcError`."""

        timeout = timeout or self.rpc_timeout
        self.remember_addrs(peer_id)
        deadline = trio.current_time() + timeout
        try:
            # First try on the existing connection; if it does not answer in time, the
            # connection may be half-dead (py-libp2p keeps such ones): drop it, dial afresh.
            reply, rblob = await self._request_once(peer_id, msg, blob, timeout * 0.6)
        except RpcError as exc:
            if exc.code not in ("timeout", "unreachable") or trio.current_time() > deadline - 1.0:
                raise
            self.stats["rpc_retry"] += 1
            await self._drop_connections(peer_id)
            if deadline - trio.current_time() < 1.0:  # dropping took the time that was left
                raise
            reply, rblob = await self._request_once(peer_id, msg, blob, deadline - trio.current_time())
        if isinstance(reply, ErrorReply):
            raise RpcError(reply.code, reply.message)
        if expect and not isinstance(reply, expect):
            raise RpcError("bad_reply", f"expected {[e.TYPE for e in expect]}, got {reply.TYPE}")
        return reply, rblob

    async def _request_once(self, peer_id: str, msg: WireModel, blob: bytes | None,
                            timeout: float) -> tuple[WireModel, bytes | None]:
        from libp2p.custom_types import TProtocol
        from libp2p.peer.id import ID

        stream = None
        try:
            with trio.fail_after(timeout):
                stream = await self.host.new_stream(ID.from_base58(peer_id), [TProtocol(RPC_PROTOCOL)])
                await write_message(stream, msg, blob, timeout)
                return await FrameReader(stream, timeout).read_message()
        except trio.TooSlowError:
            raise RpcError("timeout", f"{msg.TYPE} to {peer_id[:16]}… got no answer in {timeout:.0f} s") from None
        except (FrameError, WireError) as exc:
            raise RpcError("bad_reply", f"{msg.TYPE} to {peer_id[:16]}…: {exc}") from None
        except Exception as exc:
            raise RpcError("unreachable", f"{msg.TYPE} to {peer_id[:16]}…: {type(exc).__name__}: {exc}") from None
        finally:
            if stream is not None:
                with trio.move_on_after(1):
                    with contextlib.suppress(Exception):
                        await stream.close()

    async def _close_connections(self) -> None:
        """Close every connection's muxer, so that the peers see us leave at once.

        py-libp2p's host, stopped by cancellation, marks its connections closed but leaves their
        yamux sessions and sockets open (and a second ``close()`` returns early): a node stopped
        inside a living process (tests, benches) stayed connected, and in every neighbour's
        gossip mesh, for good."""
        try:
            conns = [c for cs in self.host.get_network().get_connections_map().values() for c in cs]
        except Exception:
            return
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.muxed_conn.close()

    def remember_addrs(self, peer_id: str, addrs: list[str] | None = None) -> None:
        """Put ``peer_id``'s addresses (from the directory, which holds what its latest heartbeat
        said, then ``addrs`` it gave us itself) in the peerstore so that a dial finds them."""
        rec = self.directory.get(peer_id)
        self._set_peer_addrs(peer_id, [*(rec.addrs if rec else []), *(addrs or [])])

    async def _handle_ping(self, peer: str, msg: Ping, blob: bytes | None) -> tuple[WireModel, bytes | None]:
        return Pong(nonce=msg.nonce, role=self.role), None

    async def _handle_echo_blob(self, peer: str, msg: EchoBlob, blob: bytes | None) -> tuple[WireModel, bytes | None]:
        import hashlib

        data = blob or b""
        if len(data) != msg.size:
            raise Rejected(f"declared {msg.size} bytes, received {len(data)}", code="bad_request")
        digest = BlobDigest(size=len(data), sha256=hashlib.sha256(data).hexdigest())
        return digest, (data if msg.echo else None)

    async def _handle_mesh_request(self, peer: str, msg: MeshRequest, blob: bytes | None) -> tuple[WireModel, bytes | None]:
        return self.mesh_summary(), None

    # -- pubsub ----------------------------------------------------------------------------

    async def subscribe(
        self, topic: str, handler: TopicHandler, validator: TopicValidator | None = None
    ) -> None:
        """Subscribe and drain ``topic``: each valid, new message goes to ``handler``.

        Idempotent: subscribing the same handler (an equal bound method or the same function)
        to a topic again changes nothing, so it is never called twice for one message."""
        handlers = self._topic_handlers.setdefault(topic, [])
        if handler not in handlers:
            handlers.append(handler)
        if validator is not None:
            self._topic_validators[topic] = validator
        if topic in self.pubsub.topic_ids:
            return
        # Validated before delivery and before relay (garbage is not forwarded to anyone).
        self.pubsub.set_topic_validator(
            topic, self.gate.pubsub_validator(topic, lambda: self._topic_validators.get(topic)), False)
        sub = await self.pubsub.subscribe(topic)
        self.nursery.start_soon(self._drain, topic, sub)

    async def unsubscribe(self, topic: str) -> None:
        self._topic_handlers.pop(topic, None)
        self._topic_validators.pop(topic, None)
        if topic in self.pubsub.topic_ids:
            await self.pubsub.unsubscribe(topic)
            self.pubsub.remove_topic_validator(topic)

    @property
    def topics(self) -> list[str]:
        return sorted(self.pubsub.topic_ids) if self.pubsub else []

    def gossip_status(self) -> dict[str, object]:
        """Gossipsub's heartbeat (count, age, interval) and, per joined topic, the replay
        window and mesh size: the ``gossip`` part of ``/status``."""
        out = self.gossip_health.status(self.topics)
        if self.pubsub is not None and self.host is not None:
            out["peers"] = self._pubsub_peer_view()
        return out

    def _pubsub_peer_view(self) -> dict[str, dict[str, object]]:
        """Per connected peer, what pubsub holds of it: its connections, whether we have an
        outbound pubsub stream to it, the topics we believe it joined, the meshes it is in, and
        its outbound queue. (A connected peer with no stream or no topics hears nothing from
        us, and we ignore what it publishes on topics we think it left.)"""
        conns = self.host.get_network().get_connections_map()
        router = self.pubsub.router
        out: dict[str, dict[str, object]] = {}
        for pid, cs in conns.items():
            queue = self.pubsub.peer_queues.get(pid)
            stream = self.pubsub.peers.get(pid)
            out[pid.to_base58()] = {
                "connections": len(cs),
                "stream": stream is not None,
                # False: the stream lives on a connection that is no longer ours (it hangs).
                "stream_on_a_connection": stream is not None and any(
                    getattr(stream, "muxed_conn", None) is c.muxed_conn for c in cs),
                "topics": sorted(t for t, ps in self.pubsub.peer_topics.items() if pid in ps),
                "mesh": sorted(t for t, ps in getattr(router, "mesh", {}).items() if pid in ps),
                "queue": len(queue) if queue is not None else None,
            }
        return out

    async def _drain(self, topic: str, sub: Any) -> None:
        # Every subscription is drained (a full 32-entry channel makes gossipsub drop).
        from libp2p.peer.id import ID

        while True:
            try:
                raw = await sub.get()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
            except Exception:
                log.exception("subscription to %s failed", topic)
                return
            try:
                if not self._seen.add(bytes(raw.from_id) + bytes(raw.seqno)):
                    self.stats["pubsub_duplicate"] += 1
                    continue
                sender = ID(raw.from_id).to_base58()
                if sender == self.peer_id:
                    continue
                msg = self.gate.take_decoded(raw.from_id, raw.seqno, topic)
                if msg is None:  # validated, but no longer kept: decode again (bounded)
                    try:
                        msg = decode(raw.data, max_bytes=MAX_PUBSUB_MESSAGE)
                    except WireError:
                        self.stats["pubsub_invalid"] += 1
                        continue
                    validator = self._topic_validators.get(topic)
                    if validator is not None and not validator(sender, msg):
                        self.stats["pubsub_invalid"] += 1
                        continue
                self.stats["pubsub_received"] += 1
                for handler in list(self._topic_handlers.get(topic, [])):
                    await handler(sender, msg)
            except Exception:
                self.stats["pubsub_handler_error"] += 1
                log.exception("handler for %s failed", topic)

    async def publish(self, topic: str, msg: WireModel | bytes, *, presence: bool = False) -> None:
        """Queue ``msg`` for ``topic``; waits when the queue is full (nothing dropped silently).

        ``presence=True`` marks a periodic state message (heartbeat, summary): only the newest
        one per topic and type is kept, and it goes out only when no other message waits."""
        data = msg if isinstance(msg, bytes) else encode(msg)
        if len(data) > MAX_PUBSUB_MESSAGE:
            raise ValueError(f"pubsub message of {len(data)} bytes is over {MAX_PUBSUB_MESSAGE}; send it over RPC or storage")
        if presence:
            kind = msg.TYPE if isinstance(msg, WireModel) else "raw"
            self._presence[(topic, kind)] = data
            self._presence_ready.set()
            return
        await self._send_pub.send((topic, data))

    async def _next_publish(self) -> tuple[str, bytes]:
        """The next message to publish: queued messages first, then the newest presence."""
        while True:
            try:
                return self._recv_pub.receive_nowait()
            except trio.WouldBlock:
                pass
            if self._presence:
                key = next(iter(self._presence))
                return key[0], self._presence.pop(key)
            self._presence_ready = trio.Event()
            with trio.move_on_after(0.5):
                async with trio.open_nursery() as n:
                    async def queued() -> None:
                        item = await self._recv_pub.receive()
                        self._pending_item = item
                        n.cancel_scope.cancel()

                    async def presence() -> None:
                        await self._presence_ready.wait()
                        n.cancel_scope.cancel()

                    self._pending_item: tuple[str, bytes] | None = None
                    n.start_soon(queued)
                    n.start_soon(presence)
            item, self._pending_item = self._pending_item, None
            if item is not None:
                return item

    async def _publish_pacer(self) -> None:
        # gossipsub's per-peer outbound queue holds 32 RPCs and rejects on full: wait for room
        # in the queues of live peers before each publish. A peer whose queue does not drain
        # (stopped, or a half-dead connection) must not stall everyone else: after
        # STUCK_AFTER seconds without draining it stops counting.
        while True:
            topic, data = await self._next_publish()
            with trio.move_on_after(2.0):
                while self._queues_busy():
                    await trio.sleep(0.005)
            try:
                await self.pubsub.publish(topic, data)
                self.stats["pubsub_published"] += 1
            except Exception:
                self.stats["pubsub_publish_error"] += 1
                log.exception("publish to %s failed", topic)

    STUCK_AFTER = 1.0

    def _queues_busy(self, limit: int = 16) -> bool:
        now = trio.current_time()
        busy = False
        for pid, queue in list(self.pubsub.peer_queues.items()):
            if len(queue) < limit:
                self._queue_ok_at[pid] = now
                continue
            rec = self.directory.get(pid.to_base58())
            if rec is not None and not self.directory.is_online(rec):
                continue
            if now - self._queue_ok_at.setdefault(pid, now) > self.STUCK_AFTER:
                self.stats["pubsub_peer_stuck"] += 1
                continue
            busy = True
        return busy

    def limits_status(self) -> dict[str, object]:
        """Hostile-input counters (invalid frames, oversize, bans, dropped gossip), current bans
        and the caps in force: the ``limits`` part of ``/status``. The process's recursion
        limit is reported too: a high one turns deep JSON into a crash instead of an error."""
        return {**self.limits.status(), "recursion_limit": sys.getrecursionlimit()}
