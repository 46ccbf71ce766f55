"""Which connected peers count as silent long enough to lose their connections (pure logic)."""

from __future__ import annotations

import pytest

from fedswarm.api.runtime import _node_opts
from fedswarm.config import load_settings
from fedswarm.p2p.presence import SilenceWatch, drop_after
from fedswarm.protocol.messages import Role

AFTER = 12.0


def test_the_bound_defaults_to_three_peer_timeouts_and_never_undercuts_one() -> None:
    assert drop_after(4.0) == 12.0
    assert drop_after(4.0, 30.0) == 30.0
    # Below a peer timeout a client could still count on the peer while its links are gone.
    assert drop_after(4.0, 2.0) == 5.0


def test_the_setting_reaches_the_node(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "peer_drop_after" not in _node_opts(Role.BOOTSTRAP, {}, load_settings())
    monkeypatch.setenv("FEDSWARM_PEER_DROP_S", "40")
    assert _node_opts(Role.BOOTSTRAP, {}, load_settings())["peer_drop_after"] == 40.0


def test_a_peer_heard_long_ago_is_silent_once_we_heard_the_others_as_long() -> None:
    w = SilenceWatch()
    seen = {"a": 100.0, "b": 100.0}
    assert w.silent(100.0, ["a", "b"], seen.get, hearing_for=50.0, after=AFTER) == []
    seen["b"] = 111.0  # b keeps talking, a says nothing
    assert w.silent(111.0, ["a", "b"], seen.get, hearing_for=61.0, after=AFTER) == []
    seen["b"] = 113.0
    assert w.silent(113.0, ["a", "b"], seen.get, hearing_for=63.0, after=AFTER) == ["a"]


def test_our_own_outage_silences_nobody() -> None:
    w = SilenceWatch()
    seen = {"a": 100.0}
    w.silent(100.0, ["a"], seen.get, hearing_for=50.0, after=AFTER)
    # Our link was down from 101 to 140: we heard nobody; back now, hearing for 2 s.
    assert w.silent(142.0, ["a"], seen.get, hearing_for=2.0, after=AFTER) == []
    # a still says nothing while the others are heard again: silent once we heard them 12 s.
    assert w.silent(152.0, ["a"], seen.get, hearing_for=12.0, after=AFTER) == []
    assert w.silent(152.5, ["a"], seen.get, hearing_for=12.5, after=AFTER) == ["a"]


def test_a_new_connection_is_not_judged_by_an_old_record() -> None:
    w = SilenceWatch()
    seen = {"a": 100.0}  # its record from before it was dropped
    w.silent(200.0, [], seen.get, hearing_for=100.0, after=AFTER)
    # It dialled again at 200 and has not sent a heartbeat yet: not silent for another 12 s.
    assert w.silent(200.0, ["a"], seen.get, hearing_for=100.0, after=AFTER) == []
    assert w.silent(211.0, ["a"], seen.get, hearing_for=111.0, after=AFTER) == []
    assert w.silent(213.0, ["a"], seen.get, hearing_for=113.0, after=AFTER) == ["a"]
    w.forget("a")  # its connections were closed; it is still listed until the close completes
    assert w.silent(214.0, ["a"], seen.get, hearing_for=114.0, after=AFTER) == []


def test_a_peer_that_never_speaks_is_silent_from_its_connection_on() -> None:
    w = SilenceWatch()
    none: dict[str, float] = {}
    assert w.silent(10.0, ["x"], none.get, hearing_for=60.0, after=AFTER) == []
    assert w.silent(22.5, ["x"], none.get, hearing_for=72.5, after=AFTER) == ["x"]


def test_a_forgotten_record_keeps_the_time_it_was_last_heard() -> None:
    w = SilenceWatch()
    seen = {"a": 100.0}
    w.silent(100.0, ["a"], seen.get, hearing_for=60.0, after=AFTER)
    del seen["a"]  # the directory forgot it; it is still connected
    assert w.silent(105.0, ["a"], seen.get, hearing_for=65.0, after=AFTER) == []
    assert w.silent(112.5, ["a"], seen.get, hearing_for=72.5, after=AFTER) == ["a"]
