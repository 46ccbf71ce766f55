"""Hedera Consensus Service running hash, version 3, byte for byte as the network computes it.

The network (hedera-services ``MerkleTopic.updateRunningHashAndSequenceNumber``) feeds a
``java.io.ObjectOutputStream`` with, in this order::

    writeObject(previousRunningHash)          // byte[48]; 48 zero bytes for a new topic
    writeLong(3)                              // RUNNING_HASH_VERSION
    writeLong(payer.shard) writeLong(payer.realm) writeLong(payer.num)
    writeLong(topic.shard) writeLong(topic.realm) writeLong(topic.num)
    writeLong(consensus.epochSecond) writeInt(consensus.nano)
    writeLong(sequenceNumber)                 // the new (incremented) sequence number
    writeObject(SHA-384(message))             // byte[48]

and hashes the stream's bytes with SHA-384. Those bytes include Java's serialisation framing,
which a plain concatenation misses: the stream header, a class descriptor for ``[B`` before
the first array, the primitives wrapped in a block-data record, and a back-reference to the
class descriptor before the second array. This module writes that framing itself (no JVM);
``tests/ledger/test_runninghash.py`` checks it against OpenJDK's ``ObjectOutputStream``.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

RUNNING_HASH_VERSION = 3
HASH_SIZE = 48  # SHA-384
ZERO_HASH = bytes(HASH_SIZE)

# java.io.ObjectStreamConstants
_STREAM_MAGIC = 0xACED
_STREAM_VERSION = 5
_TC_NULL = 0x70
_TC_REFERENCE = 0x71
_TC_CLASSDESC = 0x72
_TC_BLOCKDATA = 0x77
_TC_ENDBLOCKDATA = 0x78
_TC_ARRAY = 0x75
_TC_BLOCKDATALONG = 0x7A
_SC_SERIALIZABLE = 0x02
_BASE_WIRE_HANDLE = 0x7E0000
# serialVersionUID the JVM computes for byte[] (class name "[B").
_BYTE_ARRAY_SUID = -5984413125824719648
# ObjectOutputStream buffers primitive data in 1024-byte blocks.
_MAX_BLOCK = 1024

_BYTE_ARRAY_CLASSDESC = (
    bytes([_TC_CLASSDESC])
    + struct.pack(">H", 2)
    + b"[B"
    + struct.pack(">q", _BYTE_ARRAY_SUID)
    + bytes([_SC_SERIALIZABLE])
    + struct.pack(">H", 0)  # no fields
    + bytes([_TC_ENDBLOCKDATA])  # no class annotation
    + bytes([_TC_NULL])  # no superclass
)
# The class descriptor is the first object written, so it gets the first handle.
_BYTE_ARRAY_CLASSDESC_REF = bytes([_TC_REFERENCE]) + struct.pack(">I", _BASE_WIRE_HANDLE)


def _block_data(data: bytes) -> bytes:
    """Primitive data as ObjectOutputStream emits it: 1024-byte blocks, each with a header."""
    out = bytearray()
    for i in range(0, len(data), _MAX_BLOCK):
        block = data[i : i + _MAX_BLOCK]
        if len(block) <= 0xFF:
            out += bytes([_TC_BLOCKDATA, len(block)])
        else:
            out += bytes([_TC_BLOCKDATALONG]) + struct.pack(">I", len(block))
        out += block
    return bytes(out)


@dataclass(frozen=True)
class EntityId:
    """A Hedera ``shard.realm.num`` id (account or topic)."""

    shard: int
    realm: int
    num: int

    @classmethod
    def parse(cls, text: str) -> EntityId:
        """Parse ``"0.0.123"``; a ValueError naming the input otherwise."""
        parts = str(text).split(".")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise ValueError(f"not a Hedera entity id (expected shard.realm.num): {text!r}")
        shard, realm, num = (int(p) for p in parts)
        if max(shard, realm, num) >= 2**63:
            raise ValueError(f"entity id component out of range: {text!r}")
        return cls(shard, realm, num)

    def __str__(self) -> str:
        return f"{self.shard}.{self.realm}.{self.num}"


def running_hash_input(
    prev_running_hash: bytes,
    payer: EntityId,
    topic: EntityId,
    consensus_seconds: int,
    consensus_nanos: int,
    sequence_number: int,
    message: bytes,
) -> bytes:
    """The exact bytes the network hashes for one message (Java serialisation included)."""
    primitives = struct.pack(
        ">qqqqqqqqiq",
        RUNNING_HASH_VERSION,
        payer.shard,
        payer.realm,
        payer.num,
        topic.shard,
        topic.realm,
        topic.num,
        consensus_seconds,
        consensus_nanos,
        sequence_number,
    )
    message_hash = hashlib.sha384(message).digest()
    return b"".join(
        [
            struct.pack(">HH", _STREAM_MAGIC, _STREAM_VERSION),
            bytes([_TC_ARRAY]),
            _BYTE_ARRAY_CLASSDESC,
            struct.pack(">i", len(prev_running_hash)),
            prev_running_hash,
            _block_data(primitives),
            bytes([_TC_ARRAY]),
            _BYTE_ARRAY_CLASSDESC_REF,
            struct.pack(">i", len(message_hash)),
            message_hash,
        ]
    )


def next_running_hash(
    prev_running_hash: bytes,
    payer: EntityId,
    topic: EntityId,
    consensus_seconds: int,
    consensus_nanos: int,
    sequence_number: int,
    message: bytes,
) -> bytes:
    """Running hash v3 after appending ``message`` as ``sequence_number`` (48 bytes).

    Parameters: the previous running hash (48 zero bytes before the first message), the payer
    and topic ids, the consensus time split in seconds and nanos, the message's own (new)
    sequence number and its raw bytes (one chunk).
    """
    if not 0 <= consensus_nanos < 1_000_000_000:
        raise ValueError(f"consensus nanos out of range: {consensus_nanos}")
    data = running_hash_input(
        prev_running_hash,
        payer,
        topic,
        consensus_seconds,
        consensus_nanos,
        sequence_number,
        message,
    )
    return hashlib.sha384(data).digest()
