"""The per-job manifest: which encrypted chunks exist, how big, their hashes, schema and
preprocessing, signed by the client's node key (Ed25519, libp2p key format).

Trainers check a chunk they download against its entry (ciphertext size and sha256) and the
manifest against the client's peer id, so a store that swaps or truncates objects is caught
before any decryption or training. Signing covers a canonical JSON encoding (sorted keys, no
whitespace, UTF-8) prefixed with a domain tag, so the signature cannot be replayed as any other
fedswarm message.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fedswarm.protocol.decode import MAX_MANIFEST, DecodeError, decode_model
from fedswarm.protocol.preprocessing import Preprocessing

MANIFEST_VERSION = 1
_DOMAIN = b"fedswarm/manifest/v1\n"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class ManifestError(ValueError):
    """A manifest is malformed, or its signature or signer does not verify."""


class ChunkEntry(BaseModel):
    """One encrypted chunk object in the store."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    chunk_id: str
    object_key: str = Field(min_length=1, max_length=1024)
    rows: int = Field(ge=0)
    plaintext_size: int = Field(ge=0)
    ciphertext_size: int = Field(ge=0)
    ciphertext_sha256: str

    @field_validator("chunk_id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not _ID.match(v):
            raise ValueError("chunk id must be 1-128 chars of letters, digits, . _ : -")
        return v

    @field_validator("ciphertext_sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not _HEX64.match(v):
            raise ValueError("ciphertext_sha256 must be 64 lowercase hex characters")
        return v


class DatasetSchema(BaseModel):
    """Columns of the training data as the trainer sees them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    features: list[str] = Field(min_length=1)
    label: str
    task: Literal["classification", "regression"]
    num_classes: int = Field(default=0, ge=0)


class Manifest(BaseModel):
    """Everything a trainer needs to fetch and check the job's data (keys are sent separately)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = MANIFEST_VERSION
    job_id: str
    chunks: list[ChunkEntry] = Field(min_length=1, max_length=100_000)
    data_schema: DatasetSchema
    preprocessing: Preprocessing
    train_rows: int = Field(ge=0)
    validation_rows: int = Field(ge=0)

    @field_validator("job_id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not _ID.match(v):
            raise ValueError("job id must be 1-128 chars of letters, digits, . _ : -")
        return v

    @field_validator("chunks")
    @classmethod
    def _unique(cls, v: list[ChunkEntry]) -> list[ChunkEntry]:
        if len({c.chunk_id for c in v}) != len(v):
            raise ValueError("chunk ids must be unique")
        return v

    def chunk(self, chunk_id: str) -> ChunkEntry:
        """The entry of ``chunk_id``; :class:`ManifestError` if the job has no such chunk."""
        for c in self.chunks:
            if c.chunk_id == chunk_id:
                return c
        raise ManifestError(f"job {self.job_id} has no chunk {chunk_id!r}")

    def canonical_bytes(self) -> bytes:
        """The exact bytes that are signed."""
        return _DOMAIN + canonical_json(self.model_dump(mode="json"))


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8; floats as Python's shortest round-trip repr."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


class SignedManifest(BaseModel):
    """A manifest with the client's public node key (libp2p protobuf, hex) and signature."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    manifest: Manifest
    signer_public_key: str
    signature: str

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, data: str | bytes) -> SignedManifest:
        """Parse through the bounded decoder (at most :data:`MAX_MANIFEST` bytes, nesting
        capped); :class:`ManifestError` with the first problem on bad input."""
        try:
            return decode_model(cls, data, max_bytes=MAX_MANIFEST, what="manifest")
        except DecodeError as exc:
            raise ManifestError(str(exc)) from None


def sign_manifest(manifest: Manifest, key_pair: Any) -> SignedManifest:
    """Sign with a libp2p key pair (``Identity.key_pair()``)."""
    sig = key_pair.private_key.sign(manifest.canonical_bytes())
    return SignedManifest(
        manifest=manifest,
        signer_public_key=key_pair.public_key.serialize().hex(),
        signature=bytes(sig).hex(),
    )


def signer_peer_id(signed: SignedManifest) -> str:
    """The peer id (``12D3KooW...``) of the key that claims to have signed."""
    from libp2p.peer.id import ID

    return ID.from_pubkey(_public_key(signed)).to_base58()


def _public_key(signed: SignedManifest) -> Any:
    from libp2p.crypto.serialization import deserialize_public_key

    try:
        return deserialize_public_key(bytes.fromhex(signed.signer_public_key))
    except Exception:
        raise ManifestError("manifest signer key is not a valid libp2p public key") from None


def verify_manifest(signed: SignedManifest, expected_peer_id: str | None = None) -> Manifest:
    """Check the signature (and, if given, that the signer is ``expected_peer_id``).

    Returns the manifest; raises :class:`ManifestError` otherwise. Trainers should always pass
    the peer id of the client they are working for.
    """
    pub = _public_key(signed)
    try:
        sig = bytes.fromhex(signed.signature)
        ok = pub.verify(signed.manifest.canonical_bytes(), sig)
    except Exception:
        ok = False
    if not ok:
        raise ManifestError(f"manifest signature for job {signed.manifest.job_id} does not verify")
    if expected_peer_id is not None:
        actual = signer_peer_id(signed)
        if actual != expected_peer_id:
            raise ManifestError(
                f"manifest for job {signed.manifest.job_id} is signed by {actual}, not by the "
                f"job's client {expected_peer_id}"
            )
    return signed.manifest
