"""Evaluation metrics with MONAI, NaN-aware averaging, bootstrap intervals and paired tests.

Point estimates go through MONAI: ``ROCAUCMetric(average="none")`` for AUROC,
``ConfusionMatrixMetric("f1 score")`` for F1 and ``DiceMetric`` / ``MeanIoU`` for masks.
Two pitfalls of the reference code are avoided on purpose:

* MONAI's macro AUROC is ``np.mean`` over labels, so one label column with a single class
  (AUROC undefined, ``NaN``) makes the macro value ``NaN``. Here the per-label values are
  averaged with :func:`nanmean_warn`, which skips undefined labels and says so.
* Segmentation scores are computed per image and then averaged over images, never pooled
  over all pixels of a batch.

Uncertainty: :func:`bootstrap_ci` resamples test *rows* (patients) with
``scipy.stats.bootstrap`` and :func:`paired_bootstrap` resamples the same rows for two
encoders to give a confidence interval and a two-sided p-value for their difference.
Statistics are functions of an index array (see :func:`auroc_statistic`,
:func:`f1_statistic`, :func:`mean_statistic`); inside the resampling loop AUROC is computed
with a vectorised Mann-Whitney rank formula that equals MONAI's value (tested) but runs in
numpy over a whole batch of resamples, because MONAI's AUROC is a Python loop per sample.
:func:`delong_test` is the classical alternative for two binary AUROCs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import scipy.stats
import torch
from monai.metrics import ConfusionMatrixMetric, DiceMetric, MeanIoU, ROCAUCMetric

__all__ = [
    "ConfidenceInterval",
    "TASK_TYPES",
    "auroc_statistic",
    "binarize_predictions",
    "bootstrap_ci",
    "classification_metrics",
    "delong_test",
    "dice_per_image",
    "f1_per_label",
    "f1_statistic",
    "iou_per_image",
    "macro_auroc",
    "mean_statistic",
    "nanmean_warn",
    "paired_bootstrap",
    "roc_auc_per_label",
    "seed_mean_std",
    "to_multi_hot",
    "tune_thresholds",
]

TASK_TYPES = ("binary", "multilabel", "multiclass")

Statistic = Callable[[np.ndarray], np.ndarray]


class ConfidenceInterval(NamedTuple):
    """A two-sided confidence interval ``(low, high)``."""

    low: float
    high: float


# --------------------------------------------------------------------------- helpers


def _check_task_type(task_type: str) -> None:
    if task_type not in TASK_TYPES:
        raise ValueError(f"task_type must be one of {TASK_TYPES}, got {task_type!r}")


def _to_numpy(array: np.ndarray | torch.Tensor) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def _as_2d(array: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    arr = _to_numpy(array)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (N,) or (N, C), got {arr.shape}")
    return arr


def _same_shape_2d(
    first: np.ndarray | torch.Tensor,
    first_name: str,
    second: np.ndarray | torch.Tensor,
    second_name: str,
    dtype: type = np.float64,
) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays as (N, C) of ``dtype``; a ``ValueError`` naming both when their shapes differ."""
    a = _as_2d(first, first_name).astype(dtype)
    b = _as_2d(second, second_name).astype(dtype)
    if a.shape != b.shape:
        raise ValueError(f"{first_name} and {second_name} must have the same shape, got {a.shape} and {b.shape}")
    return a, b


