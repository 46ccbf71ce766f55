"""What a job's operator (the client node) signs with its wallet, and how trainers check it.

On chain a job names an **operator**: the address that signs receipts and settles. Off chain
the same wallet signs three things a trainer relies on before it spends compute:

- the **announcement** (job id, the client's peer id, chain, contract): binds the libp2p peer
  that announced the job to the EVM address the trainer will find as the job's operator;
- each **assignment** (job key, round, unit, trainer, deadline, the hashes of what to train
  on): a trainer works only on units the operator assigned to it, so a unit nobody assigned
  never gets a receipt, and a stranger cannot make a trainer work;
- a **refusal** of a delivery (a unit already reassigned, or unknown): proof the trainer was
  told, which is not a reason to stop working for the job.

Receipts are EIP-712 typed data because the contract verifies them (``ledger.receipts``);
these three are only checked off chain, so they use EIP-191 personal messages over a
domain-tagged, ``|``-separated encoding whose fields are validated so that two different
statements never produce the same bytes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount

ANNOUNCE_DOMAIN = b"fedswarm-announce/1"
ASSIGN_DOMAIN = b"fedswarm-assign/1"
REFUSE_DOMAIN = b"fedswarm-refuse/1"

# Every field is restricted to characters that cannot contain the "|" separator.
_FIELD = re.compile(r"^[A-Za-z0-9_.:+-]{1,200}$")
_HEX32 = re.compile(r"^[0-9a-f]{64}$")
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_SIGNATURE = re.compile(r"^(0x)?[0-9a-fA-F]{130}$")


class SignatureError(ValueError):
    """A statement that must not be trusted; the message is one line saying why."""


def tagged_message(domain: bytes, fields: Sequence[str | int]) -> bytes:
    """The canonical bytes for ``fields`` under ``domain`` (``domain|f1|f2|...``).

    Raises :class:`SignatureError` when a field holds characters that would make the encoding
    ambiguous.
    """
    out = []
    for value in fields:
        text = str(value) if not isinstance(value, bool) else ("1" if value else "0")
        if not _FIELD.match(text):
            raise SignatureError(f"field {text[:24]!r} cannot be signed (allowed: A-Za-z0-9_.:+-)")
        out.append(text)
    return domain + b"|" + "|".join(out).encode("ascii")


def sign_tagged(wallet: LocalAccount, domain: bytes, fields: Sequence[str | int]) -> str:
    """Sign ``fields`` under ``domain`` with ``wallet`` (EIP-191); ``0x``-prefixed hex."""
    signed = wallet.sign_message(encode_defunct(primitive=tagged_message(domain, fields)))
    return "0x" + bytes(signed.signature).hex()


def recover_tagged(domain: bytes, fields: Sequence[str | int], signature: str) -> str:
    """The checksummed address that signed ``fields`` under ``domain``.

    Raises :class:`SignatureError` when the signature is malformed or invalid.
    """
    if not isinstance(signature, str) or not _SIGNATURE.match(signature):
        raise SignatureError("signature is not 65 bytes of hex")
    raw = bytes.fromhex(signature[2:] if signature[:2].lower() == "0x" else signature)
    try:
        return Account.recover_message(encode_defunct(primitive=tagged_message(domain, fields)),
                                       signature=raw)
    except Exception as exc:  # eth_keys raises several types for an invalid v/r/s
        raise SignatureError(f"signature is invalid ({type(exc).__name__})") from None


def _check_signer(what: str, signer: str, expected: str) -> None:
    if not _ADDRESS.match(expected or ""):
        raise SignatureError(f"{what}: expected signer {expected!r} is not an address")
    if signer.lower() != expected.lower():
        raise SignatureError(f"{what} is signed by {signer}, not the job's operator {expected}")


# ----------------------------------------------------------------------------- announcement

def announcement_fields(job_id: str, client_peer_id: str, chain_id: int, contract: str) -> list[str | int]:
    """What an operator signs when it announces a job."""
    return [job_id, client_peer_id, int(chain_id), contract.lower()]


def sign_announcement(wallet: LocalAccount, job_id: str, client_peer_id: str, chain_id: int,
                      contract: str) -> str:
    """The operator's signature on a job announcement."""
    return sign_tagged(wallet, ANNOUNCE_DOMAIN, announcement_fields(job_id, client_peer_id, chain_id, contract))


def verify_announcement(operator: str, signature: str, job_id: str, client_peer_id: str,
                        chain_id: int, contract: str) -> None:
    """Check that ``operator`` announced ``job_id`` from ``client_peer_id``; raises SignatureError."""
    signer = recover_tagged(ANNOUNCE_DOMAIN, announcement_fields(job_id, client_peer_id, chain_id, contract),
                            signature)
    _check_signer("announcement", signer, operator)


# ----------------------------------------------------------------------------- assignment

def assignment_fields(job_key: str, contract: str, chain_id: int, round_: int, unit: int,
                      trainer: str, deadline: float, global_sha256: str,
                      chunk_sha256s: Sequence[str]) -> list[str | int]:
    """What an operator signs when it assigns a unit: who trains what, for which job, by when."""
    for h in [job_key, global_sha256, *chunk_sha256s]:
        if not _HEX32.match(h):
            raise SignatureError(f"assignment hash {h[:24]!r} is not 32 bytes of lowercase hex")
    if not _ADDRESS.match(trainer):
        raise SignatureError(f"assignment trainer {trainer[:24]!r} is not an address")
    return [job_key, contract.lower(), int(chain_id), int(round_), int(unit), trainer.lower(),
            int(deadline), global_sha256, "+".join(chunk_sha256s)]


def sign_assignment(wallet: LocalAccount, **fields: object) -> str:
    """The operator's signature on one assignment (keywords as :func:`assignment_fields`)."""
    return sign_tagged(wallet, ASSIGN_DOMAIN, assignment_fields(**fields))  # type: ignore[arg-type]


def verify_assignment(operator: str, signature: str, **fields: object) -> None:
    """Check the operator signed this assignment; raises :class:`SignatureError`."""
    signer = recover_tagged(ASSIGN_DOMAIN, assignment_fields(**fields), signature)  # type: ignore[arg-type]
    _check_signer("assignment", signer, operator)


# ----------------------------------------------------------------------------- refusal

def refusal_fields(job_key: str, round_: int, unit: int, trainer: str, update_sha256: str,
                   reason_code: str) -> list[str | int]:
    """What an operator signs when it refuses a delivery (``reason_code``: a short slug)."""
    if not _HEX32.match(job_key) or not _HEX32.match(update_sha256):
        raise SignatureError("refusal hashes must be 32 bytes of lowercase hex")
    return [job_key, int(round_), int(unit), trainer.lower(), update_sha256, reason_code]


def sign_refusal(wallet: LocalAccount, job_key: str, round_: int, unit: int, trainer: str,
                 update_sha256: str, reason_code: str) -> str:
    """The operator's signature on a refused delivery."""
    return sign_tagged(wallet, REFUSE_DOMAIN,
                       refusal_fields(job_key, round_, unit, trainer, update_sha256, reason_code))


def verify_refusal(operator: str, signature: str, job_key: str, round_: int, unit: int,
                   trainer: str, update_sha256: str, reason_code: str) -> None:
    """Check the operator signed this refusal; raises :class:`SignatureError`."""
    signer = recover_tagged(REFUSE_DOMAIN,
                            refusal_fields(job_key, round_, unit, trainer, update_sha256, reason_code),
                            signature)
    _check_signer("refusal", signer, operator)
