"""Selection: cheapest within the cap, weighted by reputation, capabilities, standbys, errors."""

from __future__ import annotations

import itertools
import random

import pytest
from _market_helpers import cpu, gpu, make_bid, wallet

from fedswarm.market.reputation import Reputation
from fedswarm.market.selection import (
    CheapestReputable,
    JobRequirements,
    SelectionError,
    SelectionPolicy,
    make_policy,
)


def ids(bids):
    return [b.address for b in bids]


def req(trainers=2, standby=0, cap=1000, **kw) -> JobRequirements:
    return JobRequirements(trainers=trainers, standby=standby, price_cap_wei=cap, **kw)


def test_picks_cheapest_within_the_cap():
    # Prepare
    bids = [make_bid(1, 500), make_bid(2, 300), make_bid(3, 2000), make_bid(4, 100)]

    # Execute
    sel = make_policy().select(bids, req(trainers=2, cap=1000), {})

    # Assert
    assert ids(sel.chosen) == [wallet(4).address, wallet(2).address]
    assert sel.standby == []
    reasons = {b.address: r for b, r in sel.rejected}
    assert reasons[wallet(3).address].startswith("over the price cap: 2000 wei > 1000 wei")
    assert reasons[wallet(1).address].startswith("outbid")


def test_standbys_follow_the_chosen_in_order():
    bids = [make_bid(n, 100 * n) for n in range(1, 7)]
    sel = make_policy().select(bids, req(trainers=2, standby=3, cap=10_000), {})
    assert ids(sel.chosen) == [wallet(1).address, wallet(2).address]
    assert ids(sel.standby) == [wallet(3).address, wallet(4).address, wallet(5).address]
    assert [b.address for b, _ in sel.rejected] == [wallet(6).address]


def test_fewer_standbys_than_asked_is_fine():
    bids = [make_bid(1, 10), make_bid(2, 20), make_bid(3, 30)]
    sel = make_policy().select(bids, req(trainers=2, standby=5), {})
    assert len(sel.chosen) == 2 and ids(sel.standby) == [wallet(3).address]


def test_capabilities_are_respected():
    bids = [
        make_bid(1, 10, cpu(ram_mb=1024)),      # cheapest but too little RAM
        make_bid(2, 20, cpu(ram_mb=16384)),     # enough RAM, no GPU
        make_bid(3, 30, gpu(ram_mb=16384)),
        make_bid(4, 40, gpu(ram_mb=65536)),
    ]
    sel = make_policy().select(bids, req(trainers=2, min_ram_mb=8192, needs_gpu=True), {})
    assert ids(sel.chosen) == [wallet(3).address, wallet(4).address]
    reasons = dict((b.address, r) for b, r in sel.rejected)
    assert reasons[wallet(1).address] == "too little RAM: 1024 MB < 8192 MB"
    assert reasons[wallet(2).address] == "no GPU: the job needs one"


def test_reputation_weighting_changes_the_order():
    # Prepare: trainer 1 is cheaper but has a poor record; trainer 2 a good one
    bids = [make_bid(1, 100), make_bid(2, 150), make_bid(3, 180)]
    rep = {
        wallet(1).address.lower(): Reputation(accepted=2, rejected=8, claimed=0),   # 3/12
        wallet(2).address.lower(): Reputation(accepted=48, rejected=0, claimed=0),  # 49/50
    }

    # Execute
    without = make_policy().select(bids, req(trainers=1, standby=2), {})
    with_rep = make_policy().select(bids, req(trainers=1, standby=2), rep)

    # Assert: 100/(1/2)=200 vs 150/(49/50)≈153 vs 180/(1/2)=360 vs 100/(3/12)=400
    assert ids(without.chosen) == [wallet(1).address]
    assert ids(with_rep.chosen + with_rep.standby) == [
        wallet(2).address, wallet(3).address, wallet(1).address]


def test_reputation_lookup_ignores_address_case():
    bids = [make_bid(1, 100), make_bid(2, 150)]
    rep = {wallet(1).address.lower(): Reputation(0, 20, 0)}
    assert ids(make_policy().select(bids, req(trainers=1), rep).chosen) == [wallet(2).address]


def test_min_reputation_filters_and_newcomers_get_the_neutral_prior():
    bids = [make_bid(1, 100), make_bid(2, 200), make_bid(3, 300)]
    rep = {wallet(2).address.lower(): Reputation(9, 0, 0), wallet(3).address.lower(): Reputation(1, 9, 0)}
    sel = make_policy().select(bids, req(trainers=1, standby=1, min_reputation=0.5), rep)
    # Newcomer 1 has exactly 0.5 and qualifies; 3 (2/12) does not.
    assert ids(sel.chosen + sel.standby) == [wallet(1).address, wallet(2).address]
    assert dict((b.address, r) for b, r in sel.rejected)[wallet(3).address].startswith(
        "reputation too low: 0.167 < 0.500 (1 accepted, 9 rejected)")


