"""Quotes: the escrow a job needs, exact integers in contract units."""

from __future__ import annotations

import pytest
from _market_helpers import make_bid, wallet

from fedswarm.market.pricing import quote
from fedswarm.market.selection import JobRequirements, Selection, make_policy

ETH = 10**18


def test_quote_arithmetic_is_exact():
    # Prepare: prices that floats could not hold exactly (above 2**53)
    p1, p2, p3 = 3 * ETH + 1, 7 * ETH + 3, 11 * ETH + 7
    sel = Selection(chosen=[make_bid(1, p1), make_bid(2, p2)], standby=[make_bid(3, p3)])

    # Execute
    q = quote(sel, rounds=5, reassign_reserve_units=2)

    # Assert
    assert q.total_wei == (p1 + p2) * 5 + p3 * 2
    assert isinstance(q.total_wei, int)
    assert q.breakdown == {"trainers_wei": (p1 + p2) * 5, "standby_wei": p3 * 2,
                           "trainer_units": 10, "standby_units": 2}
    assert [(t.role, t.price_wei, t.max_units, t.reserved_wei) for t in q.trainers] == [
        ("trainer", p1, 5, p1 * 5), ("trainer", p2, 5, p2 * 5), ("standby", p3, 2, p3 * 2)]
    assert sum(t.reserved_wei for t in q.trainers) == q.total_wei
    assert q.add_trainers_args() == (
        [wallet(1).address, wallet(2).address, wallet(3).address], [p1, p2, p3], [5, 5, 2])
    d = q.to_dict()
    assert d["total_wei"] == q.total_wei and d["trainers"][2]["role"] == "standby"


def test_standbys_without_reserve_are_not_registered():
    sel = Selection(chosen=[make_bid(1, 100)], standby=[make_bid(2, 50)])
    q = quote(sel, rounds=3, reassign_reserve_units=0)
    assert q.total_wei == 300
    # The contract reverts on maxUnits == 0: such a standby is left out of addTrainers.
    assert q.add_trainers_args() == ([wallet(1).address], [100], [3])


def test_quote_of_a_real_selection():
    bids = [make_bid(n, 1000 * n) for n in range(1, 6)]
    sel = make_policy().select(bids, JobRequirements(trainers=3, standby=1, price_cap_wei=10**6), {})
    q = quote(sel, rounds=4, reassign_reserve_units=3)
    assert q.total_wei == (1000 + 2000 + 3000) * 4 + 4000 * 3


@pytest.mark.parametrize(
    ("rounds", "reserve", "match"),
    [(0, 1, "rounds must be a positive integer"), (2.0, 1, "rounds must be"),
     (True, 1, "rounds must be"), (1, -1, "reassign_reserve_units must be"),
     (1 << 32, 0, "at most 4294967295 units")],
)
def test_bad_quote_arguments(rounds, reserve, match):
    sel = Selection(chosen=[make_bid(1, 100)])
    with pytest.raises(ValueError, match=match):
        quote(sel, rounds, reserve)


def test_empty_selection_cannot_be_quoted():
    with pytest.raises(ValueError, match="without chosen trainers"):
        quote(Selection(), 1, 0)
