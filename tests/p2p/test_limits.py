"""Peer limits (pure, on a fake clock) and RPC framing against an in-memory stream."""

from __future__ import annotations

import contextlib
import json
import struct

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from fedswarm.p2p.framing import BLOB_CHUNK, FrameError, FrameReader, OversizeError, pack_frame
from fedswarm.p2p.limits import ECHO_BLOB_CAP, LimitsConfig, PeerLimits, rpc_cap
from fedswarm.protocol.messages import EchoBlob, Ping, WireError


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_strikes_ban_then_the_ban_expires() -> None:
    clock = Clock()
    lim = PeerLimits(LimitsConfig(strikes_to_ban=3, strike_window=10, ban_seconds=60), clock=clock)
    assert not lim.strike("bad", "rpc_bad_frame")
    assert not lim.strike("bad", "rpc_bad_frame")
    assert lim.strike("bad", "gossip_invalid")  # the third within the window bans
    assert lim.is_banned("bad") and lim.open_stream("bad") == "banned"
    assert not lim.allow_gossip("bad")
    assert lim.counters["bans"] == 1 and lim.counters["rpc_bad_frame"] == 2
    assert lim.status()["banned"] == {"bad": 60.0}
    clock.t += 61
    assert not lim.is_banned("bad") and lim.open_stream("bad") is None


def test_strikes_outside_the_window_do_not_add_up() -> None:
    clock = Clock()
    lim = PeerLimits(LimitsConfig(strikes_to_ban=3, strike_window=10), clock=clock)
    for _ in range(10):
        assert not lim.strike("slow", "gossip_invalid")
        clock.t += 6  # never three within 10 s
    assert not lim.is_banned("slow")


def test_bootstraps_are_never_banned() -> None:
    lim = PeerLimits(LimitsConfig(strikes_to_ban=1), clock=Clock(), exempt={"boot"})
    assert not lim.strike("boot", "gossip_invalid")
    assert not lim.is_banned("boot") and lim.counters["gossip_invalid"] == 1


def test_concurrent_streams_and_rate_per_peer() -> None:
    clock = Clock()
    lim = PeerLimits(LimitsConfig(max_streams_per_peer=2, rpc_rate=1, rpc_burst=5), clock=clock)
    assert lim.open_stream("p") is None and lim.open_stream("p") is None
    assert lim.open_stream("p") == "busy"
    assert lim.open_stream("q") is None  # another peer is not affected
    lim.close_stream("p")
    assert lim.open_stream("p") is None
    lim.close_stream("p")
    lim.close_stream("p")
    assert lim.open_stream("p") is None  # 4th request of a burst of 5 (a "busy" costs none)
    lim.close_stream("p")
    assert lim.open_stream("p") is None  # 5th
    lim.close_stream("p")
    assert lim.open_stream("p") == "rate"
    clock.t += 1.0
    assert lim.open_stream("p") is None


def test_blob_budget_is_shared_by_all_peers() -> None:
    lim = PeerLimits(LimitsConfig(blob_budget=100), clock=Clock())
    assert lim.reserve_blob(60) and not lim.reserve_blob(50)
    lim.release_blob(60)
    assert lim.reserve_blob(100)


def test_gossip_rate_per_origin() -> None:
    lim = PeerLimits(LimitsConfig(gossip_rate=1, gossip_burst=3), clock=Clock())
    assert [lim.allow_gossip("o") for _ in range(5)] == [True, True, True, False, False]
    assert lim.counters["gossip_dropped_rate"] == 2


def test_tracked_peers_stay_bounded() -> None:
    lim = PeerLimits(LimitsConfig(max_tracked_peers=10), clock=Clock())
    for i in range(1000):
        lim.allow_gossip(f"peer{i}")
    assert len(lim._peers) <= 11


