"""The RPC server of a node: one request per libp2p stream, read within the peer limits.

Each inbound stream is admitted by :class:`~fedswarm.p2p.limits.PeerLimits` (banned, busy or
over its rate: refused), its envelope and blob are read within their type's caps before being
buffered, and its reply blob may not be larger than the request's. Invalid frames and messages
cost their sender a strike (:meth:`~fedswarm.p2p.gate.Gate.strike`).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from fedswarm.p2p.framing import FrameError, FrameReader, OversizeError, write_message
from fedswarm.p2p.gate import Gate
from fedswarm.p2p.limits import PeerLimits
from fedswarm.protocol.messages import ErrorReply, WireError, WireModel

log = logging.getLogger("fedswarm.p2p")

BLOB_MIN_RATE = 1 << 20  # bytes/s a request blob must at least arrive at (slow senders are cut)
RpcHandler = Callable[[str, Any, bytes | None], Awaitable[tuple[WireModel, bytes | None]]]


class RpcError(Exception):
    """A peer answered an RPC with a structured error (or did not answer in time)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Rejected(Exception):
    """Raised by an RPC handler to answer with a structured ``rejected``/``forbidden`` error."""

    def __init__(self, message: str, code: str = "rejected") -> None:
        super().__init__(message)
        self.code = code


async def reset_stream(stream: Any) -> None:
    """Reset ``stream``, ignoring every failure (it may be gone already)."""
    try:
        with trio.move_on_after(2):
            await stream.reset()
    except Exception:
        pass


class RpcServer:
    """Serves the RPC requests that reach one node (see the module docstring)."""

    def __init__(self, limits: PeerLimits, gate: Gate, stats: collections.Counter[str], timeout: float) -> None:
        self.limits = limits
        self.gate = gate
        self.stats = stats
        self.timeout = timeout
        self._handlers: dict[type, RpcHandler] = {}

    def on(self, msg_type: type[WireModel], handler: RpcHandler) -> None:
        """Serve requests of ``msg_type`` with ``handler(peer_id, msg, blob) -> (reply, blob)``."""
        self._handlers[msg_type] = handler

    async def handle_stream(self, stream: Any) -> None:
        """The libp2p stream handler of the RPC protocol: one request per stream."""
        # Nothing may escape this function: an exception here kills the process (notes, item 1).
        peer = "?"
        admitted = False
        try:
            peer = stream.muxed_conn.peer_id.to_base58()
            refusal = self.limits.open_stream(peer)
            if refusal == "banned":
                await reset_stream(stream)
                return
            if refusal is not None:
                await self._reply(stream, ErrorReply(code="busy", message=f"too many requests from you ({refusal})"))
                return
            admitted = True
            await self._serve_rpc(peer, stream)
        except OversizeError as exc:
            self.gate.strike(peer, "rpc_oversize")
            log.debug("oversized RPC from %s: %s", peer, exc)
            await self._reply(stream, ErrorReply(code="too_large", message=str(exc)[:1000]))
        except WireError as exc:
            self.gate.strike(peer, "rpc_bad_request")
            await self._reply(stream, ErrorReply(code="bad_request", message=str(exc)[:1000]))
        except FrameError as exc:
            self.gate.strike(peer, "rpc_bad_frame")
            log.debug("bad RPC frame from %s: %s", peer, exc)
            await reset_stream(stream)
        except Exception as exc:  # timeouts, resets, anything a hostile peer can cause
            self.stats["rpc_stream_error"] += 1
            log.debug("RPC stream from %s failed: %r", peer, exc)
            await reset_stream(stream)
        finally:
            if admitted:
                self.limits.close_stream(peer)

    async def _serve_rpc(self, peer: str, stream: Any) -> None:
        """Read one request within its type's caps, run its handler, answer. A reply's blob is
        never larger than the request's (no amplification)."""
        reader = FrameReader(stream, self.timeout)
        with trio.fail_after(self.timeout):
            msg, blob_size = await reader.read_envelope()
        handler = self._handlers.get(type(msg))
        if handler is None:
            self.gate.strike(peer, "rpc_unknown_type")
            await self._reply(stream, ErrorReply(code="unknown_type", message=f"no handler for {msg.TYPE}"))
            return
        reserved = blob_size or 0
        if reserved and not self.limits.reserve_blob(reserved):
            await self._reply(stream, ErrorReply(code="busy", message="too many large requests at once; retry later"))
            return
        try:
            blob = None
            if blob_size is not None:
                with trio.fail_after(self.timeout + blob_size / BLOB_MIN_RATE):
                    blob = await reader.read_blob(blob_size)
            try:
                reply, rblob = await handler(peer, msg, blob)
            except Rejected as exc:
                reply, rblob = ErrorReply(code=exc.code, message=str(exc)[:1000]), None  # type: ignore[arg-type]
            except Exception:
                log.exception("RPC handler for %s from %s failed", msg.TYPE, peer)
                self.stats["rpc_handler_error"] += 1
                reply, rblob = ErrorReply(code="internal", message="handler failed"), None
            if rblob is not None and len(rblob) > len(blob or b""):
                self.limits.counters["rpc_reply_too_large"] += 1
                log.error("RPC handler for %s built a %d-byte reply blob for a %d-byte request: refused",
                          msg.TYPE, len(rblob), len(blob or b""))
                reply, rblob = ErrorReply(code="internal", message="reply larger than the request"), None
            self.stats["rpc_served"] += 1
            await self._reply(stream, reply, rblob)
        finally:
            if reserved:
                self.limits.release_blob(reserved)

    async def _reply(self, stream: Any, msg: WireModel, blob: bytes | None = None) -> None:
        """Answer and close; a stream that cannot take the answer is reset."""
        try:
            await write_message(stream, msg, blob, self.timeout)
            with trio.move_on_after(self.timeout):
                await stream.close()
        except Exception:
            await reset_stream(stream)


__all__ = ["RpcError", "RpcHandler", "RpcServer", "Rejected", "reset_stream"]
