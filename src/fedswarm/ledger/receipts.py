"""Operator-signed receipts (EIP-712) for FedSwarmEscrowV2.

When the client node (the job's operator) takes a trainer's update it signs a :class:`Receipt`
(job key, round, unit, trainer, update hash, time). The trainer can later claim the unit on
chain with it if the operator never settles it. The signature is EIP-712 typed data whose domain
binds it to one contract on one chain (name ``FedSwarmEscrow``, version ``2``, chain id,
contract address), so a receipt pays only for that job, that trainer, on that deployment.

The contract verifies with OpenZeppelin's ECDSA, which refuses high-s (malleable) signatures;
eth-account always produces low-s signatures, and :func:`recover_signer` refuses high-s too,
so both sides accept exactly the same signatures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_keys.exceptions import BadSignature
from eth_utils import keccak, to_checksum_address

DOMAIN_NAME = "FedSwarmEscrow"
DOMAIN_VERSION = "2"
RECEIPT_TYPE = [
    {"name": "jobKey", "type": "bytes32"},
    {"name": "round", "type": "uint32"},
    {"name": "unit", "type": "uint32"},
    {"name": "trainer", "type": "address"},
    {"name": "updateHash", "type": "bytes32"},
    {"name": "issuedAt", "type": "uint64"},
]
RECEIPT_TYPE_STRING = (
    "Receipt(bytes32 jobKey,uint32 round,uint32 unit,address trainer,bytes32 updateHash,uint64 issuedAt)"
)
RECEIPT_TYPEHASH = keccak(text=RECEIPT_TYPE_STRING)
SIGNATURE_LENGTH = 65
# Half the order of secp256k1: signatures with s above it are the malleable twin of a valid one.
SECP256K1_HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_UINT32 = 2**32
_UINT64 = 2**64


class ReceiptError(ValueError):
    """A receipt or its signature is malformed or not signed by whom it should be."""


@dataclass(frozen=True)
class EscrowDomain:
    """Where a receipt is valid: one chain id and one deployed FedSwarmEscrowV2."""

    chain_id: int
    contract: str

    def as_dict(self) -> dict[str, Any]:
        """The EIP-712 domain as eth-account expects it."""
        return {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": int(self.chain_id),
            "verifyingContract": to_checksum_address(self.contract),
        }


@dataclass(frozen=True)
class Receipt:
    """The operator's acknowledgement that it took ``trainer``'s update for (round, unit).

    ``job_key`` and ``update_hash`` are 32 bytes; ``issued_at`` is unix seconds (the contract
    refuses receipts issued after the job closed, and pays them only after the settle window).
    """

    job_key: bytes
    round: int
    unit: int
    trainer: str
    update_hash: bytes
    issued_at: int

    def __post_init__(self) -> None:
        for name in ("job_key", "update_hash"):
            value = getattr(self, name)
            if not isinstance(value, bytes | bytearray) or len(value) != 32:
                raise ReceiptError(f"receipt {name} must be 32 bytes")
        for name, bound in (("round", _UINT32), ("unit", _UINT32), ("issued_at", _UINT64)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < bound:
                raise ReceiptError(f"receipt {name} must be an integer in [0, {bound})")
        try:
            object.__setattr__(self, "trainer", to_checksum_address(self.trainer))
        except (ValueError, TypeError):
            raise ReceiptError(f"receipt trainer {self.trainer!r} is not an address") from None
        object.__setattr__(self, "job_key", bytes(self.job_key))
        object.__setattr__(self, "update_hash", bytes(self.update_hash))

    def message(self) -> dict[str, Any]:
        """The typed-data message (field names as in the contract)."""
        return {
            "jobKey": self.job_key,
            "round": self.round,
            "unit": self.unit,
            "trainer": self.trainer,
            "updateHash": self.update_hash,
            "issuedAt": self.issued_at,
        }

    def as_tuple(self) -> tuple[bytes, int, int, str, bytes, int]:
        """The ``Receipt`` struct as the contract's ABI takes it."""
        return (self.job_key, self.round, self.unit, self.trainer, self.update_hash, self.issued_at)

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (hex strings), e.g. for the wire or a trainer's records."""
        return {
            "job_key": "0x" + self.job_key.hex(),
            "round": self.round,
            "unit": self.unit,
            "trainer": self.trainer,
            "update_hash": "0x" + self.update_hash.hex(),
            "issued_at": self.issued_at,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Receipt:
        """Parse :meth:`to_json` output; raises :class:`ReceiptError` on malformed input."""
        try:
            return cls(
                job_key=_hex32(raw["job_key"]),
                round=raw["round"],
                unit=raw["unit"],
                trainer=raw["trainer"],
                update_hash=_hex32(raw["update_hash"]),
                issued_at=raw["issued_at"],
            )
        except (KeyError, TypeError) as exc:
            raise ReceiptError(f"malformed receipt ({exc})") from None


def typed_data(receipt: Receipt, domain: EscrowDomain) -> dict[str, Any]:
    """The full EIP-712 typed-data document of ``receipt`` (what a wallet would display)."""
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "Receipt": RECEIPT_TYPE,
        },
        "primaryType": "Receipt",
        "domain": domain.as_dict(),
        "message": receipt.message(),
    }


