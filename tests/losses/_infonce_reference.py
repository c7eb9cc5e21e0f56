"""Independent float64 reference of the symmetric InfoNCE, written with numpy loops (shared by the loss tests)."""

from __future__ import annotations

import numpy as np

__all__ = ["reference_infonce", "reference_row_losses"]


def _log_softmax_row(row: np.ndarray) -> np.ndarray:
    shifted = row - row.max()
    return shifted - np.log(np.exp(shifted).sum())


def reference_row_losses(
    a: np.ndarray, b: np.ndarray, scale: float, label_smoothing: float, normalize: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row cross-entropies (a -> b, b -> a) of the whole batch, row i paired with column i.

    The target distribution is the one ``F.cross_entropy(label_smoothing=eps)`` documents:
    ``(1 - eps) * one_hot + eps / N``.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if normalize:
        a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    n = a.shape[0]
    losses = []
    for queries, keys in ((a, b), (b, a)):
        per_row = np.empty(n)
        for i in range(n):
            logits = np.array([scale * float(np.dot(queries[i], keys[j])) for j in range(n)])
            log_p = _log_softmax_row(logits)
            target = np.full(n, label_smoothing / n)
            target[i] += 1.0 - label_smoothing
            per_row[i] = -(target * log_p).sum()
        losses.append(per_row)
    return losses[0], losses[1]


def reference_infonce(a: np.ndarray, b: np.ndarray, scale: float, label_smoothing: float, normalize: bool) -> float:
    """``0.5 * (CE(a -> b) + CE(b -> a))`` averaged over the batch."""
    ab, ba = reference_row_losses(a, b, scale, label_smoothing, normalize)
    return float(0.5 * (ab.mean() + ba.mean()))