def test_only_the_echo_carries_a_blob() -> None:
    assert rpc_cap("ping").max_blob == 0 and rpc_cap("bid").max_blob == 0
    assert rpc_cap("echo_blob").max_blob == ECHO_BLOB_CAP
    assert rpc_cap("nonsense").max_frame == 64 * 1024


# --- framing against an in-memory stream ------------------------------------------------------


class MemStream:
    """Serves ``data`` in small reads and counts how much the reader took."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    async def read(self, n: int | None = None) -> bytes:
        if self.pos >= len(self.data):
            raise EOFError("end")
        chunk = self.data[self.pos : self.pos + min(n or 4096, 4096)]
        self.pos += len(chunk)
        return chunk

    async def write(self, data: bytes) -> None:  # pragma: no cover - never written here
        raise AssertionError


def _env(msg: dict, blob: int | None = None) -> bytes:
    return pack_frame(json.dumps({"m": msg, "b": blob}).encode())


async def test_oversized_frame_refused_from_its_header() -> None:
    stream = MemStream(struct.pack(">I", 1 << 30) + b"x" * 100_000)
    with pytest.raises(OversizeError):
        await FrameReader(stream, 5).read_envelope()
    assert stream.pos <= 4096  # the body was never buffered


async def test_blob_over_its_type_cap_refused_before_reading_it() -> None:
    stream = MemStream(_env({"type": "ping", "nonce": 1}, blob=1000) + pack_frame(b"x" * 1000))
    with pytest.raises(OversizeError, match="'ping' blob of 1000 bytes"):
        await FrameReader(stream, 5).read_envelope()
    stream = MemStream(_env({"type": "echo_blob", "size": 1}, blob=ECHO_BLOB_CAP + 1))
    with pytest.raises(OversizeError):
        await FrameReader(stream, 5).read_envelope()


async def test_envelope_over_its_type_cap() -> None:
    stream = MemStream(_env({"type": "ping", "nonce": 1, "pad": "x" * 70_000}))
    with pytest.raises(OversizeError, match="over its 65536-byte cap"):
        await FrameReader(stream, 5).read_envelope()


async def test_deep_envelope_refused() -> None:
    stream = MemStream(pack_frame(b"[" * 100_000))
    with pytest.raises(FrameError, match="nests deeper"):
        await FrameReader(stream, 5).read_envelope()


async def test_echo_round_trip_through_frames() -> None:
    payload = bytes(range(256)) * 3000
    chunks = b"".join(pack_frame(payload[i : i + BLOB_CHUNK]) for i in range(0, len(payload), BLOB_CHUNK))
    stream = MemStream(_env({"type": "echo_blob", "size": len(payload), "echo": True}, len(payload)) + chunks)
    msg, blob = await FrameReader(stream, 5).read_message()
    assert isinstance(msg, EchoBlob) and msg.echo and blob == payload


frames = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda b: struct.pack(">I", len(b)) + b, st.binary(max_size=300)),
    st.builds(lambda n, b: struct.pack(">I", n) + b, st.integers(0, 1 << 32 - 1), st.binary(max_size=64)),
    st.builds(lambda m, b: _env(m, b), st.dictionaries(st.sampled_from(["type", "nonce", "size", "echo", "x"]),
              st.one_of(st.sampled_from(["ping", "echo_blob", "pong", "bid"]), st.integers(), st.booleans(),
                        st.text(max_size=10)), max_size=4),
              st.one_of(st.none(), st.integers(-5, 1 << 40))),
)


@given(frames)
@settings(max_examples=300, deadline=None)
def test_random_frames_only_raise_frame_or_wire_errors(data: bytes) -> None:
    async def main() -> None:
        with contextlib.suppress(FrameError, WireError):
            await FrameReader(MemStream(data), 5).read_message()

    trio.run(main)


def test_ping_has_no_payload_field() -> None:
    # The amplification: an 82-byte Ping used to make the node build a 256 MiB reply.
    with pytest.raises(ValueError):
        Ping.model_validate({"nonce": 1, "payload_bytes": 256 << 20})
