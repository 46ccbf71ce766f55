"""Signed bids: the wallet binds peer id, box key, job and price to the EVM address."""

from __future__ import annotations

import pytest
from _market_helpers import JOB, box_hex, make_bid, peer_id, wallet

from fedswarm.market.bids import (
    BID_DOMAIN,
    BidError,
    bid_message,
    recover_bid_address,
    sign_bid,
    verify_bid,
)
from fedswarm.protocol.messages import decode, encode


def test_round_trip_over_the_wire_verifies():
    # Prepare: a bid as the trainer sends it, through the JSON codec the RPC uses
    bid = make_bid(1, 10**15)
    received = decode(encode(bid))

    # Execute / Assert
    verify_bid(received, peer_id(1), JOB)
    assert recover_bid_address(received, JOB) == wallet(1).address


def test_message_is_domain_separated_and_includes_every_field():
    msg = bid_message(peer_id(1), box_hex(1).upper(), JOB, 123)
    assert msg.startswith(BID_DOMAIN + b"|")
    assert msg == b"|".join([BID_DOMAIN, peer_id(1).encode(), box_hex(1).encode(),
                             JOB.encode(), b"123"])
    # Any change in a field changes the bytes.
    assert bid_message(peer_id(1), box_hex(1), JOB, 124) != msg
    assert bid_message(peer_id(2), box_hex(1), JOB, 123) != msg
    assert bid_message(peer_id(1), box_hex(2), JOB, 123) != msg
    assert bid_message(peer_id(1), box_hex(1), JOB + "x", 123) != msg


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("bad|peer", box_hex(1), JOB, 1), "peer id"),
        ((peer_id(1), "ab" * 31, JOB, 1), "box key"),
        ((peer_id(1), box_hex(1), "job|x", 1), "job id"),
        ((peer_id(1), box_hex(1), JOB, -1), "outside"),
        ((peer_id(1), box_hex(1), JOB, 1 << 128), "outside"),
        ((peer_id(1), box_hex(1), JOB, True), "integer"),
        ((peer_id(1), box_hex(1), JOB, 1.5), "integer"),
    ],
)
def test_message_refuses_ambiguous_fields(args, match):
    with pytest.raises(BidError, match=match):
        bid_message(*args)


def test_signature_is_0x_hex_of_65_bytes():
    sig = sign_bid(wallet(1), peer_id(1), box_hex(1), JOB, 7)
    assert sig.startswith("0x") and len(bytes.fromhex(sig[2:])) == 65


def test_forged_signature_is_refused():
    # Prepare: trainer 2's wallet signs but the bid claims trainer 1's address (to get paid)
    bid = make_bid(1, 100, signer=wallet(2))

    # Execute / Assert
    with pytest.raises(BidError, match=f"recovers to {wallet(2).address}, not the claimed"):
        verify_bid(bid, peer_id(1), JOB)


def test_garbage_signature_is_refused():
    bid = make_bid(1, 100, signature="0x" + "00" * 65)
    with pytest.raises(BidError, match="signature is invalid"):
        verify_bid(bid, peer_id(1), JOB)


def test_bid_from_another_peer_is_refused():
    # Peer 2 relays peer 1's (validly signed) bid: the Noise sender is peer 2.
    bid = make_bid(1, 100)
    with pytest.raises(BidError, match="a peer may only bid for itself"):
        verify_bid(bid, peer_id(2), JOB)


def test_peer_id_swapped_after_signing_is_refused():
    # Peer 2 takes peer 1's signed bid and puts its own peer id in: signature no longer matches.
    bid = make_bid(1, 100, peer_id=peer_id(2))
    with pytest.raises(BidError, match="not the claimed address"):
        verify_bid(bid, peer_id(2), JOB)


def test_bid_for_another_job_is_refused():
    bid = make_bid(1, 100, job="other-job")
    with pytest.raises(BidError, match="bid is for job 'other-job', not 'job-7f3a'"):
        verify_bid(bid, peer_id(1), JOB)
    # Relabelled to this job after signing: the signature was over the other job id.
    relabelled = make_bid(1, 100, job="other-job", job_id=JOB)
    with pytest.raises(BidError, match="not the claimed address"):
        verify_bid(relabelled, peer_id(1), JOB)


def test_wrong_address_is_refused():
    bid = make_bid(1, 100, address=wallet(3).address)
    with pytest.raises(BidError, match=f"not the claimed address {wallet(3).address}"):
        verify_bid(bid, peer_id(1), JOB)


def test_swapped_box_key_or_price_is_refused():
    # A man in the middle cannot redirect sealed chunk keys or raise the price.
    with pytest.raises(BidError, match="not the claimed address"):
        verify_bid(make_bid(1, 100, box_public=box_hex(9)), peer_id(1), JOB)
    with pytest.raises(BidError, match="not the claimed address"):
        verify_bid(make_bid(1, 100, price_wei=101), peer_id(1), JOB)


class _LooseBid:
    """A bid object that skipped pydantic validation (verify_bid must not rely on it)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def _loose(**overrides):
    good = make_bid(1, 100)
    fields = good.model_dump()
    fields.update(overrides)
    return _LooseBid(**fields)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"box_public": "ab" * 31}, "box key"),
        ({"box_public": "zz" * 32}, "box key"),
        ({"box_public": "ab" * 33}, "box key"),
        ({"price_wei": 0}, "positive"),
        ({"price_wei": -5}, "positive"),
        ({"address": "0x1234"}, "address"),
        ({"signature": "0xdead"}, "65 bytes"),
    ],
)
def test_malformed_fields_are_refused(overrides, match):
    with pytest.raises(BidError, match=match):
        verify_bid(_loose(**overrides), peer_id(1), JOB)


def test_loose_object_without_job_id_verifies_by_signature():
    bid = _loose()
    del bid.job_id
    verify_bid(bid, peer_id(1), JOB)
    with pytest.raises(BidError, match="not the claimed address"):
        verify_bid(bid, peer_id(1), "another-job")
