"""Patient-level splits, leakage checks and nested low-data training subsets.

Everything is deterministic for a given ``seed`` (a local ``numpy.random.Generator``; no
global RNG is touched) and independent of the order in which patients first appear.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["check_overlap", "low_data_subset", "patient_split"]


def _stratum_labels(stratify: np.ndarray, n: int) -> np.ndarray:
    arr = np.asarray(stratify)
    if arr.shape[0] != n:
        raise ValueError(f"stratify must have one row per item ({n}), got {arr.shape[0]}")
    if arr.ndim == 2:
        # Multi-label: stratify on the label with the fewest positives (the one a random
        # split is most likely to starve), as the reference's MedMod split did.
        positives = (arr > 0).sum(axis=0)
        return (arr[:, int(np.argmin(positives))] > 0).astype(np.int64)
    if arr.ndim != 1:
        raise ValueError(f"stratify must have shape (N,) or (N, C), got {arr.shape}")
    return arr


def _boundaries(n: int, fractions: np.ndarray) -> np.ndarray:
    # Largest-remainder rounding of the cumulative fractions: sizes sum exactly to n.
    return np.round(np.cumsum(fractions) * n).astype(int)


def patient_split(
    patient_ids: Sequence | np.ndarray,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    stratify: np.ndarray | Sequence | None = None,
) -> tuple[np.ndarray, ...]:
    """Split items into disjoint groups of PATIENTS, so all images of a patient share a split.

    Patients (unique ids, sorted) are permuted by ``numpy.random.default_rng(seed)`` and cut at
    the cumulative ``fractions``. With ``stratify``, each patient gets one stratum (the maximum
    of its items' values, i.e. "ever positive" for binary labels; for ``(N, C)`` multi-label
    input, the rarest label) and the cut is made separately inside each stratum, so label
    prevalence is about equal across splits.

    Args:
        patient_ids: ``(N,)`` patient id per item (any hashable, sortable type).
        fractions: split fractions, non-negative, summing to 1. Defaults to (0.7, 0.1, 0.2).
        seed: seed of the permutation.
        stratify: optional ``(N,)`` discrete labels or ``(N, C)`` multi-hot labels.

    Returns:
        A tuple with one sorted int64 array of ITEM indices per fraction.

    Raises:
        ValueError: on empty input, fractions that are negative or do not sum to 1, or a
            ``stratify`` of the wrong length.

    Example:
        >>> train, test = patient_split(["a", "a", "b", "c", "d"], fractions=(0.5, 0.5), seed=0)
        >>> sorted(set(train.tolist()) | set(test.tolist()))
        [0, 1, 2, 3, 4]
    """
    ids = np.asarray(patient_ids)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError(f"patient_ids must be a non-empty 1-D sequence, got shape {ids.shape}")
    frac = np.asarray(fractions, dtype=np.float64)
    if frac.ndim != 1 or frac.size == 0 or (frac < 0).any() or not np.isclose(frac.sum(), 1.0, atol=1e-6):
        raise ValueError(f"fractions must be non-negative and sum to 1, got {tuple(fractions)}")
    patients, inverse = np.unique(ids, return_inverse=True)
    inverse = inverse.reshape(-1)
    rng = np.random.default_rng(seed)
    if stratify is None:
        strata = np.zeros(len(patients), dtype=np.int64)
    else:
        item_strata = _stratum_labels(np.asarray(stratify), ids.size)
        codes = np.unique(item_strata, return_inverse=True)[1].reshape(-1)
        strata = np.full(len(patients), -1, dtype=np.int64)
        np.maximum.at(strata, inverse, codes)
    assignment = np.empty(len(patients), dtype=np.int64)
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        members = members[rng.permutation(members.size)]
        start = 0
        for split, stop in enumerate(_boundaries(members.size, frac)):
            assignment[members[start:stop]] = split
            start = stop
    item_split = assignment[inverse]
    return tuple(np.flatnonzero(item_split == k).astype(np.int64) for k in range(frac.size))


def check_overlap(
    ids_a: Iterable,
    ids_b: Iterable,
    name_a: str = "a",
    name_b: str = "b",
    refuse: bool = True,
) -> list:
    """Report ids present in both collections (patient leakage between two splits).

    Args:
        ids_a: ids of the first split (e.g. patient ids of the training images).
        ids_b: ids of the second split.
        name_a: name of the first split, used in the message.
        name_b: name of the second split, used in the message.
        refuse: raise on overlap (default); when False, warn and return the overlap.

    Returns:
        The sorted list of shared ids (empty when the splits are disjoint).

    Raises:
        ValueError: when ``refuse`` and the splits share ids; the message gives the count and
            up to five examples.

    Example:
        >>> check_overlap([1, 2], [3], "train", "test")
        []
    """
    shared = sorted(set(np.asarray(list(ids_a)).tolist()) & set(np.asarray(list(ids_b)).tolist()))
    if shared:
        message = (
            f"{len(shared)} ids appear in both {name_a} and {name_b} (patient leakage), e.g. {shared[:5]}"
        )
        if refuse:
            raise ValueError(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    return shared


def _systematic_order(strata: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Order rows so that EVERY prefix is (nearly) proportionally stratified.

    Within a stratum of size m, its rows (shuffled) get positions (k + u) / m with one random
    offset u in [0, 1); merging all strata by position interleaves them in proportion, so the
    first n rows hold about n * m / N rows of the stratum for every n.
    """
    positions = np.empty(strata.size, dtype=np.float64)
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        members = members[rng.permutation(members.size)]
        positions[members] = (np.arange(members.size) + rng.random()) / members.size
    # Ties between strata are broken by a random key, not by row index.
    return np.lexsort((rng.random(strata.size), positions))


