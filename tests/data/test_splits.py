"""Tests for pacx.data.splits: patient-level splits, leakage refusal, nested low-data subsets."""

from __future__ import annotations

import numpy as np
import pytest

from pacx.data.splits import check_overlap, low_data_subset, patient_split


def _patients(n_patients: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.repeat([f"p{i:04d}" for i in range(n_patients)], rng.integers(1, 5, n_patients))


def test_patient_split_is_disjoint_complete_and_sized():
    ids = _patients()
    parts = patient_split(ids, fractions=(0.7, 0.1, 0.2), seed=3)
    assert sum(len(p) for p in parts) == ids.size
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(ids.size))
    patient_sets = [set(ids[p]) for p in parts]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not patient_sets[a] & patient_sets[b]
            check_overlap(ids[parts[a]], ids[parts[b]], "a", "b")  # must not raise
    assert [len(s) for s in patient_sets] == [140, 20, 40]  # fractions apply to patients


def test_patient_split_is_seeded_and_order_independent():
    ids = _patients()
    a = patient_split(ids, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, patient_split(ids, seed=1)))
    assert not np.array_equal(a[0], patient_split(ids, seed=2)[0])
    perm = np.random.default_rng(0).permutation(ids.size)
    shuffled = patient_split(ids[perm], seed=1)
    assert set(ids[perm][shuffled[2]]) == set(ids[a[2]])  # same patients whatever the row order


def test_patient_split_stratifies_on_patient_labels():
    ids = _patients(400)
    rng = np.random.default_rng(1)
    patient_positive = {p: rng.random() < 0.1 for p in np.unique(ids)}
    labels = np.array([int(patient_positive[p]) for p in ids])
    prevalence = np.mean(list(patient_positive.values()))
    parts = patient_split(ids, fractions=(0.5, 0.25, 0.25), seed=0, stratify=labels)
    for part in parts:
        split_patients = np.unique(ids[part])
        split_prevalence = np.mean([patient_positive[p] for p in split_patients])
        assert abs(split_prevalence - prevalence) < 0.02
    multi = np.stack([labels, 1 - labels], axis=1)  # rarest column is `labels`
    assert all(np.array_equal(x, y) for x, y in zip(parts, patient_split(ids, (0.5, 0.25, 0.25), 0, multi)))


@pytest.mark.parametrize("fractions", [(0.5, 0.4), (0.7, -0.1, 0.4), ()])
def test_patient_split_rejects_bad_fractions(fractions):
    with pytest.raises(ValueError, match="fractions"):
        patient_split(["a", "b"], fractions=fractions)


def test_check_overlap_refuses_with_count_and_examples():
    with pytest.raises(ValueError, match=r"2 ids appear in both train and test.*\['p1', 'p2'\]"):
        check_overlap(["p0", "p1", "p2"], ["p2", "p1", "p9"], "train", "test")
    with pytest.warns(RuntimeWarning, match="1 ids appear in both"):
        assert check_overlap([1, 2], [2, 3], refuse=False) == [2]
    assert check_overlap([1], [2]) == []


def _multilabel(n: int = 2000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    prevalence = np.array([0.3, 0.1, 0.02, 0.003, 0.001])
    return (rng.random((n, prevalence.size)) < prevalence).astype(np.int64)


def test_low_data_subset_keeps_every_label_and_is_seeded():
    y = _multilabel()
    assert (y.sum(axis=0) >= 1).all()
    for fraction in (0.01, 0.1):
        sub = low_data_subset(y, fraction, seed=0)
        assert (y[sub].sum(axis=0) >= 1).all()  # every label keeps a positive
        assert sub.size == max(round(fraction * len(y)), 1) and np.unique(sub).size == sub.size
        assert np.array_equal(sub, low_data_subset(y, fraction, seed=0))
    assert not np.array_equal(low_data_subset(y, 0.1, seed=0), low_data_subset(y, 0.1, seed=1))
    assert np.array_equal(low_data_subset(y, 1.0, seed=5), np.arange(len(y)))


def test_low_data_subsets_are_nested():
    y = _multilabel()
    for seed in range(3):
        one, ten, half = (set(low_data_subset(y, f, seed=seed).tolist()) for f in (0.01, 0.1, 0.5))
        assert one <= ten <= half


def test_low_data_subset_is_stratified_for_binary_and_multiclass():
    rng = np.random.default_rng(2)
    binary = (rng.random(5000) < 0.2).astype(int)
    sub = low_data_subset(binary, 0.1, seed=0)
    assert abs(binary[sub].mean() - binary.mean()) < 0.01  # a random draw would be off by ~0.018
    classes = rng.choice(4, size=3000, p=[0.6, 0.3, 0.09, 0.01])
    sub = low_data_subset(classes, 0.01, seed=0)
    assert set(classes[sub].tolist()) == {0, 1, 2, 3}  # every class, the 1% one included
    sub = low_data_subset(classes, 0.2, seed=0)
    for c in range(4):
        assert abs(np.mean(classes[sub] == c) - np.mean(classes == c)) < 0.01
    y = _multilabel(5000, 3)
    sub = low_data_subset(y, 0.1, seed=0)
    np.testing.assert_allclose(y[sub].mean(axis=0)[:2], y.mean(axis=0)[:2], atol=0.02)


def test_low_data_subset_validation_and_unlearnable_label():
    with pytest.raises(ValueError, match="fraction"):
        low_data_subset(np.zeros(10), 0.0)
    with pytest.raises(ValueError, match="NaN"):
        low_data_subset(np.array([0.0, np.nan]), 0.5)
    y = np.zeros((50, 2), dtype=int)
    y[:5, 0] = 1
    with pytest.warns(RuntimeWarning, match="label column 1 has no positive"):
        sub = low_data_subset(y, 0.02, seed=0)
    assert y[sub, 0].sum() >= 1
