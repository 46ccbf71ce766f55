"""The model budget counts loops without running them and never outlives its wall-clock limit."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedswarm.learning.budget import Budget, BudgetExceeded, check_budget
from fedswarm.learning.spec import SpecError, parse_seq_spec


def rnn_spec(seq: int, kind: str = "GRU", layers: int = 1, hidden: int = 1, bidirectional: bool = False,
             features: int = 1) -> Any:
    return parse_seq_spec({"format": "fedswarm-seq/1", "input_shape": [seq, features], "layers": [
        {"type": kind, "input_size": features, "hidden_size": hidden, "num_layers": layers,
         "bidirectional": bidirectional},
        {"type": "Linear", "in_features": hidden * (2 if bidirectional else 1), "out_features": 2}]})


def test_tiny_gru_over_a_million_steps_is_refused_at_once() -> None:
    spec = rnn_spec(1 << 20)
    assert sum(1 for _ in spec.layers) == 2
    t = time.monotonic()
    with pytest.raises(BudgetExceeded, match="1048576 steps"):
        check_budget(spec, 32)
    assert time.monotonic() - t < 5


def test_recurrent_layers_are_counted_not_traced() -> None:
    t = time.monotonic()
    report = check_budget(rnn_spec(2048, "LSTM", layers=2, hidden=8, bidirectional=True), 16)
    assert time.monotonic() - t < 10  # tracing 2048 x 2 x 2 steps op by op takes minutes
    assert report.output_shape == [16, 2]
    # 2 layers x 2 directions x 4 gates: the estimate includes the recurrence's FLOPs
    assert report.flops > 2 * 16 * 2048 * 2 * 4 * 8 * (1 + 8)
    with pytest.raises(BudgetExceeded, match="steps"):
        check_budget(rnn_spec(4096, layers=2, bidirectional=True), 16)  # 16384 steps
    with pytest.raises(BudgetExceeded, match="FLOPs"):
        check_budget(rnn_spec(4096, hidden=512, features=512), 64, Budget(max_flops=10**10))
    with pytest.raises(BudgetExceeded, match="activations"):
        check_budget(rnn_spec(4096, hidden=16), 256, Budget(max_activation_bytes=64 << 20))
    with pytest.raises(SpecError, match="expects"):
        check_budget(rnn_spec(16, features=3).model_copy(update={"input_shape": [16, 4]}), 4)


def test_deadline_stops_a_slow_check() -> None:
    # a deep stack of cheap layers: thousands of dispatched ops
    layers = [{"type": "Linear", "in_features": 8, "out_features": 8}, {"type": "ReLU"}] * 100
    spec = parse_seq_spec({"format": "fedswarm-seq/1", "input_shape": [8], "layers": layers})
    t = time.monotonic()
    with pytest.raises(BudgetExceeded, match="time limit|did not finish"):
        check_budget(spec, 4, deadline_s=0.0)
    assert time.monotonic() - t < 3


layer_st = st.one_of(
    st.builds(lambda o: {"type": "Linear", "in_features": -1, "out_features": o}, st.integers(1, 4096)),
    st.sampled_from([{"type": "ReLU"}, {"type": "Tanh"}, {"type": "Dropout", "p": 0.1}]),
    st.builds(lambda h, n, b: {"type": "GRU", "input_size": -1, "hidden_size": h, "num_layers": n, "bidirectional": b},
              st.integers(1, 256), st.integers(1, 8), st.booleans()),
    st.builds(lambda h: {"type": "LSTM", "input_size": -1, "hidden_size": h, "output": "sequence"}, st.integers(1, 256)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(seq=st.integers(1, 1 << 20), feat=st.integers(1, 64), layers=st.lists(layer_st, min_size=1, max_size=6),
       batch=st.integers(1, 4096))
def test_fuzzed_specs_finish_within_the_limit(seq: int, feat: int, layers: list[dict[str, Any]], batch: int) -> None:
    width, rank = feat, 3
    for layer in layers:  # wire sizes so that many specs are valid (and some are not)
        if layer.get("in_features") == -1:
            layer["in_features"] = width
            width = layer["out_features"]
        if layer.get("input_size") == -1:
            layer["input_size"] = width
            width = layer["hidden_size"] * (2 if layer.get("bidirectional") else 1)
            if layer.get("output", "last") == "last":
                rank = 2
    try:
        spec = parse_seq_spec({"format": "fedswarm-seq/1", "input_shape": [seq, feat], "layers": layers})
    except SpecError:
        return
    limit = 2.0
    t = time.monotonic()
    try:
        check_budget(spec, batch, deadline_s=limit)
    except SpecError as exc:  # BudgetExceeded is one
        assert "\n" not in str(exc)
    assert time.monotonic() - t < limit + 1.5
    assert rank in (2, 3)
