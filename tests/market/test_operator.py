"""Operator-signed announcements, assignments and refusals: what verifies and what must not."""

from __future__ import annotations

import pytest
from eth_account import Account

from fedswarm.market.operator import (
    SignatureError,
    sign_announcement,
    sign_assignment,
    sign_refusal,
    tagged_message,
    verify_announcement,
    verify_assignment,
    verify_refusal,
)

OPERATOR = Account.create()
OTHER = Account.create()
CONTRACT = "0x" + "ab" * 20
H = "11" * 32


def _assignment(**over: object) -> dict[str, object]:
    fields: dict[str, object] = dict(job_key=H, contract=CONTRACT, chain_id=31337, round_=2, unit=5,
                                     trainer=OTHER.address, deadline=1_700_000_000.7,
                                     global_sha256="22" * 32, chunk_sha256s=["33" * 32])
    fields.update(over)
    return fields


def test_announcement_binds_peer_chain_and_contract() -> None:
    # Prepare
    sig = sign_announcement(OPERATOR, "job-1", "QmPeerAbcdefghij", 31337, CONTRACT)
    # Execute / Assert
    verify_announcement(OPERATOR.address, sig, "job-1", "QmPeerAbcdefghij", 31337, CONTRACT)
    for args in [("job-2", "QmPeerAbcdefghij", 31337, CONTRACT),
                 ("job-1", "QmOtherAbcdefghij", 31337, CONTRACT),
                 ("job-1", "QmPeerAbcdefghij", 296, CONTRACT),
                 ("job-1", "QmPeerAbcdefghij", 31337, "0x" + "cd" * 20)]:
        with pytest.raises(SignatureError):
            verify_announcement(OPERATOR.address, sig, *args)
    with pytest.raises(SignatureError, match="not the job's operator"):
        verify_announcement(OTHER.address, sig, "job-1", "QmPeerAbcdefghij", 31337, CONTRACT)


@pytest.mark.parametrize("change", [dict(unit=6), dict(round_=3), dict(trainer=OPERATOR.address),
                                    dict(deadline=1_700_000_100), dict(chunk_sha256s=["44" * 32]),
                                    dict(global_sha256="55" * 32), dict(chain_id=296)])
def test_assignment_signature_covers_every_field(change: dict[str, object]) -> None:
    sig = sign_assignment(OPERATOR, **_assignment())
    verify_assignment(OPERATOR.address, sig, **_assignment())
    with pytest.raises(SignatureError):
        verify_assignment(OPERATOR.address, sig, **_assignment(**change))


def test_a_stranger_cannot_assign() -> None:
    sig = sign_assignment(OTHER, **_assignment())
    with pytest.raises(SignatureError, match="not the job's operator"):
        verify_assignment(OPERATOR.address, sig, **_assignment())


def test_refusal_and_malformed_inputs() -> None:
    sig = sign_refusal(OPERATOR, H, 1, 2, OTHER.address, "66" * 32, "reassigned")
    verify_refusal(OPERATOR.address, sig, H, 1, 2, OTHER.address, "66" * 32, "reassigned")
    with pytest.raises(SignatureError):
        verify_refusal(OPERATOR.address, sig, H, 1, 2, OTHER.address, "66" * 32, "unknown")
    with pytest.raises(SignatureError, match="65 bytes"):
        verify_refusal(OPERATOR.address, "0x1234", H, 1, 2, OTHER.address, "66" * 32, "reassigned")
    with pytest.raises(SignatureError, match="cannot be signed"):
        tagged_message(b"d", ["a|b"])  # the separator can never hide inside a field
