"""The market: signed bids, trainer selection, reputation from chain history, escrow quotes.

Pure logic (no I/O): roles feed it verified bids and ledger events and act on its answers.
"""

from fedswarm.market.bids import (
    BID_DOMAIN,
    BidError,
    BidLike,
    bid_message,
    recover_bid_address,
    sign_bid,
    verify_bid,
)
from fedswarm.market.pricing import Quote, TrainerQuote, quote
from fedswarm.market.reputation import (
    NEW_TRAINER,
    ClientRecord,
    Reputation,
    ReputationPolicy,
    SettlementBook,
    SettlementRecord,
    client_records,
    client_refusal,
    reputation_from_events,
    trainer_reputation,
)
from fedswarm.market.selection import (
    CheapestReputable,
    JobRequirements,
    Selection,
    SelectionError,
    SelectionPolicy,
    make_policy,
)

__all__ = [
    "BID_DOMAIN",
    "NEW_TRAINER",
    "BidError",
    "BidLike",
    "ClientRecord",
    "CheapestReputable",
    "JobRequirements",
    "Quote",
    "Reputation",
    "ReputationPolicy",
    "Selection",
    "SelectionError",
    "SelectionPolicy",
    "SettlementBook",
    "SettlementRecord",
    "TrainerQuote",
    "bid_message",
    "client_records",
    "client_refusal",
    "make_policy",
    "quote",
    "recover_bid_address",
    "reputation_from_events",
    "sign_bid",
    "trainer_reputation",
    "verify_bid",
]