def low_data_subset(labels: np.ndarray | Sequence, fraction: float, seed: int = 0) -> np.ndarray:
    """Indices of a seeded, stratified, NESTED ``fraction`` of the TRAINING rows.

    How the subset is drawn (only the training split is subsampled; validation and test stay
    whole, so every fraction is scored on the same sets):

    1. Guaranteed rows: labels are visited from the rarest to the most common (by positive
       count); for each label that no guaranteed row covers yet, one random positive row is
       added. "Positive" means value > 0 for ``(N, C)`` multi-hot labels and "is this class"
       for ``(N,)`` binary/multi-class labels (so every class, including 0, is kept).
    2. The other rows are ordered by systematic stratified sampling (stratum = the row's class
       for ``(N,)``; its rarest positive label, or "none", for ``(N, C)``), so that every prefix
       of the order has about the population's stratum proportions.
    3. The subset is the guaranteed rows followed by the first rows of that order, for a total
       of ``max(round(fraction * N), number of guaranteed rows)`` (at least 1).

    The order depends only on ``labels`` and ``seed``, never on ``fraction``; the subset for a
    smaller fraction is therefore a prefix of, and contained in, the subset for a larger one
    (the 1 % subset is inside the 10 % subset for the same seed). A label with no positive at
    all cannot be kept; it triggers a warning.

    Args:
        labels: training labels, ``(N,)`` class ids (binary or multi-class) or ``(N, C)``
            multi-hot (0/1; missing entries should be 0).
        fraction: in (0, 1]; 1 returns every index.
        seed: seed of the draw.

    Returns:
        Sorted int64 array of row indices into ``labels``.

    Raises:
        ValueError: on a fraction outside (0, 1], empty labels, NaN labels or a wrong shape.

    Example:
        >>> y = np.array([1] * 5 + [0] * 95)
        >>> small, large = low_data_subset(y, 0.02, seed=0), low_data_subset(y, 0.1, seed=0)
        >>> bool(y[small].sum() >= 1), set(small) <= set(large)
        (True, True)
    """
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    arr = np.asarray(labels)
    if arr.ndim not in (1, 2) or arr.shape[0] == 0:
        raise ValueError(f"labels must have shape (N,) or (N, C) with N > 0, got {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating) and np.isnan(arr).any():
        raise ValueError(f"labels contain NaN (first at row {int(np.argwhere(np.isnan(arr))[0][0])}); set missing to 0")
    n = arr.shape[0]
    if float(fraction) == 1.0:
        return np.arange(n, dtype=np.int64)
    if arr.ndim == 1:
        _, codes = np.unique(arr, return_inverse=True)
        codes = codes.reshape(-1)
        onehot = np.zeros((n, codes.max() + 1), dtype=bool)
        onehot[np.arange(n), codes] = True
    else:
        onehot = arr > 0
    positives = onehot.sum(axis=0)
    rarity = np.argsort(positives, kind="stable")
    rng = np.random.default_rng(seed)
    guaranteed: list[int] = []
    covered = np.zeros(onehot.shape[1], dtype=bool)
    for label in rarity:
        if covered[label]:
            continue
        rows = np.flatnonzero(onehot[:, label])
        if rows.size == 0:
            message = f"label column {label} has no positive row; the subset cannot keep one"
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            continue
        row = int(rows[rng.integers(rows.size)])
        guaranteed.append(row)
        covered |= onehot[row]
    if arr.ndim == 1:
        strata = codes
    else:
        # Stratum of a row: its rarest positive label (the column with fewest positives), or -1.
        rank = np.empty_like(rarity)
        rank[rarity] = np.arange(rarity.size)
        masked = np.where(onehot, rank[None, :], onehot.shape[1])
        rarest = masked.min(axis=1)
        strata = np.where(rarest < onehot.shape[1], rarest, -1)
    rest_mask = np.ones(n, dtype=bool)
    rest_mask[guaranteed] = False
    rest = np.flatnonzero(rest_mask)
    order = np.concatenate([np.asarray(guaranteed, dtype=np.int64), rest[_systematic_order(strata[rest], rng)]])
    size = max(int(round(float(fraction) * n)), len(guaranteed), 1)
    return np.sort(order[:size]).astype(np.int64)