def test_ties_are_broken_by_speed_then_deterministically():
    # Same price and reputation: GPU beats CPU, more cores beat fewer, then address order.
    bids = [make_bid(1, 100, cpu(cores=4)), make_bid(2, 100, cpu(cores=16)),
            make_bid(3, 100, gpu()), make_bid(4, 100, cpu(cores=4))]
    expected_tail = sorted([wallet(1).address, wallet(4).address], key=str.lower)
    policy = make_policy()
    for perm in itertools.permutations(bids):
        sel = policy.select(list(perm), req(trainers=2, standby=2), {})
        assert ids(sel.chosen + sel.standby) == [wallet(3).address, wallet(2).address, *expected_tail]


def test_measured_speed_breaks_ties_when_present():
    class Timed:
        def __init__(self, bid, speed):
            self._bid, self.speed = bid, speed

        def __getattr__(self, name):
            return getattr(self._bid, name)

    slow_gpu = Timed(make_bid(1, 100, gpu()), 10.0)
    fast_cpu = Timed(make_bid(2, 100, cpu()), 50.0)
    sel = make_policy().select([slow_gpu, fast_cpu], req(trainers=1, standby=1), {})
    assert ids(sel.chosen) == [wallet(2).address]


def test_selection_is_independent_of_input_order():
    rng = random.Random(7)
    bids = [make_bid(n, rng.choice([100, 200, 300])) for n in range(1, 11)]
    rep = {wallet(n).address.lower(): Reputation(rng.randrange(5), rng.randrange(5), 0)
           for n in range(1, 11, 2)}
    first = make_policy().select(bids, req(trainers=3, standby=2), rep)
    for _ in range(5):
        rng.shuffle(bids)
        again = make_policy().select(bids, req(trainers=3, standby=2), rep)
        assert ids(again.chosen) == ids(first.chosen) and ids(again.standby) == ids(first.standby)


def test_duplicate_addresses_keep_the_best_bid():
    # The contract registers an address once: a second, dearer bid from it is dropped.
    bids = [make_bid(1, 300), make_bid(1, 100), make_bid(2, 200)]
    sel = make_policy().select(bids, req(trainers=2), {})
    assert [(b.address, b.price_wei) for b in sel.chosen] == [
        (wallet(1).address, 100), (wallet(2).address, 200)]
    assert [(b.price_wei, r.split(":")[0]) for b, r in sel.rejected] == [(300, "duplicate")]


def test_price_cap_below_every_bid_reads_clearly():
    bids = [make_bid(1, 1500), make_bid(2, 1200), make_bid(3, 4000)]
    with pytest.raises(SelectionError) as err:
        make_policy().select(bids, req(trainers=2, cap=1000), {})
    msg = str(err.value)
    assert "\n" not in msg
    assert "only 0 of 3 bids qualify but the job needs 2 trainer(s)" in msg
    assert "price cap below every bid (cheapest bid 1200 wei, price cap 1000 wei)" in msg
    assert "raise the cap to at least 1200 wei" in msg


def test_too_few_qualified_names_the_reasons():
    bids = [make_bid(1, 100), make_bid(2, 5000), make_bid(3, 200, cpu(ram_mb=10))]
    with pytest.raises(SelectionError) as err:
        make_policy().select(bids, req(trainers=3, cap=1000, min_ram_mb=100), {})
    msg = str(err.value)
    assert msg.startswith("only 1 of 3 bids qualify but the job needs 3 trainer(s)")
    assert "cheapest bid 100 wei, price cap 1000 wei" in msg
    assert "1 over the price cap" in msg and "1 too little RAM" in msg


def test_no_bids_at_all():
    with pytest.raises(SelectionError, match="no bids arrived for a job needing 1 trainer"):
        make_policy().select([], req(trainers=1), {})


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"trainers": 0}, "at least 1 trainer"), ({"standby": -1}, "negative"),
     ({"cap": 0}, "price cap must be positive"), ({"min_reputation": 1.5}, "min_reputation")],
)
def test_bad_requirements(kw, match):
    with pytest.raises(ValueError, match=match):
        req(**kw)


def test_make_policy_names():
    assert isinstance(make_policy("cheapest"), CheapestReputable)
    with pytest.raises(ValueError, match="unknown selection policy 'fastest': choose one of cheapest"):
        make_policy("fastest")


def test_a_custom_policy_overrides_the_hooks_only():
    class DearestFirst(SelectionPolicy):
        name = "dearest"

        def check(self, bid, req, reputation):
            return None

        def rank_key(self, bid, reputation):
            return (-bid.price_wei, bid.address.lower())

    bids = [make_bid(1, 10), make_bid(2, 30), make_bid(3, 20)]
    sel = DearestFirst().select(bids, req(trainers=1, standby=1), {})
    assert ids(sel.chosen + sel.standby) == [wallet(2).address, wallet(3).address]