def receipt_digest(receipt: Receipt, domain: EscrowDomain) -> bytes:
    """The 32-byte EIP-712 digest (``keccak(0x1901 ‖ domainSeparator ‖ structHash)``); equal to
    the contract's ``receiptDigest`` view."""
    signable = encode_typed_data(full_message=typed_data(receipt, domain))
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


def sign_receipt(receipt: Receipt, domain: EscrowDomain, operator: LocalAccount) -> bytes:
    """The operator's 65-byte signature (r ‖ s ‖ v, v in {27, 28}, low s) over ``receipt``."""
    signable = encode_typed_data(full_message=typed_data(receipt, domain))
    signed = operator.sign_message(signable)
    sig = bytes(signed.signature)
    assert len(sig) == SIGNATURE_LENGTH
    return sig


def recover_signer(receipt: Receipt, domain: EscrowDomain, signature: bytes) -> str:
    """The address that signed ``receipt`` for ``domain``, with the contract's rules (65 bytes,
    v 27/28, low s); raises :class:`ReceiptError` otherwise."""
    sig = bytes(signature)
    if len(sig) != SIGNATURE_LENGTH:
        raise ReceiptError(f"a receipt signature is {SIGNATURE_LENGTH} bytes, got {len(sig)}")
    s = int.from_bytes(sig[32:64], "big")
    if s > SECP256K1_HALF_N:
        raise ReceiptError("receipt signature has a high s value (malleable): refused")
    if sig[64] not in (27, 28):
        raise ReceiptError(f"receipt signature has v={sig[64]}, expected 27 or 28")
    try:
        signable = encode_typed_data(full_message=typed_data(receipt, domain))
        return str(Account.recover_message(signable, signature=sig))
    except (BadSignature, ValueError) as exc:
        raise ReceiptError(f"receipt signature does not recover ({exc})") from None


def verify_receipt(receipt: Receipt, domain: EscrowDomain, signature: bytes, operator: str) -> None:
    """Raise :class:`ReceiptError` unless ``signature`` is ``operator``'s over ``receipt``."""
    signer = recover_signer(receipt, domain, signature)
    if signer != to_checksum_address(operator):
        raise ReceiptError(f"receipt signed by {signer}, not by the job's operator {operator}")


def malleable_twin(signature: bytes) -> bytes:
    """The other valid ECDSA signature of the same message (s' = n - s, v flipped): ecrecover
    accepts it, OpenZeppelin and :func:`recover_signer` refuse it. For tests."""
    sig = bytes(signature)
    s = int.from_bytes(sig[32:64], "big")
    v = 27 if sig[64] == 28 else 28
    return sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([v])


def _hex32(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ReceiptError("expected a 0x-hex string of 32 bytes")
    try:
        raw = bytes.fromhex(value.removeprefix("0x"))
    except ValueError:
        raise ReceiptError(f"{value!r} is not hex") from None
    if len(raw) != 32:
        raise ReceiptError(f"expected 32 bytes, got {len(raw)}")
    return raw


__all__ = [
    "DOMAIN_NAME",
    "DOMAIN_VERSION",
    "RECEIPT_TYPEHASH",
    "EscrowDomain",
    "Receipt",
    "ReceiptError",
    "malleable_twin",
    "receipt_digest",
    "recover_signer",
    "sign_receipt",
    "typed_data",
    "verify_receipt",
]
