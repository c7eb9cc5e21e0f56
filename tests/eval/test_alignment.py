"""Ridge readout, R², cosines and retrieval."""

from __future__ import annotations

import numpy as np
import pytest

from pacx.eval.alignment import alignment_metrics, fit_ridge, predict_ridge, r2_score, retrieval_recall_at_k


def test_ridge_matches_normal_equations():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(40, 5))
    x[:, 4] = 7.0  # a constant feature is left at scale 1, as StandardScaler does
    y = rng.normal(size=(40, 3))
    readout = fit_ridge(x, y, alpha=10.0)
    xs = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    w = np.linalg.solve(xs.T @ xs + 10.0 * np.eye(5), xs.T @ (y - y.mean(0)))
    np.testing.assert_allclose(readout.coef, w, atol=1e-10)
    np.testing.assert_allclose(predict_ridge(readout, x), xs @ w + y.mean(0), atol=1e-10)


def test_r2_hand_values():
    y = np.array([[1.0, 2.0], [2.0, 2.0], [3.0, 2.0]])
    p = np.array([[1.0, 2.0], [2.0, 2.0], [4.0, 2.0]])
    # output 0: SS_res 1, SS_tot 2 -> 0.5 ; output 1 constant and exact -> 1
    assert r2_score(y, p) == pytest.approx(0.75)


def test_retrieval_hand_case_and_ties():
    q = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    g = np.array([[1.0, 0.1], [1.0, 0.0], [1.0, 1.0]])
    out = retrieval_recall_at_k(q, g, ks=(1, 2))
    # query 0: best is g1 (cos 1) then g0 -> rank 2 ; query 1: g2 (0.71) > g0 (0.10) > g1 (0) -> rank 3 ;
    # query 2: g2 (1.0) -> rank 1
    assert out["recall@1"] == pytest.approx(1 / 3) and out["recall@2"] == pytest.approx(2 / 3)
    assert out["median_rank"] == 2
    dup = retrieval_recall_at_k(np.eye(2)[[0, 0]], np.eye(2)[[0, 0]], ks=(1,))
    assert dup["recall@1"] == 0.0  # duplicated gallery rows are ties counted against the query
    with pytest.raises(ValueError, match="same shape"):
        retrieval_recall_at_k(q, g[:2])


def test_alignment_metrics_linear_teacher_vs_random():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 10))
    y = x @ rng.normal(size=(10, 6)) + 5.0  # offset: raw cosine is high even for random pairs
    m = alignment_metrics(x[:200], y[:200], x[200:], y[200:], alpha=1e-3)
    assert m["r2"] > 0.99 and m["cosine_centered"] > 0.99 and m["recall@1"] > 0.9
    assert m["random_pair_cosine_raw"] > 0.7 and abs(m["random_pair_cosine_centered"]) < 0.2
    noise = alignment_metrics(rng.normal(size=(200, 10)), y[:200], rng.normal(size=(100, 10)), y[200:])
    assert noise["r2"] < 0.05 and noise["recall@10"] < 0.4
    assert m["n_test_rows_distinct"] == 100 and m["n_train"] == 200


def test_centred_cosine_uses_train_mean():
    x_tr = np.array([[0.0], [1.0], [2.0], [3.0]])
    y_tr = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])  # train mean (1.5, 1.5)
    x_te = np.array([[3.0], [4.0]])
    y_te = np.array([[3.0, 3.0], [4.0, 4.0]])
    m = alignment_metrics(x_tr, y_tr, x_te, y_te, alpha=0.0)
    # Predictions are exact; centred by the train mean both rows point along (1, 1): cosine 1.
    # (Centring by the test mean (3.5, 3.5) would also give 1 here, but the random-pair baseline
    # differs: with the train mean both centred rows are parallel, so it is 1, not -1.)
    assert m["cosine_centered"] == pytest.approx(1.0)
    assert m["random_pair_cosine_centered"] == pytest.approx(1.0)
