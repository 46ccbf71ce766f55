"""Length-prefixed frames over a libp2p stream, with size caps and deadlines on every read.

A frame is a 4-byte big-endian length then that many bytes. An RPC message is one frame of JSON
``{"m": <message>, "b": <blob size or null>}``; a blob follows as frames of at most
:data:`BLOB_CHUNK` bytes until its declared size is reached. py-libp2p's ``stream.read(n)``
returns *up to* n bytes and raises ``StreamEOF`` at the end, so :class:`FrameReader` buffers.

Sizes are checked before bytes are buffered: a frame's length against the cap from its 4-byte
header, a blob's declared size against its message type's cap (:func:`~fedswarm.p2p.limits.rpc_cap`)
from the envelope. The envelope goes through the bounded decoder (size, then depth, then JSON).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any, Protocol

import trio

from fedswarm.p2p.limits import RpcCap, rpc_cap
from fedswarm.protocol.decode import MAX_RPC_FRAME, DecodeError, decode_object
from fedswarm.protocol.messages import WireError, WireModel, decode_obj, encode

MAX_FRAME = MAX_RPC_FRAME  # JSON frames: 1 MiB is far above any control message
BLOB_CHUNK = 256 * 1024  # measured sweet spot for yamux (notes: 100-200 MB/s at 256 KiB)
_LEN = struct.Struct(">I")


class FrameError(Exception):
    """The peer sent something that is not a valid frame (too big, truncated, not JSON)."""


class OversizeError(FrameError):
    """A frame or blob declared larger than its cap (refused before its bytes were read)."""


class Stream(Protocol):
    async def read(self, n: int | None = None) -> bytes: ...
    async def write(self, data: bytes) -> None: ...


class FrameReader:
    """Reads exact byte counts from a stream, each read bounded by ``timeout`` seconds."""

    def __init__(self, stream: Stream, timeout: float) -> None:
        self._stream = stream
        self._buf = bytearray()
        self.timeout = timeout

    async def read_exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            with trio.fail_after(self.timeout):
                try:
                    data = await self._stream.read(max(n - len(self._buf), 65536))
                except Exception as exc:  # StreamEOF, StreamReset, StreamError...
                    raise FrameError(f"stream ended after {len(self._buf)} of {n} bytes ({type(exc).__name__})") from None
            if not data:
                raise FrameError("stream closed")
            self._buf += data
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    async def read_frame(self, max_size: int = MAX_FRAME) -> bytes:
        """One frame, its length checked against ``max_size`` before any of it is read."""
        (size,) = _LEN.unpack(await self.read_exactly(4))
        if size > max_size:
            raise OversizeError(f"frame of {size} bytes is over the {max_size}-byte cap")
        return await self.read_exactly(size)

    async def read_envelope(
        self, expected: tuple[type[WireModel], ...] | None = None,
        cap_of: Callable[[str], RpcCap] = rpc_cap,
    ) -> tuple[WireModel, int | None]:
        """Read one envelope: the message and its declared blob size (the blob is not read).

        The envelope and the blob size are checked against the message type's caps; raises
        :class:`OversizeError`, :class:`FrameError` or ``WireError`` on junk."""
        raw = await self.read_frame()
        try:
            env = decode_object(raw, max_bytes=MAX_FRAME, what="RPC envelope")
        except DecodeError as exc:
            raise FrameError(str(exc)) from None
        if set(env) - {"m", "b"}:
            raise FrameError("envelope must be {m, b}")
        body, blob_size = env.get("m"), env.get("b")
        type_name = body.get("type") if isinstance(body, dict) else None
        cap = cap_of(type_name if isinstance(type_name, str) else "")
        if len(raw) > cap.max_frame:
            raise OversizeError(f"{str(type_name)[:40]!r} envelope of {len(raw)} bytes is over its {cap.max_frame}-byte cap")
        if blob_size is not None:
            if not isinstance(blob_size, int) or isinstance(blob_size, bool) or blob_size < 0:
                raise FrameError(f"blob size {str(blob_size)[:20]!r} is not a byte count")
            if blob_size > cap.max_blob:
                raise OversizeError(f"{str(type_name)[:40]!r} blob of {blob_size} bytes is over its {cap.max_blob}-byte cap")
        return decode_obj(body, expected), blob_size

    async def read_message(
        self, expected: tuple[type[WireModel], ...] | None = None,
        cap_of: Callable[[str], RpcCap] = rpc_cap,
    ) -> tuple[WireModel, bytes | None]:
        """Read one envelope and its blob, if any (both within the type's caps)."""
        msg, blob_size = await self.read_envelope(expected, cap_of)
        blob = await self.read_blob(blob_size) if blob_size is not None else None
        return msg, blob

    async def read_blob(self, size: int) -> bytes:
        """A blob of exactly ``size`` bytes, in frames of at most :data:`BLOB_CHUNK`."""
        out = bytearray()
        while len(out) < size:
            chunk = await self.read_frame(max_size=BLOB_CHUNK)
            if not chunk or len(out) + len(chunk) > size:
                raise FrameError("blob chunk overruns its declared size")
            out += chunk
        return bytes(out)


def pack_frame(data: bytes) -> bytes:
    """``data`` with its 4-byte length in front."""
    return _LEN.pack(len(data)) + data


async def write_message(
    stream: Stream, msg: WireModel, blob: bytes | None, timeout: float
) -> None:
    """Write one envelope (and its blob in chunks), each write bounded by ``timeout``."""
    env: dict[str, Any] = {"m": json.loads(encode(msg)), "b": None if blob is None else len(blob)}
    payload = pack_frame(json.dumps(env, separators=(",", ":")).encode())
    with trio.fail_after(timeout):
        await stream.write(payload)
    if blob:
        view = memoryview(blob)
        for start in range(0, len(view), BLOB_CHUNK):
            with trio.fail_after(timeout):
                await stream.write(pack_frame(bytes(view[start : start + BLOB_CHUNK])))


__all__ = ["BLOB_CHUNK", "MAX_FRAME", "FrameError", "FrameReader", "OversizeError", "WireError", "pack_frame",
           "write_message"]
