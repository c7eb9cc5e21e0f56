"""Metrics against hand-computed values; bootstrap and paired tests."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from pacx.eval.metrics import (
    auroc_statistic,
    binarize_predictions,
    bootstrap_ci,
    classification_metrics,
    delong_test,
    dice_per_image,
    f1_per_label,
    f1_statistic,
    iou_per_image,
    macro_auroc,
    mean_statistic,
    nanmean_warn,
    paired_bootstrap,
    roc_auc_per_label,
    seed_mean_std,
    to_multi_hot,
    tune_thresholds,
)


def test_auroc_matches_hand_count():
    # 2 positives x 3 negatives = 6 pairs. Positive 0.8 beats 0.1, 0.4, 0.35 (3);
    # positive 0.35 beats 0.1 (1) and ties 0.35 (0.5) -> (3 + 1.5) / 6 = 0.75.
    y = np.array([1, 0, 0, 1, 0])
    s = np.array([0.8, 0.1, 0.4, 0.35, 0.35])
    assert roc_auc_per_label(s, y)[0] == pytest.approx(4.5 / 6)
    assert macro_auroc(s, y) == pytest.approx(0.75)
    assert auroc_statistic(y, s)(np.arange(5)) == pytest.approx(0.75)


def test_macro_auroc_skips_single_class_column_and_warns():
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])  # column 1 has no positive
    s = np.array([[0.9, 0.1], [0.2, 0.5], [0.7, 0.3], [0.1, 0.2]])
    per = roc_auc_per_label(s, y)
    assert per[0] == pytest.approx(1.0) and np.isnan(per[1])
    with pytest.warns(RuntimeWarning, match="entries \\[1\\]"):
        assert macro_auroc(s, y) == pytest.approx(1.0)


def test_nanmean_all_nan_is_nan():
    with pytest.warns(RuntimeWarning):
        assert np.isnan(nanmean_warn([np.nan, np.nan]))


def test_rank_auroc_equals_monai_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(80, 3))
    s = np.round(rng.random((80, 3)) + 0.3 * y, 1)  # rounding creates many ties
    stat = auroc_statistic(y, s)
    assert stat(np.arange(80)) == pytest.approx(roc_auc_per_label(s, y).mean(), abs=1e-12)
    idx = rng.integers(0, 80, size=(4, 80))
    for row, val in zip(idx, stat(idx)):
        assert val == pytest.approx(np.nanmean(roc_auc_per_label(s[row], y[row])), abs=1e-12)


def test_f1_hand_values():
    # label 0: tp=1 fp=1 fn=1 -> 2/4 ; label 1: tp=1 fp=1 fn=0 -> 2/3 ; label 2: no positive anywhere -> NaN
    pred = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 0]])
    true = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    f1 = f1_per_label(pred, true)
    assert f1[0] == pytest.approx(0.5) and f1[1] == pytest.approx(2 / 3) and np.isnan(f1[2])
    assert f1_statistic(true, pred)(np.arange(4)) == pytest.approx((0.5 + 2 / 3) / 2)


def test_binarize_and_tune_thresholds():
    probs = np.array([0.2, 0.5, 0.7, 0.45])
    assert binarize_predictions(probs, "binary").ravel().tolist() == [0, 1, 1, 0]
    assert binarize_predictions(np.array([[0.1, 0.7, 0.2]]), "multiclass").tolist() == [[0, 1, 0]]
    # Best val F1 is predicting the top 3 (tp=2, fp=1, fn=0 -> 0.8) vs top 2 (tp=1, fp=1, fn=1 -> 0.5)
    # or all 4 (tp=2, fp=2 -> 0.667): the cut lies between 0.3 and 0.1.
    y = np.array([1, 0, 1, 0])
    s = np.array([0.9, 0.6, 0.3, 0.1])
    assert tune_thresholds(y, s)[0] == pytest.approx(0.2)
    assert tune_thresholds(np.zeros(4), s)[0] == 0.5  # no positive: keep 0.5


def test_classification_metrics_tuned_and_multiclass():
    y = np.array([1, 0, 1, 0, 1, 0])
    p = np.array([0.45, 0.1, 0.4, 0.2, 0.9, 0.3])
    out = classification_metrics(y, p, "binary", val_true=y, val_probs=p)
    assert out["auroc"] == pytest.approx(1.0)
    assert out["f1"] == pytest.approx(0.5)  # only 0.9 passes 0.5: tp=1 fn=2 -> 2/4
    assert out["f1_tuned"] == pytest.approx(1.0)
    mc = classification_metrics(np.array([0, 1, 2, 1]), np.eye(3)[[0, 1, 2, 2]] * 0.8 + 0.05, "multiclass")
    assert mc["f1_tuned"] is None and len(mc["auroc_per_label"]) == 3
    # class 1: tp=1 fn=1 -> 2/3 ; class 2: tp=1 fp=1 -> 2/3 ; class 0: 1
    assert mc["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_to_multi_hot_validates():
    assert to_multi_hot(np.array([2, 0]), "multiclass", 3).tolist() == [[0, 0, 1], [1, 0, 0]]
    with pytest.raises(ValueError, match="task_type"):
        to_multi_hot(np.array([0, 1]), "regression")
    with pytest.raises(ValueError, match="0/1"):
        to_multi_hot(np.array([0, 2]), "binary")


def test_dice_and_iou_per_image_hand_values():
    pred = torch.zeros(2, 1, 4, 4)
    true = torch.zeros(2, 1, 4, 4)
    pred[0, 0, :2] = 1  # 8 pixels
    true[0, 0, :1] = 1  # 4 pixels, all inside pred -> dice 2*4/12, iou 4/8
    pred[1, 0, 0, 0] = 1
    true[1, 0, 0, :2] = 1  # dice 2*1/3, iou 1/2
    dice = dice_per_image(pred, true)
    iou = iou_per_image(pred, true)
    np.testing.assert_allclose(dice, [8 / 12, 2 / 3])
    np.testing.assert_allclose(iou, [0.5, 0.5])
    # Pooled over the batch the Dice would be 2*5/15 = 0.667 here; per image the mean is equal by
    # construction, so check a case where they differ: a large and a small object.
    big_p, big_t = torch.ones(1, 1, 4, 4), torch.ones(1, 1, 4, 4)
    small_p, small_t = torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    small_p[0, 0, 0, 0], small_t[0, 0, 3, 3] = 1, 1
    per_image = dice_per_image(torch.cat([big_p, small_p]), torch.cat([big_t, small_t]))
    assert per_image.mean() == pytest.approx(0.5)  # pooled would be 32/34 = 0.94
    with pytest.raises(ValueError, match="binarised"):
        dice_per_image(pred * 0.5, true)


def test_bootstrap_ci_seeded_and_sensible():
    rng = np.random.default_rng(1)
    values = rng.normal(0.7, 0.1, size=200)
    ci1 = bootstrap_ci(mean_statistic(values), 200, n_resamples=300, seed=3)
    ci2 = bootstrap_ci(mean_statistic(values), 200, n_resamples=300, seed=3)
    assert ci1 == ci2
    assert ci1.low < values.mean() < ci1.high
    # normal theory half-width 1.96 * 0.1 / sqrt(200) = 0.0139
    assert 0.008 < (ci1.high - ci1.low) / 2 < 0.02
    bca = bootstrap_ci(mean_statistic(values), 200, n_resamples=300, method="BCa", seed=3)
    assert bca.low < values.mean() < bca.high
    with pytest.raises(ValueError, match="method"):
        bootstrap_ci(mean_statistic(values), 200, method="normal")


def test_bootstrap_ci_tolerates_degenerate_resamples():
    # 1 positive in 8 rows: many resamples miss it and the AUROC is undefined there.
    y = np.array([1, 0, 0, 0, 0, 0, 0, 0])
    s = np.linspace(1, 0, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ci = bootstrap_ci(auroc_statistic(y, s), 8, n_resamples=100)
    assert ci.low == pytest.approx(1.0) and ci.high == pytest.approx(1.0)


def test_paired_bootstrap_identical_and_different():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 150)
    good = y + rng.normal(0, 0.5, 150)
    noise = rng.normal(0, 1, 150)
    same = paired_bootstrap(auroc_statistic(y, good), auroc_statistic(y, good), 150, n_resamples=200)
    assert same["difference"] == 0 and same["p_value"] == 1.0
    diff = paired_bootstrap(auroc_statistic(y, good), auroc_statistic(y, noise), 150, n_resamples=200)
    assert diff["difference"] > 0.2 and diff["p_value"] < 0.01 and diff["ci_low"] > 0


def test_delong_hand_auc_and_symmetry():
    y = np.array([1, 0, 0, 1, 0, 1, 0, 1])
    a = np.array([0.8, 0.1, 0.4, 0.35, 0.35, 0.9, 0.2, 0.7])
    b = np.array([0.3, 0.6, 0.4, 0.5, 0.2, 0.4, 0.7, 0.1])
    out = delong_test(y, a, b)
    assert out["auroc_a"] == pytest.approx(roc_auc_per_label(a, y)[0])
    assert out["auroc_b"] == pytest.approx(roc_auc_per_label(b, y)[0])
    rev = delong_test(y, b, a)
    assert rev["z"] == pytest.approx(-out["z"]) and rev["p_value"] == pytest.approx(out["p_value"])
    assert delong_test(y, a, a)["p_value"] == 1.0
    with pytest.raises(ValueError, match="positives"):
        delong_test(np.array([1, 0, 0]), a[:3], b[:3])


def test_delong_variance_matches_pairwise_placements():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 40)
    a, b = np.round(rng.random(40) + 0.4 * y, 1), rng.random(40)
    pos, neg = y == 1, y == 0

    def placements(s):
        psi = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        return psi.mean(axis=1), psi.mean(axis=0), psi.mean()

    (a10, a01, auc_a), (b10, b01, auc_b) = placements(a), placements(b)
    var = (np.var(a10, ddof=1) + np.var(b10, ddof=1) - 2 * np.cov(a10, b10)[0, 1]) / pos.sum() + (
        np.var(a01, ddof=1) + np.var(b01, ddof=1) - 2 * np.cov(a01, b01)[0, 1]
    ) / neg.sum()
    out = delong_test(y, a, b)
    assert out["z"] == pytest.approx((auc_a - auc_b) / np.sqrt(var))


def test_seed_mean_std_is_the_sample_spread_and_zero_for_one_seed():
    mean, std = seed_mean_std([0.7, 0.8, 0.9])
    assert mean == pytest.approx(0.8) and std == pytest.approx(0.1)  # ddof=1: sqrt(0.02 / 2)
    assert seed_mean_std(np.array([0.5])) == (0.5, 0.0)
    with pytest.raises(ValueError, match="at least one per-seed value"):
        seed_mean_std([])
