"""Aggregation strategies: hand-computed results, invariances, robustness, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load, save

from fedswarm.learning.strategies import list_strategies, make_strategy
from fedswarm.learning.strategies.robust import _sorting_network

ALL = [info.name for info in list_strategies()]
G2 = np.zeros(2, dtype=np.float32)


def f32(*rows: list[float]) -> list[np.ndarray]:
    return [np.array(r, dtype=np.float32) for r in rows]


# ------------------------------------------------------------------ hand-computed results


def test_fedavg_is_sample_weighted_mean() -> None:
    # Prepare
    clients = f32([1, 2], [3, 4], [5, 0])
    # Execute
    out = make_strategy("fedavg").aggregate(G2, clients, [1, 1, 2])
    # Assert: (1*[1,2] + 1*[3,4] + 2*[5,0]) / 4
    np.testing.assert_allclose(out, [3.5, 1.5], rtol=1e-6)
    assert out.dtype == np.float32


def test_fedprox_aggregates_like_fedavg_and_configures_clients() -> None:
    s = make_strategy("fedprox", proximal_mu=0.05)
    np.testing.assert_allclose(s.aggregate(G2, f32([1, 2], [3, 4]), [1, 3]), [2.5, 3.5])
    assert s.client_config() == {"proximal_mu": 0.05}
    assert make_strategy("fedavg").client_config() == {}


def test_fedavgm_momentum_over_two_rounds() -> None:
    s = make_strategy("fedavgm", server_lr=1.0, momentum=0.9)
    clients = f32([1, 2], [3, 4], [5, 0])
    first = s.aggregate(G2, clients, [1, 1, 2])
    # Round 1: buffer = pseudo-gradient = -[3.5, 1.5]; step lands on the mean.
    np.testing.assert_allclose(first, [3.5, 1.5], rtol=1e-6)
    # Round 2 from the mean with the same clients: gradient 0, buffer 0.9 * -[3.5, 1.5].
    second = s.aggregate(first, clients, [1, 1, 2])
    np.testing.assert_allclose(second, [3.5 + 0.9 * 3.5, 1.5 + 0.9 * 1.5], rtol=1e-6)
    s.reset()
    np.testing.assert_allclose(s.aggregate(G2, clients, [1, 1, 2]), [3.5, 1.5], rtol=1e-6)


def test_fedavgm_nesterov_is_diloco_outer_step() -> None:
    s = make_strategy("fedavgm", server_lr=0.7, momentum=0.9, nesterov=True)
    out = s.aggregate(G2, f32([1, 2], [3, 4], [5, 0]), [1, 1, 2])
    # step = g + 0.9 * buf = 1.9 * g with g = -[3.5, 1.5]; new = 0 - 0.7 * step.
    np.testing.assert_allclose(out, [0.7 * 1.9 * 3.5, 0.7 * 1.9 * 1.5], rtol=1e-6)


def test_fedavgm_matches_torch_sgd_nesterov() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    g = rng.standard_normal(7).astype(np.float32)
    s = make_strategy("fedavgm", server_lr=0.7, momentum=0.9, nesterov=True)
    p = torch.nn.Parameter(torch.from_numpy(g.copy()))
    opt = torch.optim.SGD([p], lr=0.7, momentum=0.9, nesterov=True)
    for _ in range(3):
        clients = [g + 0.1 * rng.standard_normal(7).astype(np.float32) for _ in range(3)]
        mean = np.mean(clients, axis=0)
        opt.zero_grad()
        p.grad = torch.from_numpy((p.detach().numpy() - mean).astype(np.float32))
        opt.step()
        g = s.aggregate(g, clients, [1, 1, 1])
        np.testing.assert_allclose(g, p.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_fedadam_and_fedyogi_first_step() -> None:
    clients = f32([1, 2], [3, 4], [5, 0])
    d = np.array([3.5, 1.5])  # mean delta
    m = 0.1 * d
    v_adam = 0.99 * 1e-6 + 0.01 * d**2
    v_yogi = 1e-6 + 0.01 * d**2  # v0 = tau^2 < D^2, so sign(v - D^2) = -1
    adam = make_strategy("fedadam", eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)
    yogi = make_strategy("fedyogi", eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)
    np.testing.assert_allclose(
        adam.aggregate(G2, clients, [1, 1, 2]), 0.1 * m / (np.sqrt(v_adam) + 1e-3), rtol=1e-5
    )
    np.testing.assert_allclose(
        yogi.aggregate(G2, clients, [1, 1, 2]), 0.1 * m / (np.sqrt(v_yogi) + 1e-3), rtol=1e-5
    )
    # State is kept and can be saved and restored.
    state = adam.state()
    assert set(state) == {"m", "v"}
    np.testing.assert_allclose(state["m"], m, rtol=1e-6)
    fresh = make_strategy("fedadam", eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)
    fresh.load_state(state)
    g1 = np.array([0.5, -0.5], dtype=np.float32)
    np.testing.assert_array_equal(
        fresh.aggregate(g1, clients, [1, 1, 2]), adam.aggregate(g1, clients, [1, 1, 2])
    )


def test_median_and_trimmed_mean_by_hand() -> None:
    three = f32([1, 2], [3, 4], [5, 0])
    four = [*three, np.array([7, -1], dtype=np.float32)]
    np.testing.assert_array_equal(make_strategy("median").aggregate(G2, three, [1] * 3), [3, 2])
    # Even n: mean of the two middle values; x: 1 3 5 7 -> 4, y: -1 0 2 4 -> 1.
    np.testing.assert_array_equal(make_strategy("median").aggregate(G2, four, [1] * 4), [4, 1])
    tm = make_strategy("trimmed_mean", beta=0.25)
    np.testing.assert_array_equal(tm.aggregate(G2, four, [1] * 4), [4, 1])
    five = f32([1], [3], [5], [7], [100])
    out = make_strategy("trimmed_mean", beta=0.2).aggregate(np.zeros(1, np.float32), five, [1] * 5)
    np.testing.assert_allclose(out, [5.0])  # drops 1 and 100
    # beta = 0 is the plain (unweighted) mean.
    out = make_strategy("trimmed_mean", beta=0.0).aggregate(np.zeros(1, np.float32), five, [1] * 5)
    np.testing.assert_allclose(out, [23.2])


def test_krum_and_multikrum_by_hand() -> None:
    # Points 0, 1, 2, 10, 100 with f = 1: score = sum of the n-f-2 = 2 nearest squared
    # distances: 0 -> 1+4 = 5, 1 -> 1+1 = 2, 2 -> 1+4 = 5, 10 -> 64+81 = 145,
    # 100 -> 8100+9604 = 17704.
    g = np.zeros(1, dtype=np.float32)
    pts = f32([0], [1], [2], [10], [100])
    krum = make_strategy("krum", f=1)
    np.testing.assert_array_equal(krum.aggregate(g, pts, [1] * 5), [1])
    scores = krum.last_result.details["scores"]
    np.testing.assert_allclose(scores, [5, 2, 5, 145, 17704], rtol=1e-9)
    assert krum.last_flagged == [3, 4]  # both far above 3 x the median score (5)
    mk = make_strategy("multikrum", f=1, m=3)
    np.testing.assert_allclose(mk.aggregate(g, pts, [1] * 5), [1.0])
    assert mk.last_flagged == [3, 4]
    # Default m = n - f = 4: mean of 0, 1, 2, 10.
    np.testing.assert_allclose(make_strategy("multikrum", f=1).aggregate(g, pts, [1] * 5), [3.25])


def test_clipped_fedavg_by_hand() -> None:
    # Deltas [3,4] (norm 5) and [0,1] (norm 1) clipped to norm 2: [1.2,1.6] and [0,1].
    s = make_strategy("clipped_fedavg", clip_norm=2.0)
    np.testing.assert_allclose(s.aggregate(G2, f32([3, 4], [0, 1]), [1, 1]), [0.6, 1.3],
                               rtol=1e-6)
    # With a non-zero global the clipping applies to the delta, not to the parameters.
    g = np.array([10, 10], dtype=np.float32)
    out = s.aggregate(g, f32([13, 14], [10, 11]), [1, 1])
    np.testing.assert_allclose(out, [10.6, 11.3], rtol=1e-6)
    np.testing.assert_allclose(s.last_result.details["delta_norms"], [5.0, 1.0], rtol=1e-6)


# ------------------------------------------------------------------ larger inputs vs references


def test_sorting_network_sorts_every_size() -> None:
    rng = np.random.default_rng(0)
    for n in range(1, 41):
        for _ in range(5):
            x = rng.integers(0, 4, size=n)
            y = x.copy()
            for a, b in _sorting_network(n):
                if y[a] > y[b]:
                    y[a], y[b] = y[b], y[a]
            assert (y == np.sort(x)).all(), n


@pytest.mark.parametrize("n", [1, 2, 5, 8, 33])
def test_coordinate_strategies_match_numpy_across_blocks(n: int) -> None:
    rng = np.random.default_rng(n)
    d = 70_001  # several blocks, the last one partial
    g = rng.standard_normal(d).astype(np.float32)
    stack = rng.standard_normal((n, d)).astype(np.float32)
    np.testing.assert_allclose(
        make_strategy("median", flag_ratio=None).aggregate(g, list(stack), [1] * n),
        np.median(stack, axis=0), rtol=1e-6, atol=1e-6,
    )
    k = int(0.2 * n)
    ref = np.sort(stack, axis=0)[k: n - k].mean(axis=0)
    np.testing.assert_allclose(
        make_strategy("trimmed_mean", beta=0.2).aggregate(g, stack, [1] * n), ref,
        rtol=1e-5, atol=1e-5,
    )
    w = rng.integers(1, 10, size=n)
    np.testing.assert_allclose(
        make_strategy("fedavg").aggregate(g, list(stack), w.tolist()),
        (w[:, None] * stack.astype(np.float64)).sum(0) / w.sum(), rtol=1e-5, atol=1e-5,
    )


def test_krum_scores_match_brute_force_with_large_weights() -> None:
    # Large parameters, small updates: distances come from deltas, so no cancellation.
    rng = np.random.default_rng(1)
    d, n, f = 50_000, 7, 2
    g = (100 + rng.standard_normal(d)).astype(np.float32)
    clients = [g + 1e-3 * rng.standard_normal(d).astype(np.float32) for _ in range(n)]
    delta = np.stack(clients).astype(np.float64) - g.astype(np.float64)
    dist = ((delta[:, None, :] - delta[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    ref = np.sort(dist, axis=1)[:, : n - f - 2].sum(1)
    got = make_strategy("krum", f=f).scores(g, clients)
    np.testing.assert_allclose(got, ref, rtol=1e-4)


# ------------------------------------------------------------------ invariances


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(5, 9), d=st.integers(1, 40))
def test_permutation_invariance(seed: int, n: int, d: int) -> None:
    rng = np.random.default_rng(seed)
    g = rng.standard_normal(d).astype(np.float32)
    clients = [g + rng.standard_normal(d).astype(np.float32) for _ in range(n)]
    samples = rng.integers(1, 100, size=n).tolist()
    perm = rng.permutation(n)
    for name, params in [
        ("fedavg", {}), ("fedprox", {}), ("fedavgm", {}), ("fedadam", {}), ("fedyogi", {}),
        ("clipped_fedavg", {"clip_norm": 1.0}), ("median", {}), ("trimmed_mean", {"beta": 0.2}),
        ("krum", {"f": 1}), ("multikrum", {"f": 1}),
    ]:
        a = make_strategy(name, **params).aggregate(g, clients, samples)
        b = make_strategy(name, **params).aggregate(
            g, [clients[i] for i in perm], [samples[i] for i in perm]
        )
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "median", "trimmed_mean", "krum",
                                  "multikrum", "clipped_fedavg"])
def test_identical_clients_return_them(name: str) -> None:
    rng = np.random.default_rng(2)
    g = rng.standard_normal(1000).astype(np.float32)
    x = g + 0.01 * rng.standard_normal(1000).astype(np.float32)
    params = {"clip_norm": 10.0} if name == "clipped_fedavg" else {}
    s = make_strategy(name, **params)
    np.testing.assert_allclose(s.aggregate(g, [x.copy() for _ in range(5)], [3, 1, 4, 1, 5]), x,
                               rtol=1e-6, atol=1e-7)
    assert s.last_flagged == []


# ------------------------------------------------------------------ robustness


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    f=st.integers(1, 3),
    extra=st.integers(0, 3),
    attack=st.sampled_from(["scaled", "flipped", "random", "colluding"]),
)
def test_robust_strategies_stay_within_honest_range(
    seed: int, f: int, extra: int, attack: str
) -> None:
    # Prepare: an honest cluster around a unit-norm update, f attackers far away.
    rng = np.random.default_rng(seed)
    d = 30
    n_honest = f + 3 + extra  # n = n_honest + f > 2f + 2 (Krum's condition)
    g = rng.standard_normal(d).astype(np.float32)
    mu = rng.standard_normal(d)
    mu /= np.linalg.norm(mu)
    honest = [(g + mu + 0.01 * rng.standard_normal(d)).astype(np.float32)
              for _ in range(n_honest)]
    if attack == "scaled":
        bad = [(g + 50.0 * mu * (1 + i)).astype(np.float32) for i in range(f)]
    elif attack == "flipped":
        bad = [(g - 10.0 * mu).astype(np.float32) for _ in range(f)]
    elif attack == "colluding":
        same = g + 20.0 * rng.standard_normal(d)
        bad = [same.astype(np.float32) for _ in range(f)]
    else:
        bad = [(g + 20.0 * rng.standard_normal(d)).astype(np.float32) for _ in range(f)]
    clients = honest + bad
    order = rng.permutation(len(clients))
    clients = [clients[i] for i in order]
    attackers = sorted(int(np.where(order == n_honest + i)[0][0]) for i in range(f))
    n = len(clients)
    lo = np.min(honest, axis=0) - 1e-5
    hi = np.max(honest, axis=0) + 1e-5
    for name, params in [
        ("median", {}),
        ("trimmed_mean", {"beta": (f + 0.5) / n}),
        ("krum", {"f": f}),
        ("multikrum", {"f": f}),
    ]:
        # Execute
        s = make_strategy(name, **params)
        out = s.aggregate(g, clients, [1] * n)
        # Assert
        assert np.all(out >= lo) and np.all(out <= hi), (name, attack)
        if name in ("krum", "multikrum", "median"):
            assert set(s.last_flagged) == set(attackers), (name, attack)


def test_fedavg_is_not_robust_which_is_why_the_others_exist() -> None:
    g = np.zeros(3, dtype=np.float32)
    honest = [np.ones(3, dtype=np.float32)] * 4
    out = make_strategy("fedavg").aggregate(g, [*honest, np.full(3, 1e4, np.float32)], [1] * 5)
    assert out[0] > 100


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("nosuch", {}, "unknown strategy"),
        ("fedavg", {"lr": 1}, "has no parameter 'lr'"),
        ("trimmed_mean", {"beta": 0.5}, "beta"),
        ("trimmed_mean", {"beta": -0.1}, "beta"),
        ("fedavgm", {"momentum": 1.0}, "momentum"),
        ("fedavgm", {"server_lr": 0.0}, "server_lr"),
        ("fedadam", {"tau": 0.0}, "tau"),
        ("fedyogi", {"beta_2": 1.5}, "beta_2"),
        ("clipped_fedavg", {"clip_norm": 0.0}, "clip_norm"),
        ("krum", {"f": -1}, "f must be"),
        ("krum", {"f": 1.5}, "f must be"),
        ("multikrum", {"m": 0}, "m must be"),
        ("fedprox", {"proximal_mu": "x"}, "must be a number"),
        ("median", {"flag_ratio": 0.5}, "flag_ratio"),
    ],
)
def test_bad_params_are_refused(name: str, params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_strategy(name, **params)


def test_bad_rounds_are_refused() -> None:
    fedavg = make_strategy("fedavg")
    with pytest.raises(ValueError, match="empty"):
        fedavg.aggregate(G2, [], [])
    with pytest.raises(ValueError, match="shape"):
        fedavg.aggregate(G2, f32([1, 2], [1, 2, 3]), [1, 1])
    with pytest.raises(ValueError, match="num_samples has 1 entries"):
        fedavg.aggregate(G2, f32([1, 2], [1, 2]), [1])
    with pytest.raises(ValueError, match="positive total"):
        fedavg.aggregate(G2, f32([1, 2], [1, 2]), [0, 0])
    with pytest.raises(ValueError, match="positive total"):
        fedavg.aggregate(G2, f32([1, 2], [1, 2]), [3, -1])
    with pytest.raises(ValueError, match="floating point"):
        fedavg.aggregate(G2, [np.array([1, 2])], [1])
    with pytest.raises(ValueError, match="1-D"):
        fedavg.aggregate(np.zeros((2, 2), np.float32), f32([1, 2]), [1])
    with pytest.raises(ValueError, match="not finite"):
        fedavg.aggregate(G2, f32([1, math.nan], [1, 2]), [1, 1])
    with pytest.raises(ValueError, match="more than 2f\\+2 = 4"):
        make_strategy("krum", f=1).aggregate(G2, f32([1, 2], [1, 2], [0, 0], [3, 3]), [1] * 4)
    with pytest.raises(ValueError, match="exceeds n - f"):
        make_strategy("multikrum", f=1, m=5).aggregate(G2, f32(*[[i, i] for i in range(5)]),
                                                       [1] * 5)
    momentum = make_strategy("fedavgm")
    momentum.aggregate(G2, f32([1, 2]), [1])
    with pytest.raises(ValueError, match="call reset"):
        momentum.aggregate(np.zeros(3, np.float32), f32([1, 2, 3]), [1])


def test_list_strategies_describes_every_strategy() -> None:
    infos = {i.name: i for i in list_strategies()}
    assert set(infos) == {"fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "median",
                          "trimmed_mean", "krum", "multikrum", "clipped_fedavg"}
    assert infos["krum"].robust and not infos["fedavg"].robust
    assert infos["fedadam"].stateful
    assert infos["fedavgm"].params == {"server_lr": 1.0, "momentum": 0.9, "nesterov": False}
    assert set(infos["fedyogi"].params) == {"eta", "beta_1", "beta_2", "tau"}
    json.dumps([i.to_dict() for i in infos.values()])  # JSON-ready for the API/UI
    for info in infos.values():
        assert info.summary


def test_bench_strategies_reports_every_strategy() -> None:
    from fedswarm.bench.strategies import bench_strategies

    out = bench_strategies(num_clients=4, num_params=5000, repeats=2)
    assert out["bytes"] == 4 * 5000 * 4
    assert set(out["strategies"]) == set(ALL)
    for row in out["strategies"].values():
        assert row["gbps"] > 0 and row["ratio_vs_copy"] > 0


# ------------------------------------------------------------------ settings and state


@pytest.mark.parametrize("name", ALL)
def test_state_survives_a_safetensors_round_trip(name: str) -> None:
    """Every strategy's state() saves as safetensors (no pickle) and load_state() on a fresh
    instance continues exactly as the original: what a restarted client relies on."""
    rng = np.random.default_rng(3)
    g = rng.normal(size=40).astype(np.float32)
    clients = [(g + rng.normal(size=40)).astype(np.float32) for _ in range(5)]
    first, fresh = make_strategy(name), make_strategy(name)
    first.aggregate(g, clients, [1, 2, 3, 4, 5])
    state = first.state()
    assert first.stateful == bool(state), name  # stateless strategies have nothing to save
    fresh.load_state(load(save(state)) if state else {})
    np.testing.assert_array_equal(fresh.aggregate(g, clients, [1, 2, 3, 4, 5]),
                                  first.aggregate(g, clients, [1, 2, 3, 4, 5]))


def test_stateless_strategy_refuses_foreign_state() -> None:
    with pytest.raises(ValueError, match="no state"):
        make_strategy("fedavg").load_state({"m": np.zeros(2, dtype=np.float32)})


def test_client_config_is_what_trainers_need() -> None:
    assert make_strategy("fedprox").client_config() == {"proximal_mu": 0.01}
    assert make_strategy("fedprox", proximal_mu=0.3).client_config() == {"proximal_mu": 0.3}
    assert all(make_strategy(n).client_config() == {} for n in ALL if n != "fedprox")
