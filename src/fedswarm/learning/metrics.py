"""Evaluation metrics in plain numpy: loss, accuracy and macro-F1 for classification, MSE and
MAE for regression. All vectorised; results match scikit-learn's definitions."""

from __future__ import annotations

import numpy as np

__all__ = [
    "accuracy",
    "binary_cross_entropy_with_logits",
    "classification_metrics",
    "confusion_matrix",
    "cross_entropy",
    "log_loss",
    "macro_f1",
    "mae",
    "mse",
    "regression_metrics",
]


def _labels(y: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class labels, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class labels, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} holds a negative class label")
    return arr.astype(np.int64, copy=False)


def _predicted_labels(y_pred: np.ndarray) -> np.ndarray:
    """Labels, or the argmax of a 2-D score matrix (logits or probabilities)."""
    arr = np.asarray(y_pred)
    if arr.ndim == 2:
        return arr.argmax(axis=1)
    return _labels(arr, "y_pred")


def _same_length(a: np.ndarray, b: np.ndarray) -> None:
    if len(a) != len(b):
        raise ValueError(f"y_true has {len(a)} samples but y_pred has {len(b)}")
    if len(a) == 0:
        raise ValueError("no samples to score")


def cross_entropy(y_true: np.ndarray, logits: np.ndarray) -> float:
    """Mean softmax cross entropy of integer labels given logits of shape ``(n, classes)``
    (as ``torch.nn.functional.cross_entropy``), computed with a stable log-sum-exp."""
    y = _labels(y_true, "y_true")
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"logits must be 2-D (samples, classes), got shape {z.shape}")
    _same_length(y, z)
    if y.max() >= z.shape[1]:
        raise ValueError(f"label {int(y.max())} is out of range for {z.shape[1]} classes")
    zmax = z.max(axis=1, keepdims=True)
    lse = zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(y)), y]))


def log_loss(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of integer labels under class probabilities ``(n, classes)``
    (rows renormalised and clipped to the dtype's epsilon, as ``sklearn.metrics.log_loss``)."""
    y = _labels(y_true, "y_true")
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be 2-D (samples, classes), got shape {p.shape}")
    _same_length(y, p)
    if y.max() >= p.shape[1]:
        raise ValueError(f"label {int(y.max())} is out of range for {p.shape[1]} classes")
    eps = np.finfo(p.dtype).eps
    p = np.clip(p, eps, 1.0 - eps)
    p = p / p.sum(axis=1, keepdims=True)
    return float(-np.mean(np.log(p[np.arange(len(y)), y])))


def binary_cross_entropy_with_logits(y_true: np.ndarray, logits: np.ndarray) -> float:
    """Mean binary cross entropy of 0/1 targets given logits (as PyTorch's
    ``binary_cross_entropy_with_logits``): ``max(z,0) - z*y + log(1 + exp(-|z|))``."""
    y = np.asarray(y_true, dtype=np.float64).ravel()
    z = np.asarray(logits, dtype=np.float64).ravel()
    _same_length(y, z)
    return float(np.mean(np.maximum(z, 0.0) - z * y + np.log1p(np.exp(-np.abs(z)))))


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of correct predictions; ``y_pred`` is labels or a score matrix (argmax taken)."""
    y = _labels(y_true, "y_true")
    p = _predicted_labels(y_pred)
    _same_length(y, p)
    return float(np.mean(y == p))


def confusion_matrix(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int | None = None
) -> np.ndarray:
    """``C[i, j]`` = samples of true class ``i`` predicted as ``j`` (one bincount)."""
    y = _labels(y_true, "y_true")
    p = _predicted_labels(y_pred)
    _same_length(y, p)
    k = int(max(y.max(), p.max()) + 1) if num_classes is None else int(num_classes)
    if y.max() >= k or p.max() >= k:
        raise ValueError(f"a label is out of range for num_classes={k}")
    return np.bincount(y * k + p, minlength=k * k).reshape(k, k)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes present in ``y_true`` or ``y_pred``
    (``sklearn.metrics.f1_score(average="macro")``; a class with no true or predicted samples
    scores 0 when it has a zero denominator)."""
    y = _labels(y_true, "y_true")
    p = _predicted_labels(y_pred)
    cm = confusion_matrix(y, p)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    present = (support + predicted) > 0
    denom = (support + predicted).astype(np.float64)
    f1 = np.divide(2.0 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1[present].mean())


def _regression_pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if t.shape != p.shape:
        raise ValueError(f"y_true has shape {t.shape} but y_pred has {p.shape}")
    if t.size == 0:
        raise ValueError("no samples to score")
    return t, p


def mse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean squared error over all elements (multi-output: uniform average)."""
    t, p = _regression_pair(y_true, y_pred)
    return float(np.mean((t - p) ** 2))


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean absolute error over all elements (multi-output: uniform average)."""
    t, p = _regression_pair(y_true, y_pred)
    return float(np.mean(np.abs(t - p)))


def classification_metrics(y_true: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """``loss`` (softmax cross entropy), ``accuracy`` and ``macro_f1`` from logits."""
    return {
        "loss": cross_entropy(y_true, logits),
        "accuracy": accuracy(y_true, logits),
        "macro_f1": macro_f1(y_true, logits),
    }


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """``loss`` (= MSE), ``mse`` and ``mae``."""
    value = mse(y_true, y_pred)
    return {"loss": value, "mse": value, "mae": mae(y_true, y_pred)}
