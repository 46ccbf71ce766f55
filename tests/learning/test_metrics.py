"""Metrics against scikit-learn on random data."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from fedswarm.learning import metrics


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 300), k=st.integers(2, 12))
def test_classification_metrics_match_sklearn(seed: int, n: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    logits = 3.0 * rng.standard_normal((n, k))
    pred = logits.argmax(axis=1)
    assert metrics.accuracy(y, logits) == pytest.approx(skm.accuracy_score(y, pred))
    assert metrics.accuracy(y, pred) == pytest.approx(skm.accuracy_score(y, pred))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about classes with no predictions
        ref_f1 = skm.f1_score(y, pred, average="macro", zero_division=0)
    assert metrics.macro_f1(y, logits) == pytest.approx(ref_f1)
    probs = softmax(logits)
    ref_loss = skm.log_loss(y, probs, labels=np.arange(k))
    assert metrics.cross_entropy(y, logits) == pytest.approx(ref_loss, rel=1e-6, abs=1e-9)
    assert metrics.log_loss(y, probs) == pytest.approx(ref_loss, rel=1e-6, abs=1e-9)
    cm = metrics.confusion_matrix(y, pred, num_classes=k)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(y, pred, labels=np.arange(k)))


def test_cross_entropy_is_stable_for_huge_logits() -> None:
    logits = np.array([[1000.0, 0.0], [0.0, -1000.0]])
    assert metrics.cross_entropy(np.array([0, 1]), logits) == pytest.approx(500.0)


def test_binary_cross_entropy_with_logits_matches_sklearn() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, size=500)
    z = 4.0 * rng.standard_normal(500)
    p = 1.0 / (1.0 + np.exp(-z))
    assert metrics.binary_cross_entropy_with_logits(y, z) == pytest.approx(
        skm.log_loss(y, p), rel=1e-6
    )


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 200), outputs=st.integers(1, 3))
def test_regression_metrics_match_sklearn(seed: int, n: int, outputs: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (n,) if outputs == 1 else (n, outputs)
    t = rng.standard_normal(shape)
    p = t + rng.standard_normal(shape)
    assert metrics.mse(t, p) == pytest.approx(skm.mean_squared_error(t, p))
    assert metrics.mae(t, p) == pytest.approx(skm.mean_absolute_error(t, p))
    out = metrics.regression_metrics(t, p)
    assert out["loss"] == out["mse"] and set(out) == {"loss", "mse", "mae"}


def test_classification_metrics_bundle() -> None:
    y = np.array([0, 1, 2, 1])
    logits = np.eye(3)[[0, 1, 1, 1]] * 5.0
    out = metrics.classification_metrics(y, logits)
    assert out["accuracy"] == 0.75
    assert out["macro_f1"] == pytest.approx(skm.f1_score(y, [0, 1, 1, 1], average="macro",
                                                         zero_division=0))
    assert out["loss"] > 0


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="3 samples but y_pred has 2"):
        metrics.accuracy(np.array([0, 1, 1]), np.array([0, 1]))
    with pytest.raises(ValueError, match="integer class labels"):
        metrics.accuracy(np.array([0.5, 1.0]), np.array([0, 1]))
    with pytest.raises(ValueError, match="out of range"):
        metrics.cross_entropy(np.array([0, 3]), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="shape"):
        metrics.mse(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="no samples"):
        metrics.mae(np.zeros(0), np.zeros(0))
