"""The vitals of the synthetic cohort: structural signs, informative missingness, ranges, files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pacx.data.synthetic import make_cohort, sample_latent_state, simulate_vitals
from pacx.data.vitals import VITAL_NAMES, VITAL_UNITS, VitalsDataset, fit_vitals_percentiles

# Physical range and reported precision (decimals) of each column, as documented.
RANGES = {"heart_rate": (30, 200, 0), "systolic_bp": (60, 250, 0), "diastolic_bp": (30, 240, 0),
          "spo2": (60, 100, 0), "resp_rate": (6, 50, 0), "temperature": (34, 42, 1), "weight": (30, 250, 1)}
# The documented signs of the structural equations: vital -> {latent: sign}.
SIGNS = {
    "heart_rate": {"cardiac": 1, "congestion": 1, "inflammation": 1, "respiratory": 1, "conduction": -1},
    "systolic_bp": {"age_z": 1, "renal": 1, "hypertrophy": 1, "sex": 1, "cardiac": -1, "inflammation": -1},
    "spo2": {"congestion": -1, "respiratory": -1},
    "resp_rate": {"congestion": 1, "respiratory": 1, "inflammation": 1},
    "temperature": {"inflammation": 1},
    "weight": {"sex": 1, "age_z": -1, "congestion": 1},
}


@pytest.fixture(scope="module")
def simulated() -> tuple[dict, np.ndarray, np.ndarray]:
    state = sample_latent_state(20_000, np.random.default_rng(11))
    values, observed = simulate_vitals(state, np.random.default_rng(12))
    return state, values, observed


def _col(name: str) -> int:
    return VITAL_NAMES.index(name)


def test_values_are_physical_rounded_and_nan_exactly_where_missing(simulated) -> None:
    _, values, observed = simulated
    assert values.shape == observed.shape == (20_000, 7) and observed.dtype == np.int64
    np.testing.assert_array_equal(np.isnan(values), observed == 0)
    for name, (lo, hi, decimals) in RANGES.items():
        x = values[observed[:, _col(name)] == 1, _col(name)]
        assert lo <= x.min() and x.max() <= hi, name
        np.testing.assert_allclose(x, np.round(x, decimals), atol=1e-9, err_msg=name)
        assert np.unique(x).size > 10, name  # not collapsed onto a bound
    both = observed[:, _col("systolic_bp")] == 1
    assert (values[both, _col("diastolic_bp")] <= values[both, _col("systolic_bp")] - 10).all()
    np.testing.assert_array_equal(observed[:, _col("systolic_bp")], observed[:, _col("diastolic_bp")])  # one cuff


@pytest.mark.parametrize("vital", sorted(SIGNS))
def test_each_documented_sign_holds(simulated, vital: str) -> None:
    """Least squares of the vital on its documented parents recovers every documented sign."""
    state, values, observed = simulated
    rows = observed[:, _col(vital)] == 1
    parents = list(SIGNS[vital])
    x = np.stack([state[k][rows].astype(np.float64) for k in parents] + [np.ones(rows.sum())], 1)
    coef, *_ = np.linalg.lstsq(x, values[rows, _col(vital)], rcond=None)
    resid = values[rows, _col(vital)] - x @ coef
    se = np.sqrt(resid.var() * np.diag(np.linalg.inv(x.T @ x)))[:-1]
    for k, c, s in zip(parents, coef, se):
        assert np.sign(c) == SIGNS[vital][k] and abs(c) > 4 * s, (vital, k, c, s)


def _ridge_r2(x: np.ndarray, y: np.ndarray, n_fit: int, lam: float = 1.0) -> float:
    z = np.concatenate([x, np.ones((len(x), 1))], 1)
    w = np.linalg.solve(z[:n_fit].T @ z[:n_fit] + lam * np.eye(z.shape[1]), z[:n_fit].T @ y[:n_fit])
    return float(1.0 - ((y[n_fit:] - z[n_fit:] @ w) ** 2).mean() / y[n_fit:].var())


def test_vitals_read_out_the_latent_state(simulated) -> None:
    """A ridge read-out of the stored representation (percentiles + observed flags), 2,000 patients."""
    state, values, observed = simulated
    n, n_fit = 2000, 1200
    pct, obs = fit_vitals_percentiles(values[:n_fit]).transform(values[:n])
    features = np.concatenate([pct, obs], 1)
    r2 = {k: _ridge_r2(features, state[k][:n].astype(np.float64), n_fit) for k in ("cardiac", "congestion")}
    assert r2["cardiac"] > 0.15 and r2["congestion"] > 0.35, r2  # about 0.3 and 0.55
    assert _ridge_r2(features, state["nodule"][:n].astype(np.float64), n_fit) < 0.02  # anatomy: nothing


def test_missingness_is_informative(simulated) -> None:
    state, _, observed = simulated
    sick = (state["congestion"] + state["inflammation"]) > 1.0
    healthy = (state["congestion"] + state["inflammation"]) < -1.0
    gap = observed[sick].mean(0) - observed[healthy].mean(0)
    assert (gap > 0.03).all(), dict(zip(VITAL_NAMES, gap.round(3)))
    assert gap[_col("weight")] > 0.2 and gap[_col("temperature")] > 0.2
    rate = observed.mean(0)
    assert rate[_col("weight")] < rate[_col("temperature")] < rate[_col("resp_rate")] < rate[_col("heart_rate")]
    assert 0.35 < rate[_col("weight")] < 0.6 and rate[_col("heart_rate")] > 0.9


def test_same_generator_seed_same_vitals() -> None:
    state = sample_latent_state(500, np.random.default_rng(0))
    a = simulate_vitals(state, np.random.default_rng(5))
    b = simulate_vitals(state, np.random.default_rng(5))
    c = simulate_vitals(state, np.random.default_rng(6))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


# ----------------------------------------------------------------------------------------------
# Files of a cohort
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return make_cohort(tmp_path_factory.mktemp("cohorts"), n_patients=300, image_size=16, seed=2)


def _load(root: Path, split: str, stem: str) -> np.ndarray:
    return np.load(root / "data_npy" / split / f"{stem}_{split}.npy")


def test_cohort_writes_vitals_files_and_metadata(cohort: Path) -> None:
    meta = json.loads((cohort / "cohort.json").read_text())
    assert meta["version"] == "1.1.0"
    assert meta["vitals"]["names"] == list(VITAL_NAMES) and meta["vitals"]["units"] == list(VITAL_UNITS)
    means = np.array([meta["vitals"]["train_mean_percentile"][k] for k in VITAL_NAMES], dtype=np.float32)
    raw_train = _load(cohort, "train", "vitals_raw")
    reference = fit_vitals_percentiles(raw_train)  # the reader's conversion, from the train split only
    for split, n in meta["splits"].items():
        pct, obs, raw = (_load(cohort, split, k) for k in ("vitals", "vitals_observed", "vitals_raw"))
        assert (pct.shape, pct.dtype, obs.shape, obs.dtype) == ((n, 7), np.float32, (n, 7), np.int64)
        assert (raw.shape, raw.dtype) == ((n, 7), np.float32)
        assert pct.min() >= 0.0 and pct.max() <= 1.0 and set(np.unique(obs)) <= {0, 1}
        np.testing.assert_array_equal(np.isnan(raw), obs == 0)
        np.testing.assert_allclose(pct[obs == 0], np.broadcast_to(means, pct.shape)[obs == 0], atol=1e-6)
        expected_pct, expected_obs = reference.transform(raw)
        np.testing.assert_allclose(pct, expected_pct, atol=1e-6)
        np.testing.assert_array_equal(obs, expected_obs)
        for stem in ("vitals", "vitals_observed", "vitals_raw"):
            digest = hashlib.sha256(_load(cohort, split, stem).tobytes()).hexdigest()
            assert meta["file_hashes"][f"data_npy/{split}/{stem}_{split}.npy"] == digest
    # rows are the patients of hadm_id_<split>.npy: temperature follows that patient's inflammation
    latent = pd.read_csv(cohort / "latent" / "train.csv")
    np.testing.assert_array_equal(latent["hadm_id"].to_numpy(), _load(cohort, "train", "hadm_id"))
    seen = ~np.isnan(raw_train[:, _col("temperature")])
    assert np.corrcoef(raw_train[seen, _col("temperature")], latent["inflammation"].to_numpy()[seen])[0, 1] > 0.5


def test_cohort_vitals_are_deterministic(cohort: Path, tmp_path: Path) -> None:
    again = make_cohort(tmp_path, n_patients=300, image_size=16, seed=2, num_workers=1)
    for stem in ("vitals", "vitals_observed", "vitals_raw"):
        assert (cohort / "data_npy" / "val" / f"{stem}_val.npy").read_bytes() == \
            (again / "data_npy" / "val" / f"{stem}_val.npy").read_bytes()
    other = make_cohort(tmp_path, n_patients=300, image_size=16, seed=3)
    assert not np.array_equal(_load(cohort, "train", "vitals_observed"), _load(other, "train", "vitals_observed"))


def test_vitals_dataset_reads_the_cohort(cohort: Path) -> None:
    ds = VitalsDataset(cohort, "probe_train")
    item = ds[3]
    assert item["vitals"].shape == (7,) and item["vitals_observed"].shape == (7,)
    assert item["hadm_id"] == int(_load(cohort, "probe_train", "hadm_id")[3]) and item["index"] == 3
    np.testing.assert_allclose(item["vitals"].numpy(), _load(cohort, "probe_train", "vitals")[3])
