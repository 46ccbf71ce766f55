"""Length-prefixed frames over a libp2p stream, with size caps and deadlines on every read.

A frame is a 4-byte big-endian length then that many bytes. An RPC message is one frame of JSON
``{"m": <message>, "b": <blob size or null>}``; a blob follows as frames of at most
:data:`BLOB_CHUNK` bytes until its declared size is reached. py-libp2p's ``stream.read(n)``
returns *up to* n bytes and raises ``StreamEOF`` at the end, so :class:`FrameReader` buffers.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Protocol

import trio

from fedswarm.protocol.messages import WireError, WireModel, decode_obj, encode

MAX_FRAME = 1 << 20  # JSON frames: 1 MiB is far above any control message
BLOB_CHUNK = 256 * 1024  # measured sweet spot for yamux (notes: 100-200 MB/s at 256 KiB)
MAX_BLOB = 256 << 20
_LEN = struct.Struct(">I")


class FrameError(Exception):
    """The peer sent something that is not a valid frame (too big, truncated, not JSON)."""


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
        (size,) = _LEN.unpack(await self.read_exactly(4))
        if size > max_size:
            raise FrameError(f"frame of {size} bytes is over the {max_size} cap")
        return await self.read_exactly(size)

    async def read_message(
        self, expected: tuple[type[WireModel], ...] | None = None, max_blob: int = MAX_BLOB
    ) -> tuple[WireModel, bytes | None]:
        """Read one envelope and its blob, if any; :class:`FrameError` / ``WireError`` on junk."""
        raw = await self.read_frame()
        try:
            env = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            raise FrameError("envelope is not JSON") from None
        if not isinstance(env, dict) or set(env) - {"m", "b"}:
            raise FrameError("envelope must be {m, b}")
        blob_size = env.get("b")
        if blob_size is not None and (not isinstance(blob_size, int) or not 0 <= blob_size <= max_blob):
            raise FrameError(f"blob size {str(blob_size)[:20]} outside 0..{max_blob}")
        msg = decode_obj(env.get("m"), expected)
        blob = await self.read_blob(blob_size) if blob_size is not None else None
        return msg, blob

    async def read_blob(self, size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            chunk = await self.read_frame(max_size=BLOB_CHUNK)
            if not chunk or len(out) + len(chunk) > size:
                raise FrameError("blob chunk overruns its declared size")
            out += chunk
        return bytes(out)


def pack_frame(data: bytes) -> bytes:
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


__all__ = ["FrameError", "FrameReader", "WireError", "pack_frame", "write_message"]