def _quiet_nanmean(values: np.ndarray, axis: int = 1) -> np.ndarray:
    """``np.nanmean`` along ``axis``; an all-NaN slice stays NaN without a warning, on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


def to_multi_hot(y_true: np.ndarray | torch.Tensor, task_type: str, num_classes: int | None = None) -> np.ndarray:
    """Bring labels into the (N, C) 0/1 float layout used by every metric here.

    Args:
        y_true: binary labels (N,) or (N, 1); multi-label (N, C) 0/1; multi-class class indices
            (N,) or one-hot (N, C) (one-hot is argmaxed, as in the reference probe).
        task_type: ``"binary"``, ``"multilabel"`` or ``"multiclass"``.
        num_classes: number of classes for multi-class index labels; inferred from the labels
            when omitted.

    Returns:
        A float64 array (N, C) of 0/1 values (C = 1 for binary).

    Raises:
        ValueError: for an unknown task type, a wrong shape or values other than 0/1.
    """
    _check_task_type(task_type)
    arr = _to_numpy(y_true)
    if task_type == "multiclass":
        if arr.ndim == 2 and arr.shape[1] > 1:
            arr = arr.argmax(axis=1)
        arr = arr.reshape(-1)
        if arr.size and (arr.min() < 0 or not np.all(np.equal(np.mod(arr, 1), 0))):
            raise ValueError("y_true for multiclass must hold non-negative integer class indices")
        arr = arr.astype(np.int64)
        n_cls = int(num_classes) if num_classes is not None else int(arr.max()) + 1 if arr.size else 0
        if arr.size and arr.max() >= n_cls:
            raise ValueError(f"y_true has class index {arr.max()} but num_classes={n_cls}")
        return np.eye(n_cls, dtype=np.float64)[arr]
    arr2 = _as_2d(arr, "y_true").astype(np.float64)
    if task_type == "binary" and arr2.shape[1] != 1:
        raise ValueError(f"y_true for binary must have shape (N,) or (N, 1), got {arr2.shape}")
    if not np.all((arr2 == 0) | (arr2 == 1)):
        raise ValueError(f"y_true for {task_type} must be 0/1, got values {np.unique(arr2)[:10].tolist()}")
    return arr2


def nanmean_warn(values: Sequence[float] | np.ndarray, what: str = "metric", warn: bool = True) -> float:
    """Mean over the defined (non-NaN) entries, warning about the undefined ones.

    MONAI's ``average="macro"`` is a plain mean, so a single undefined label makes the
    macro value NaN; this skips such labels instead.

    Args:
        values: per-label (or per-image) values, NaN where undefined.
        what: name used in the warning.
        warn: emit a ``RuntimeWarning`` naming the undefined entries.

    Returns:
        The mean over defined entries, or NaN when none is defined.
    """
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    bad = np.flatnonzero(np.isnan(arr))
    if bad.size == arr.size:
        if warn:
            warnings.warn(f"{what}: every entry is undefined (NaN); returning NaN", RuntimeWarning, stacklevel=2)
        return float("nan")
    if bad.size and warn:
        warnings.warn(
            f"{what}: averaged over {arr.size - bad.size} of {arr.size} entries; entries {bad.tolist()} "
            "are undefined (NaN, e.g. a label with a single class) and were skipped",
            RuntimeWarning,
            stacklevel=2,
        )
    return float(np.nanmean(arr))


def seed_mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``) of one value per seed.

    The spread of a single seed is reported as 0 rather than undefined.

    Args:
        values: one value per seed, at least one.

    Returns:
        ``(mean, std)`` as floats.

    Raises:
        ValueError: when ``values`` is empty.

    Example:
        >>> seed_mean_std([0.80, 0.82, 0.84])
        (0.82, 0.019999999999999962)
    """
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError("values must hold at least one per-seed value, got none")
    return float(np.mean(arr)), float(np.std(arr, ddof=1)) if arr.size > 1 else 0.0


# --------------------------------------------------------------------------- classification


def roc_auc_per_label(y_score: np.ndarray | torch.Tensor, y_true: np.ndarray | torch.Tensor) -> np.ndarray:
    """Per-label AUROC through MONAI ``ROCAUCMetric(average="none")``.

    Args:
        y_score: scores (N,) or (N, C); any monotone score (probabilities, logits).
        y_true: 0/1 labels of the same shape (use :func:`to_multi_hot` first for class indices).

    Returns:
        float64 array (C,), NaN for a label whose column holds a single class.

    Raises:
        ValueError: when the shapes differ.
    """
    score, true = _same_shape_2d(y_score, "y_score", y_true, "y_true")
    metric = ROCAUCMetric(average="none")
    metric(y_pred=torch.from_numpy(score), y=torch.from_numpy(true))
    with warnings.catch_warnings():
        # MONAI warns per single-class column; nanmean_warn reports them once, by index.
        warnings.simplefilter("ignore", UserWarning)
        values = metric.aggregate()
    metric.reset()
    return np.atleast_1d(np.asarray(values, dtype=np.float64))


