"""Signed bids: binding a trainer's peer id, wallet address and box key for one job.

The Noise channel authenticates the peer id, but nothing on libp2p says which EVM
address gets paid or which X25519 key the chunk keys are sealed to. The trainer's wallet signs
(peer id, box key, job id, price) with EIP-191, so a peer cannot claim someone else's address
(it would be paid for work it never did) or substitute another box key, and the client cannot
later pretend the trainer asked a different price.
"""

from __future__ import annotations

import re
from typing import Protocol

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount

from fedswarm.protocol.messages import Capabilities

# Version the domain tag: a change in the signed fields must never verify under old rules.
BID_DOMAIN = b"fedswarm-bid/1"
MAX_PRICE_WEI = (1 << 128) - 1  # the contract stores prices as uint128

# The separator "|" cannot occur in any field these patterns admit, so the encoding is
# injective: two different bids never produce the same signed bytes.
_PEER_ID = re.compile(r"^[1-9A-HJ-NP-Za-km-z]{10,128}$")  # base58, as PeerIdStr
_BOX_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


class BidError(ValueError):
    """A bid that must not be accepted; the message is one line saying why."""


class BidLike(Protocol):
    """What the market needs from a bid (``fedswarm.protocol.job.Bid`` has these fields).

    A bid may also carry ``job_id`` (checked when present) and ``speed`` (a measured
    throughput, higher is faster, used by selection to break price ties).
    """

    peer_id: str
    address: str
    box_public: str
    price_wei: int
    signature: str
    capabilities: Capabilities


def _short(value: object, n: int = 24) -> str:
    text = str(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def bid_message(peer_id: str, box_public_hex: str, job_id: str, price_wei: int) -> bytes:
    """The canonical bytes a trainer's wallet signs for a bid.

    ``fedswarm-bid/1|<peer id>|<box key hex, lowercase>|<job id>|<price in wei, decimal>``.
    Raises :class:`BidError` when a field is malformed (the bytes would be ambiguous otherwise).
    """
    if not isinstance(peer_id, str) or not _PEER_ID.match(peer_id):
        raise BidError(f"bid peer id {_short(peer_id)!r} is not a base58 libp2p peer id")
    if not isinstance(box_public_hex, str) or not _BOX_HEX.match(box_public_hex):
        raise BidError(
            f"bid box key {_short(box_public_hex)!r} is not a 32-byte X25519 key in hex (64 digits)"
        )
    if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
        raise BidError(f"bid job id {_short(job_id)!r} is not 1-64 of [A-Za-z0-9_-]")
    # bool is an int subclass; True must not sign as a price of 1 wei.
    if not isinstance(price_wei, int) or isinstance(price_wei, bool):
        raise BidError(f"bid price {_short(price_wei)!r} is not an integer number of wei")
    if not 0 <= price_wei <= MAX_PRICE_WEI:
        raise BidError(f"bid price {price_wei} wei is outside 0..2^128-1")
    fields = [peer_id, box_public_hex.lower(), job_id, str(price_wei)]
    return BID_DOMAIN + b"|" + "|".join(fields).encode("ascii")


def sign_bid(
    wallet: LocalAccount, peer_id: str, box_public_hex: str, job_id: str, price_wei: int
) -> str:
    """Sign a bid with the trainer's wallet (EIP-191 personal message).

    Returns the 65-byte signature as ``0x``-prefixed hex, the form ``Bid.signature`` carries.
    """
    msg = bid_message(peer_id, box_public_hex, job_id, price_wei)
    signed = wallet.sign_message(encode_defunct(primitive=msg))
    return "0x" + bytes(signed.signature).hex()


def recover_bid_address(bid: BidLike, job_id: str) -> str:
    """The checksummed address whose wallet signed ``bid`` for ``job_id``.

    Raises :class:`BidError` when the fields or the signature are malformed.
    """
    msg = bid_message(bid.peer_id, bid.box_public, job_id, bid.price_wei)
    sig = bid.signature
    sig_hex = sig[2:] if isinstance(sig, str) and sig.startswith(("0x", "0X")) else sig
    if not isinstance(sig_hex, str) or not re.fullmatch(r"[0-9a-fA-F]{130}", sig_hex):
        raise BidError("bid signature is not 65 bytes of hex")
    try:
        return Account.recover_message(encode_defunct(primitive=msg), signature=bytes.fromhex(sig_hex))
    except Exception as exc:  # eth_keys raises several types for an invalid v/r/s
        raise BidError(f"bid signature is invalid ({type(exc).__name__})") from None


def verify_bid(bid: BidLike, expected_peer_id: str, job_id: str) -> None:
    """Check that ``bid`` is a valid offer from ``expected_peer_id`` for ``job_id``.

    ``expected_peer_id`` is the peer the Noise channel authenticated (the RPC sender), never a
    field of the bid itself. Checks, in order: the bid names that peer and this job, the box key
    is 32 bytes of hex, the address is an EVM address, the price is in 1..2^128-1 wei, and the
    wallet signature over (peer id, box key, job id, price) recovers to ``bid.address``.

    Returns None; raises :class:`BidError` with a one-line reason otherwise.
    """
    if bid.peer_id != expected_peer_id:
        raise BidError(
            f"bid names peer {_short(bid.peer_id)} but came from {_short(expected_peer_id)}: "
            "a peer may only bid for itself"
        )
    bid_job = getattr(bid, "job_id", None)
    if bid_job is not None and bid_job != job_id:
        raise BidError(f"bid is for job {_short(bid_job)!r}, not {_short(job_id)!r}")
    if not isinstance(bid.box_public, str) or not _BOX_HEX.match(bid.box_public):
        raise BidError(
            f"bid box key {_short(bid.box_public)!r} is not a 32-byte X25519 key in hex (64 digits)"
        )
    if not isinstance(bid.address, str) or not _ADDRESS.match(bid.address):
        raise BidError(f"bid address {_short(bid.address)!r} is not a 0x-prefixed 20-byte address")
    price = bid.price_wei
    if not isinstance(price, int) or isinstance(price, bool) or price <= 0:
        raise BidError(f"bid price {_short(price)!r} wei must be a positive integer")
    signer = recover_bid_address(bid, job_id)
    if signer.lower() != bid.address.lower():
        # Also what a bid signed for another job, peer, key or price looks like: the bytes
        # differ, so a different (random) address is recovered.
        raise BidError(
            f"bid signature recovers to {signer}, not the claimed address {bid.address} "
            "(signed by another wallet, or for another peer, box key, job or price)"
        )
