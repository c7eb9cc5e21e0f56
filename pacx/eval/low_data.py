"""Low-data training subsets for the linear probe (1 %, 10 %, 100 %).

The subset logic lives in one place, :func:`pacx.data.splits.low_data_subset` (seeded,
stratified, nested: the 1 % subset is inside the 10 % subset of the same seed; only the
training split is subsampled, validation and test stay whole). This module adds the
paper's fractions and a helper drawing all of them at once; :func:`pacx.eval.probe_task`
calls the same function with ``train_fraction``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pacx.data.splits import low_data_subset

__all__ = ["LOW_DATA_FRACTIONS", "low_data_indices", "low_data_subsets"]

LOW_DATA_FRACTIONS = (0.01, 0.1, 1.0)


def low_data_indices(labels: np.ndarray | torch.Tensor | Sequence, fraction: float, seed: int = 0) -> np.ndarray:
    """Training-row indices of one stratified ``fraction`` (see :func:`pacx.data.splits.low_data_subset`).

    Accepts labels as the probes do: (N,), (N, 1) (squeezed) or (N, C) multi-hot / one-hot,
    as numpy arrays or tensors.

    Args:
        labels: training labels.
        fraction: in (0, 1]; 1 returns every index.
        seed: seed of the draw.

    Returns:
        Sorted int64 indices.

    Example:
        >>> y = np.r_[np.zeros(90), np.ones(10)]
        >>> idx = low_data_indices(y, 0.1, seed=0)
        >>> len(idx), int(y[idx].sum()) >= 1
        (10, True)
    """
    arr = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    return low_data_subset(arr, fraction, seed=seed)


def low_data_subsets(
    labels: np.ndarray | torch.Tensor | Sequence, fractions: Sequence[float] = LOW_DATA_FRACTIONS, seed: int = 0
) -> dict[float, np.ndarray]:
    """``{fraction: indices}`` for several fractions of the same seed (nested subsets).

    Args:
        labels: training labels (see :func:`low_data_indices`).
        fractions: fractions in (0, 1]; defaults to the paper's 1 %, 10 %, 100 %.
        seed: seed of the draw.

    Returns:
        Dict from fraction to sorted int64 indices.
    """
    return {float(f): low_data_indices(labels, f, seed=seed) for f in fractions}