def macro_auroc(y_score: np.ndarray | torch.Tensor, y_true: np.ndarray | torch.Tensor, warn: bool = True) -> float:
    """NaN-aware macro AUROC (the AUROC itself for one label).

    Args:
        y_score: scores (N,) or (N, C).
        y_true: 0/1 labels of the same shape.
        warn: warn when some labels are undefined.

    Returns:
        Mean of the defined per-label AUROCs.
    """
    return nanmean_warn(roc_auc_per_label(y_score, y_true), "macro AUROC", warn=warn)


def binarize_predictions(
    probs: np.ndarray | torch.Tensor, task_type: str, thresholds: float | Sequence[float] | np.ndarray = 0.5
) -> np.ndarray:
    """Hard predictions in the (N, C) 0/1 layout.

    Args:
        probs: probabilities (N,) or (N, C).
        task_type: binary/multi-label use ``probs >= thresholds`` (one threshold or one per
            label); multi-class uses the argmax (thresholds are ignored).
        thresholds: scalar or per-label thresholds.

    Returns:
        float64 array (N, C) of 0/1.
    """
    _check_task_type(task_type)
    p = _as_2d(probs, "probs").astype(np.float64)
    if task_type == "multiclass":
        return np.eye(p.shape[1], dtype=np.float64)[p.argmax(axis=1)]
    thr = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if thr.size not in (1, p.shape[1]):
        raise ValueError(f"thresholds must be a scalar or have {p.shape[1]} entries, got {thr.size}")
    return (p >= thr[None, :]).astype(np.float64)


def f1_per_label(y_pred: np.ndarray | torch.Tensor, y_true: np.ndarray | torch.Tensor) -> np.ndarray:
    """Per-label F1 of binarised predictions through MONAI ``ConfusionMatrixMetric``.

    The confusion matrix is summed over samples (``reduction="sum_batch"``) before the F1,
    i.e. the usual per-label F1 over the test set.

    Args:
        y_pred: 0/1 predictions (N,) or (N, C) (see :func:`binarize_predictions`).
        y_true: 0/1 labels of the same shape.

    Returns:
        float64 array (C,); NaN for a label with no positive and no predicted positive.
    """
    pred, true = _same_shape_2d(y_pred, "y_pred", y_true, "y_true", dtype=np.float32)
    if not np.all((pred == 0) | (pred == 1)):
        raise ValueError("y_pred must be binarised (0/1); use binarize_predictions first")
    metric = ConfusionMatrixMetric(include_background=True, metric_name="f1 score", reduction="sum_batch")
    metric(y_pred=torch.from_numpy(pred), y=torch.from_numpy(true))
    values = metric.aggregate()[0]
    metric.reset()
    return values.detach().cpu().numpy().astype(np.float64).reshape(-1)


def tune_thresholds(y_true: np.ndarray | torch.Tensor, y_score: np.ndarray | torch.Tensor) -> np.ndarray:
    """Per-label threshold maximising F1 on (validation) data.

    The threshold is placed midway between the chosen score and the next lower distinct
    score, so ``score >= threshold`` reproduces the optimal split and generalises to unseen
    scores. A label without a positive keeps 0.5 (F1 is undefined there).

    Args:
        y_true: 0/1 labels (N,) or (N, C).
        y_score: scores of the same shape.

    Returns:
        float64 array (C,) of thresholds.
    """
    true, score = _same_shape_2d(y_true, "y_true", y_score, "y_score")
    out = np.full(true.shape[1], 0.5)
    for c in range(true.shape[1]):
        t, s = true[:, c], score[:, c]
        n_pos = t.sum()
        if n_pos == 0:
            continue
        order = np.argsort(-s, kind="stable")
        s_sorted, t_sorted = s[order], t[order]
        tp, fp = np.cumsum(t_sorted), np.cumsum(1 - t_sorted)
        # Only the last position of a run of tied scores is a valid cut.
        last = np.r_[s_sorted[1:] != s_sorted[:-1], True]
        f1 = np.where(last, 2 * tp / (2 * tp + fp + (n_pos - tp)), -1.0)
        best = int(np.argmax(f1))
        out[c] = 0.5 * (s_sorted[best] + s_sorted[best + 1]) if best + 1 < len(s_sorted) else s_sorted[best]
    return out


