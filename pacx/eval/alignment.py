"""Alignment of CXR features with teacher embeddings: ridge readout, cosines, retrieval.

A linear readout from frozen CXR features X to a teacher's embedding Y (ECG or labs) says
how much teacher information the image features carry. The readout is the reference's
``StandardScaler + Ridge(alpha=10)`` written in numpy: X is standardised with the training
mean and (population) standard deviation, Y is centred by its training mean, and the ridge
solution comes from an SVD of the standardised X. It is fitted on train and scored on test:

* ``r2``: coefficient of determination per output dimension, uniform average (outputs with
  zero test variance count 1 when predicted exactly, else 0, as scikit-learn does);
* ``cosine_raw``: mean cos(Y_hat_i, Y_i);
* ``cosine_centered``: the same after subtracting the **training** mean of Y from both. The
  reference used the test mean, which leaks test statistics into the score; the training
  mean is what a deployed readout knows;
* ``random_pair_cosine_raw`` / ``random_pair_cosine_centered``: cos(Y_i, Y_perm(i)) for a
  seeded permutation of the test rows: the chance level of the two cosines;
* ``recall@k``: for each test row, is its own teacher embedding among the k most
  cosine-similar of all test teacher embeddings to the prediction (:func:`retrieval_recall_at_k`);
* ``n_test_rows_distinct``: distinct test rows of Y (duplicates make retrieval ambiguous).

:func:`retrieval_recall_at_k` also scores already-projected embeddings, e.g. the Stage-2
projection heads' CXR and teacher outputs in the shared space.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

__all__ = ["RidgeReadout", "alignment_metrics", "fit_ridge", "predict_ridge", "r2_score", "retrieval_recall_at_k"]


class RidgeReadout(NamedTuple):
    """A fitted standardise-then-ridge readout: ``Y_hat = ((X - x_mean) / x_scale) @ coef + intercept``."""

    x_mean: np.ndarray
    x_scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray


def _array2d(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, D) with N > 0, got {arr.shape}")
    return arr.astype(np.float64)


def fit_ridge(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, alpha: float = 10.0) -> RidgeReadout:
    """Standardise X and fit ``min ||Y_c - X_s W||^2 + alpha ||W||^2`` with an intercept.

    Equivalent to scikit-learn's ``StandardScaler()`` followed by ``Ridge(alpha, solver="svd")``.

    Args:
        x: training features (N, D).
        y: training targets (N, K).
        alpha: ridge penalty (reference: 10).

    Returns:
        :class:`RidgeReadout`.

    Raises:
        ValueError: for mismatched rows or a negative alpha.

    Example:
        >>> rng = np.random.default_rng(0); x = rng.normal(size=(50, 4)); y = x @ rng.normal(size=(4, 3))
        >>> readout = fit_ridge(x, y, alpha=1e-6)
        >>> bool(np.allclose(predict_ridge(readout, x), y, atol=1e-4))
        True
    """
    x_arr, y_arr = _array2d(x, "x"), _array2d(y, "y")
    if x_arr.shape[0] != y_arr.shape[0]:
        raise ValueError(f"x and y must have the same number of rows, got {x_arr.shape[0]} and {y_arr.shape[0]}")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    x_mean = x_arr.mean(axis=0)
    x_scale = x_arr.std(axis=0)
    x_scale = np.where(x_scale > 0, x_scale, 1.0)  # constant features: scale 1, as StandardScaler does
    xs = (x_arr - x_mean) / x_scale
    y_mean = y_arr.mean(axis=0)
    u, s, vt = np.linalg.svd(xs, full_matrices=False)
    # Ridge via SVD: W = V diag(s / (s^2 + alpha)) U^T Y_c; tiny singular values are dropped.
    keep = s > s.max(initial=0.0) * 1e-12
    d = np.zeros_like(s)
    d[keep] = s[keep] / (s[keep] ** 2 + alpha)
    coef = vt.T @ (d[:, None] * (u.T @ (y_arr - y_mean)))
    return RidgeReadout(x_mean, x_scale, coef, y_mean)


def predict_ridge(readout: RidgeReadout, x: np.ndarray | torch.Tensor) -> np.ndarray:
    """Apply a :class:`RidgeReadout` to features (N, D) -> (N, K)."""
    x_arr = _array2d(x, "x")
    if x_arr.shape[1] != readout.coef.shape[0]:
        raise ValueError(f"x has {x_arr.shape[1]} features but the readout expects {readout.coef.shape[0]}")
    return ((x_arr - readout.x_mean) / readout.x_scale) @ readout.coef + readout.intercept


def r2_score(y_true: np.ndarray | torch.Tensor, y_pred: np.ndarray | torch.Tensor) -> float:
    """Coefficient of determination per output, uniform average (scikit-learn's convention).

    Args:
        y_true: (N, K) targets.
        y_pred: (N, K) predictions.

    Returns:
        Mean over outputs of ``1 - SS_res / SS_tot``; an output with zero variance scores 1 if
        predicted exactly, else 0.
    """
    t, p = _array2d(y_true, "y_true"), _array2d(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred must have the same shape, got {t.shape} and {p.shape}")
    ss_res = ((t - p) ** 2).sum(axis=0)
    ss_tot = ((t - t.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, np.where(ss_res == 0, 1.0, 0.0))
    return float(r2.mean())


def _row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(na * nb, 1e-12)


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def retrieval_recall_at_k(
    query: np.ndarray | torch.Tensor, gallery: np.ndarray | torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Identity retrieval by cosine similarity: is gallery row i among the top k for query i?

    Ties are counted against the query (conservative): the rank of the true match is the
    number of *other* gallery rows at least as similar, so duplicated gallery rows do not
    inflate recall.

    Args:
        query: (N, d) embeddings, e.g. CXR projections or ridge predictions.
        gallery: (N, d) embeddings row-aligned with ``query``, e.g. teacher projections.
        ks: cut-offs.

    Returns:
        ``{"recall@k": fraction}`` for each k, plus ``"median_rank"`` (1-based).

    Raises:
        ValueError: for mismatched shapes or a non-positive k.

    Example:
        >>> e = np.eye(4)
        >>> retrieval_recall_at_k(e, e, ks=(1,))["recall@1"]
        1.0
    """
    q, g = _array2d(query, "query"), _array2d(gallery, "gallery")
    if q.shape != g.shape:
        raise ValueError(f"query and gallery must have the same shape (N, d), got {q.shape} and {g.shape}")
    if any(int(k) <= 0 for k in ks):
        raise ValueError(f"ks must be positive, got {list(ks)}")
    sim = _unit(q) @ _unit(g).T
    own = np.diag(sim)
    n = sim.shape[0]
    # Rank (0-based) = other items at least as similar as the true match.
    rank = (sim >= own[:, None]).sum(axis=1) - 1
    out = {f"recall@{int(k)}": float((rank < int(k)).mean()) for k in ks}
    out["median_rank"] = float(np.median(rank + 1))
    out["n"] = n
    return out


def alignment_metrics(
    train_features: np.ndarray | torch.Tensor,
    train_targets: np.ndarray | torch.Tensor,
    test_features: np.ndarray | torch.Tensor,
    test_targets: np.ndarray | torch.Tensor,
    alpha: float = 10.0,
    seed: int = 0,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, Any]:
    """Ridge readout from CXR features to one teacher's embeddings, scored on test.

    Args:
        train_features: CXR features (N_train, D) (class token of the frozen encoder).
        train_targets: teacher embeddings (N_train, K), row-aligned.
        test_features: (N_test, D).
        test_targets: (N_test, K).
        alpha: ridge penalty (reference: 10).
        seed: permutation seed of the random-pair baseline.
        ks: retrieval cut-offs.

    Returns:
        dict with ``r2``, ``cosine_raw``, ``cosine_centered`` (train-mean centring),
        ``random_pair_cosine_raw``, ``random_pair_cosine_centered``, ``recall@k`` for each k,
        ``median_rank``, ``n_test_rows_distinct``, ``n_train``, ``n_test`` and ``alpha``.
    """
    x_tr, y_tr = _array2d(train_features, "train_features"), _array2d(train_targets, "train_targets")
    x_te, y_te = _array2d(test_features, "test_features"), _array2d(test_targets, "test_targets")
    if x_te.shape[0] != y_te.shape[0]:
        raise ValueError(f"test_features and test_targets rows differ: {x_te.shape[0]} and {y_te.shape[0]}")
    if y_tr.shape[1] != y_te.shape[1]:
        raise ValueError(f"train and test targets differ in width: {y_tr.shape[1]} and {y_te.shape[1]}")
    readout = fit_ridge(x_tr, y_tr, alpha=alpha)
    y_hat = predict_ridge(readout, x_te)
    centre = readout.intercept  # the training mean of Y
    perm = np.random.default_rng(seed).permutation(len(y_te))
    retrieval = retrieval_recall_at_k(y_hat, y_te, ks)
    return {
        "r2": r2_score(y_te, y_hat),
        "cosine_raw": float(_row_cosine(y_hat, y_te).mean()),
        "cosine_centered": float(_row_cosine(y_hat - centre, y_te - centre).mean()),
        "random_pair_cosine_raw": float(_row_cosine(y_te[perm], y_te).mean()),
        "random_pair_cosine_centered": float(_row_cosine(y_te[perm] - centre, y_te - centre).mean()),
        **{k: v for k, v in retrieval.items() if k != "n"},
        "n_test_rows_distinct": int(len(np.unique(y_te, axis=0))),
        "n_train": int(len(x_tr)),
        "n_test": int(len(x_te)),
        "alpha": float(alpha),
    }
