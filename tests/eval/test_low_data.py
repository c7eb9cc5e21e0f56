"""Low-data subsets delegate to pacx.data.splits.low_data_subset."""

from __future__ import annotations

import numpy as np
import torch

from pacx.data.splits import low_data_subset
from pacx.eval.low_data import LOW_DATA_FRACTIONS, low_data_indices, low_data_subsets


def test_subsets_nested_stratified_seeded():
    y = np.r_[np.zeros(900), np.ones(100)].astype(int)
    subsets = low_data_subsets(torch.as_tensor(y)[:, None], seed=3)
    assert sorted(subsets) == sorted(LOW_DATA_FRACTIONS)
    assert len(subsets[0.01]) == 10 and len(subsets[0.1]) == 100 and len(subsets[1.0]) == 1000
    assert set(subsets[0.01]) <= set(subsets[0.1])
    assert 7 <= y[subsets[0.1]].sum() <= 13  # about 10 % positives, like the population
    np.testing.assert_array_equal(subsets[0.1], low_data_subset(y, 0.1, seed=3))
    assert not np.array_equal(low_data_indices(y, 0.1, seed=4), subsets[0.1])


def test_multilabel_keeps_every_label():
    rng = np.random.default_rng(0)
    y = (rng.random((500, 5)) < [0.3, 0.1, 0.05, 0.02, 0.01]).astype(int)
    idx = low_data_indices(y, 0.01, seed=0)
    assert (y[idx].sum(axis=0) >= 1).all()