def classification_metrics(
    y_true: np.ndarray | torch.Tensor,
    probs: np.ndarray | torch.Tensor,
    task_type: str,
    val_true: np.ndarray | torch.Tensor | None = None,
    val_probs: np.ndarray | torch.Tensor | None = None,
    warn: bool = True,
) -> dict:
    """AUROC and F1 of predicted probabilities, in the paper's and a tuned form.

    Args:
        y_true: test labels (see :func:`to_multi_hot`).
        probs: test probabilities (N,) for binary, (N, C) otherwise.
        task_type: ``"binary"``, ``"multilabel"`` or ``"multiclass"``.
        val_true: validation labels, needed for the validation-tuned F1.
        val_probs: validation probabilities.
        warn: warn about undefined labels.

    Returns:
        A dict with ``auroc`` (NaN-aware macro; one-vs-rest for multi-class),
        ``auroc_per_label``, ``f1`` (macro F1 at the fixed 0.5 threshold, argmax for
        multi-class: the paper's protocol), ``f1_per_label``, ``f1_tuned`` and
        ``f1_tuned_per_label`` (per-label thresholds maximising validation F1; ``None`` for
        multi-class or without validation data) and ``thresholds``.
    """
    p = _as_2d(probs, "probs").astype(np.float64)
    t = to_multi_hot(y_true, task_type, num_classes=p.shape[1] if task_type == "multiclass" else None)
    if t.shape != p.shape:
        raise ValueError(f"labels {t.shape} and probabilities {p.shape} do not match for task_type={task_type!r}")
    auroc_lab = roc_auc_per_label(p, t)
    f1_lab = f1_per_label(binarize_predictions(p, task_type, 0.5), t)
    out: dict = {
        "auroc": nanmean_warn(auroc_lab, "macro AUROC", warn),
        "auroc_per_label": auroc_lab.tolist(),
        "f1": nanmean_warn(f1_lab, "macro F1", warn),
        "f1_per_label": f1_lab.tolist(),
        "f1_tuned": None,
        "f1_tuned_per_label": None,
        "thresholds": None,
    }
    if task_type != "multiclass" and val_true is not None and val_probs is not None:
        vt = to_multi_hot(val_true, task_type)
        thr = tune_thresholds(vt, _as_2d(val_probs, "val_probs"))
        f1_tuned = f1_per_label(binarize_predictions(p, task_type, thr), t)
        out.update(
            f1_tuned=nanmean_warn(f1_tuned, "macro F1 (tuned)", warn),
            f1_tuned_per_label=f1_tuned.tolist(),
            thresholds=thr.tolist(),
        )
    return out


# --------------------------------------------------------------------------- segmentation


