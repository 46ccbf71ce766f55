"""Wire messages: pydantic models serialised as JSON, each with a ``type`` and ``version``.

Pubsub messages and RPC requests/responses share one registry so a frame can be parsed by its
``type`` alone; anything that does not parse into its model is rejected (and counted) before any
role logic sees it. Every model forbids unknown fields and caps its sizes.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedswarm.protocol.decode import MAX_RPC_FRAME, DecodeError, decode_json, validation_summary

PROTOCOL_VERSION = 1

PeerIdStr = Annotated[str, Field(min_length=10, max_length=128, pattern=r"^[1-9A-HJ-NP-Za-km-z]+$")]
MultiaddrStr = Annotated[str, Field(min_length=4, max_length=512)]
ShortStr = Annotated[str, Field(max_length=256)]


class Role(StrEnum):
    """What a node does on the network."""

    BOOTSTRAP = "bootstrap"
    CLIENT = "client"
    TRAINER = "trainer"


class WireModel(BaseModel):
    """Base of every message: strict, immutable, versioned."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    TYPE: ClassVar[str] = ""
    version: int = PROTOCOL_VERSION


class WireError(DecodeError):
    """Bytes that are not a valid message (bad JSON, unknown type or version, wrong fields)."""


_REGISTRY: dict[str, type[WireModel]] = {}


def message(type_name: str):
    """Class decorator: register a model under its wire ``type``."""

    def wrap(cls: type[WireModel]) -> type[WireModel]:
        cls.TYPE = type_name
        _REGISTRY[type_name] = cls
        return cls

    return wrap


def encode(msg: WireModel) -> bytes:
    """Serialise ``msg`` as ``{"type": ..., **fields}`` JSON bytes."""
    body = msg.model_dump(mode="json")
    body["type"] = msg.TYPE
    return _dumps(body)


def _dumps(obj: Any) -> bytes:
    import json

    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def decode(data: bytes, expected: tuple[type[WireModel], ...] | None = None, *,
           max_bytes: int = MAX_RPC_FRAME) -> WireModel:
    """Parse bytes into their registered model through the bounded decoder (size and depth
    caps first); :class:`WireError` on anything else."""
    try:
        obj = decode_json(data, max_bytes=max_bytes)
    except DecodeError as exc:
        raise WireError(str(exc)) from None
    return decode_obj(obj, expected)


def decode_obj(obj: Any, expected: tuple[type[WireModel], ...] | None = None) -> WireModel:
    """Parse an already-decoded JSON object into its registered model."""
    if not isinstance(obj, dict):
        raise WireError("message must be a JSON object")
    type_name = obj.pop("type", None)
    if not isinstance(type_name, str) or type_name not in _REGISTRY:
        raise WireError(f"unknown message type {str(type_name)[:40]!r}")
    cls = _REGISTRY[type_name]
    if expected is not None and cls not in expected:
        raise WireError(f"unexpected message type {type_name!r} here")
    if obj.get("version", PROTOCOL_VERSION) != PROTOCOL_VERSION:
        raise WireError(f"unsupported version {str(obj.get('version'))[:10]!r} of {type_name}")
    try:
        return cls.model_validate(obj)
    except ValidationError as exc:
        raise WireError(f"invalid {type_name}: {validation_summary(exc)}") from None


# --- presence and the mesh ------------------------------------------------------------------


class Capabilities(WireModel):
    """What a trainer offers (measured on its machine)."""

    cpu_cores: int = Field(ge=1, le=4096)
    ram_mb: int = Field(ge=0, le=1 << 30)
    gpu_name: ShortStr | None = None
    gpu_memory_mb: int | None = Field(default=None, ge=0, le=1 << 30)
    device: Literal["cpu", "cuda", "mps"] = "cpu"


@message("heartbeat")
class Heartbeat(WireModel):
    """Presence, published on the market topic every second by every node."""

    peer_id: PeerIdStr
    role: Role
    addrs: list[MultiaddrStr] = Field(max_length=16)
    api: ShortStr | None = None
    topics: list[ShortStr] = Field(default_factory=list, max_length=256)
    capabilities: Capabilities | None = None
    price_wei: int | None = Field(default=None, ge=0, lt=1 << 128)
    seq: int = Field(ge=0)


class PeerEntry(WireModel):
    """One node in a mesh summary."""

    peer_id: PeerIdStr
    role: Role
    addrs: list[MultiaddrStr] = Field(max_length=16)
    topics: list[ShortStr] = Field(default_factory=list, max_length=256)
    capabilities: Capabilities | None = None
    price_wei: int | None = None
    api: ShortStr | None = None  # the node's advertised API URL (a client's delegate address)
    last_seen: float = 0.0  # the summarizer's own clock: meaningless elsewhere, see age_s
    online: bool = True
    age_s: float = Field(default=0.0, ge=0.0, le=86_400.0)  # seconds since the summarizer heard it


@message("mesh_summary")
class MeshSummary(WireModel):
    """The bootstrap's directory of online nodes, published on the market topic."""

    peers: list[PeerEntry] = Field(max_length=10_000)
    at: float


@message("chat")
class Chat(WireModel):
    """A free-form text message (the seed's `/command publish`)."""

    text: str = Field(max_length=64 * 1024)


# --- RPC ----------------------------------------------------------------------------------


@message("ping")
class Ping(WireModel):
    """Liveness and latency probe. Its answer is a small :class:`Pong`, never a blob: a reply
    is never larger than its request warrants (a blob back needs :class:`EchoBlob`)."""

    nonce: int = Field(default=0, ge=-(1 << 63), lt=1 << 63)


@message("pong")
class Pong(WireModel):
    nonce: int = Field(default=0, ge=-(1 << 63), lt=1 << 63)
    role: Role


@message("mesh_request")
class MeshRequest(WireModel):
    pass


@message("echo_blob")
class EchoBlob(WireModel):
    """Send a streamed blob and get its sha256 and size back, and with ``echo`` the blob
    itself (tests and benchmarks: the reply is as large as the request, never larger)."""

    size: int = Field(ge=0, le=1 << 31)
    echo: bool = False


@message("blob_digest")
class BlobDigest(WireModel):
    size: int
    sha256: str = Field(max_length=64)


@message("error")
class ErrorReply(WireModel):
    """A structured failure answer to an RPC request."""

    code: Literal["bad_request", "unknown_type", "not_found", "forbidden", "busy", "internal",
                  "too_large", "timeout", "rejected"]
    message: str = Field(max_length=1024)


def registry() -> dict[str, type[WireModel]]:
    """Registered wire types (read-only view for tests and docs)."""
    return dict(_REGISTRY)