def _check_masks(pred: np.ndarray | torch.Tensor, true: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    p = torch.as_tensor(pred).float()
    t = torch.as_tensor(true).float()
    if p.shape != t.shape or p.ndim < 3:
        raise ValueError(f"pred and true must share a shape (B, C, H, W), got {tuple(p.shape)} and {tuple(t.shape)}")
    if not bool(((p == 0) | (p == 1)).all()) or not bool(((t == 0) | (t == 1)).all()):
        raise ValueError("masks must be binarised (0/1); threshold the sigmoid output first")
    return p, t


def dice_per_image(
    pred: np.ndarray | torch.Tensor, true: np.ndarray | torch.Tensor, ignore_empty: bool = True
) -> np.ndarray:
    """Dice of each image (MONAI ``DiceMetric``), averaged over channels.

    Args:
        pred: binarised predictions (B, C, H, W).
        true: binary ground truth of the same shape.
        ignore_empty: MONAI's option: an image with an empty ground truth gives NaN (True) or
            1/0 depending on whether the prediction is empty too (False).

    Returns:
        float64 array (B,). Average these over images, not pixels over a batch.
    """
    p, t = _check_masks(pred, true)
    metric = DiceMetric(include_background=True, reduction="mean_batch", ignore_empty=ignore_empty)
    metric(y_pred=p, y=t)
    per = metric.get_buffer()
    metric.reset()
    return _channel_mean(per)


def iou_per_image(
    pred: np.ndarray | torch.Tensor, true: np.ndarray | torch.Tensor, ignore_empty: bool = True
) -> np.ndarray:
    """IoU of each image (MONAI ``MeanIoU``), averaged over channels; see :func:`dice_per_image`."""
    p, t = _check_masks(pred, true)
    metric = MeanIoU(include_background=True, reduction="mean_batch", ignore_empty=ignore_empty)
    metric(y_pred=p, y=t)
    per = metric.get_buffer()
    metric.reset()
    return _channel_mean(per)


def _channel_mean(per: torch.Tensor) -> np.ndarray:
    return _quiet_nanmean(_to_numpy(per).astype(np.float64))


# --------------------------------------------------------------------------- statistics on index arrays


def _rows(idx: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    idx = np.asarray(idx, dtype=np.int64)
    lead = idx.shape[:-1]
    return idx.reshape(-1, idx.shape[-1]), lead


def _batched_auroc(score: np.ndarray, true: np.ndarray) -> np.ndarray:
    """AUROC per (row, label) by the Mann-Whitney formula with mid-ranks; score/true (R, m, C)."""
    ranks = scipy.stats.rankdata(score, axis=1)
    n_pos = true.sum(axis=1)
    n_neg = true.shape[1] - n_pos
    rank_pos = (ranks * true).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def auroc_statistic(y_true: np.ndarray | torch.Tensor, y_score: np.ndarray | torch.Tensor) -> Statistic:
    """Macro AUROC of the rows selected by an index array, for :func:`bootstrap_ci`.

    Args:
        y_true: 0/1 labels (N,) or (N, C).
        y_score: scores of the same shape.

    Returns:
        ``stat(idx)`` mapping an integer array (..., m) of row indices to the NaN-aware macro
        AUROC of each index row, shape (...). ``stat(np.arange(N))`` equals :func:`macro_auroc`.
    """
    true, score = _same_shape_2d(y_true, "y_true", y_score, "y_score")

    def stat(idx: np.ndarray) -> np.ndarray:
        rows, lead = _rows(idx)
        out = np.empty(rows.shape[0])
        # Chunk rows so a (rows, m, C) block stays near 16M entries.
        step = max(1, int(16e6 // max(1, rows.shape[1] * true.shape[1])))
        for start in range(0, rows.shape[0], step):
            r = rows[start : start + step]
            out[start : start + step] = _quiet_nanmean(_batched_auroc(score[r], true[r]))
        return out.reshape(lead)

    return stat


def f1_statistic(y_true: np.ndarray | torch.Tensor, y_pred: np.ndarray | torch.Tensor) -> Statistic:
    """NaN-aware macro F1 of binarised predictions over the rows selected by an index array.

    Args:
        y_true: 0/1 labels (N,) or (N, C).
        y_pred: 0/1 predictions of the same shape.

    Returns:
        ``stat(idx)`` as in :func:`auroc_statistic`; ``stat(np.arange(N))`` equals the mean of
        :func:`f1_per_label`.
    """
    true, pred = _same_shape_2d(y_true, "y_true", y_pred, "y_pred")

    def stat(idx: np.ndarray) -> np.ndarray:
        rows, lead = _rows(idx)
        t, p = true[rows], pred[rows]
        tp = (t * p).sum(axis=1)
        fp = ((1 - t) * p).sum(axis=1)
        fn = (t * (1 - p)).sum(axis=1)
        den = 2 * tp + fp + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(den > 0, 2 * tp / den, np.nan)
        return _quiet_nanmean(f1).reshape(lead)

    return stat


def mean_statistic(values: np.ndarray | torch.Tensor) -> Statistic:
    """NaN-aware mean of per-row values (e.g. per-image Dice) over the selected rows."""
    vals = _to_numpy(values).astype(np.float64)
    if vals.ndim != 1:
        raise ValueError(f"values must have shape (N,), got {vals.shape}")

    def stat(idx: np.ndarray) -> np.ndarray:
        rows, lead = _rows(idx)
        return _quiet_nanmean(vals[rows]).reshape(lead)

    return stat


# --------------------------------------------------------------------------- bootstrap


def _check_bootstrap_args(n: int, n_resamples: int, confidence_level: float, method: str) -> None:
    if n < 2:
        raise ValueError(f"n must be >= 2 to bootstrap, got {n}")
    if n_resamples < 2:
        raise ValueError(f"n_resamples must be >= 2, got {n_resamples}")
    if not 0.0 < confidence_level < 1.0:
        raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level}")
    if method not in ("percentile", "BCa", "basic"):
        raise ValueError(f"method must be 'percentile', 'BCa' or 'basic', got {method!r}")


def _scipy_bootstrap(
    statistic: Statistic, n: int, n_resamples: int, confidence_level: float, method: str, seed: int
) -> Any:
    """Run ``scipy.stats.bootstrap`` over row indices; returns its ``BootstrapResult``."""

    def vectorised(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        return statistic(np.moveaxis(idx, axis, -1))

    with warnings.catch_warnings():
        # Degenerate resamples (e.g. one class only) give NaN; they are handled below.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.filterwarnings("ignore", message=".*degenerate.*")
        return scipy.stats.bootstrap(
            (np.arange(n),),
            vectorised,
            n_resamples=n_resamples,
            vectorized=True,
            confidence_level=confidence_level,
            method=method,
            rng=np.random.default_rng(seed),
        )


def _interval(res, confidence_level: float) -> ConfidenceInterval:
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if math.isnan(low) or math.isnan(high):
        dist = np.asarray(res.bootstrap_distribution, dtype=np.float64)
        finite = dist[np.isfinite(dist)]
        if finite.size == 0:
            return ConfidenceInterval(float("nan"), float("nan"))
        warnings.warn(
            f"{dist.size - finite.size} of {dist.size} bootstrap resamples gave an undefined statistic; "
            "the interval is the percentile interval of the defined ones",
            RuntimeWarning,
            stacklevel=3,
        )
        alpha = (1 - confidence_level) / 2
        low, high = np.quantile(finite, [alpha, 1 - alpha]).tolist()
    return ConfidenceInterval(low, high)


def bootstrap_ci(
    statistic: Statistic,
    n: int,
    n_resamples: int = 1000,
    confidence_level: float = 0.95,
    method: str = "percentile",
    seed: int = 0,
) -> ConfidenceInterval:
    """Bootstrap confidence interval of a statistic of ``n`` test rows (``scipy.stats.bootstrap``).

    Rows (patients) are resampled with replacement; the statistic sees the resampled row
    indices, so several arrays stay paired (labels with scores, predictions with masks).

    Args:
        statistic: ``stat(idx)`` from :func:`auroc_statistic`, :func:`f1_statistic`,
            :func:`mean_statistic` or any function of an index array (..., m) -> (...).
        n: number of rows.
        n_resamples: bootstrap resamples.
        confidence_level: e.g. 0.95.
        method: ``"percentile"`` (default), ``"BCa"`` or ``"basic"``.
        seed: seed of the resampling generator.

    Returns:
        :class:`ConfidenceInterval`.

    Raises:
        ValueError: for invalid arguments.

    Example:
        >>> y = np.array([0, 0, 1, 1, 0, 1]); s = np.array([.1, .4, .35, .8, .2, .9])
        >>> lo, hi = bootstrap_ci(auroc_statistic(y, s), n=6, n_resamples=200)
    """
    _check_bootstrap_args(n, n_resamples, confidence_level, method)
    res = _scipy_bootstrap(statistic, n, n_resamples, confidence_level, method, seed)
    return _interval(res, confidence_level)


def paired_bootstrap(
    statistic_a: Statistic,
    statistic_b: Statistic,
    n: int,
    n_resamples: int = 1000,
    confidence_level: float = 0.95,
    method: str = "percentile",
    seed: int = 0,
) -> dict:
    """Paired bootstrap of the difference ``a - b`` of two statistics on the same ``n`` rows.

    Both statistics see the same resampled rows. The two-sided p-value tests "no
    difference" by centring the bootstrap distribution of the difference on zero
    (Efron & Tibshirani 1993, ch. 16): ``p = (1 + #{|d* - d| >= |d|}) / (1 + B)``, with ``d`` the
    observed difference and ``d*`` its ``B`` defined bootstrap replicates.

    Args:
        statistic_a: statistic of encoder A (see :func:`bootstrap_ci`).
        statistic_b: statistic of encoder B on the same rows.
        n: number of rows.
        n_resamples: bootstrap resamples.
        confidence_level: of the interval of the difference.
        method: interval method (see :func:`bootstrap_ci`).
        seed: resampling seed.

    Returns:
        dict with ``a``, ``b``, ``difference`` (a - b on all rows), ``ci_low``, ``ci_high`` and
        ``p_value``.
    """
    _check_bootstrap_args(n, n_resamples, confidence_level, method)
    full = np.arange(n)
    a, b = float(statistic_a(full)), float(statistic_b(full))
    diff = a - b

    def stat(idx: np.ndarray) -> np.ndarray:
        return statistic_a(idx) - statistic_b(idx)

    res = _scipy_bootstrap(stat, n, n_resamples, confidence_level, method, seed)
    ci = _interval(res, confidence_level)
    dist = np.asarray(res.bootstrap_distribution, dtype=np.float64)
    dist = dist[np.isfinite(dist)]
    if dist.size == 0 or not math.isfinite(diff):
        p_value = float("nan")
    else:
        p_value = float((1 + np.sum(np.abs(dist - diff) >= abs(diff) - 1e-12)) / (1 + dist.size))
    return {"a": a, "b": b, "difference": diff, "ci_low": ci.low, "ci_high": ci.high, "p_value": min(1.0, p_value)}


def delong_test(
    y_true: np.ndarray | torch.Tensor, score_a: np.ndarray | torch.Tensor, score_b: np.ndarray | torch.Tensor
) -> dict:
    """DeLong's test for two correlated binary AUROCs on the same cases (DeLong et al. 1988).

    Uses the structural components (placement values) of each score with mid-ranks for ties.

    Args:
        y_true: binary labels (N,).
        score_a: scores of model A (N,).
        score_b: scores of model B (N,).

    Returns:
        dict with ``auroc_a``, ``auroc_b``, ``difference``, ``z`` and two-sided ``p_value``.

    Raises:
        ValueError: when the labels are not binary with both classes present.
    """
    t = to_multi_hot(y_true, "binary")[:, 0]
    sa = _as_2d(score_a, "score_a")[:, 0].astype(np.float64)
    sb = _as_2d(score_b, "score_b")[:, 0].astype(np.float64)
    if not (t.shape == sa.shape == sb.shape):
        raise ValueError(f"y_true, score_a, score_b must have the same length, got {t.shape}, {sa.shape}, {sb.shape}")
    pos, neg = t == 1, t == 0
    m, k = int(pos.sum()), int(neg.sum())
    if m < 2 or k < 2:
        raise ValueError(f"delong_test needs at least 2 positives and 2 negatives, got {m} and {k}")
    v10, v01, aucs = [], [], []
    for s in (sa, sb):
        # Fast DeLong (Sun & Xu 2014): placement values from mid-ranks, O(N log N) memory-light.
        x, y = s[pos], s[neg]
        tz = scipy.stats.rankdata(np.concatenate([x, y]))
        tx, ty = scipy.stats.rankdata(x), scipy.stats.rankdata(y)
        v10.append((tz[:m] - tx) / k)
        v01.append(1.0 - (tz[m:] - ty) / m)
        aucs.append(float(tz[:m].sum() / (m * k) - (m + 1) / (2 * k)))
    s10 = np.cov(np.vstack(v10))
    s01 = np.cov(np.vstack(v01))
    cov = s10 / m + s01 / k
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diff = aucs[0] - aucs[1]
    if var <= 0:
        z = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    else:
        z = diff / math.sqrt(var)
    p = float(2 * scipy.stats.norm.sf(abs(z)))
    return {
        "auroc_a": float(aucs[0]), "auroc_b": float(aucs[1]), "difference": float(diff), "z": float(z), "p_value": p,
    }
