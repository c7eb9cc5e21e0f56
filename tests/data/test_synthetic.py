"""Tests of the synthetic cohort: on-disk layout, determinism, caching, signal placement."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pacx.data import synthetic as syn
from pacx.data.synthetic import cohort as cohort_module
from pacx.data.synthetic import make_cohort

N, SIZE = 360, 32
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return make_cohort(tmp_path_factory.mktemp("cohorts"), n_patients=N, image_size=SIZE, seed=3)


def _load(root: Path, split: str, name: str) -> np.ndarray:
    return np.load(root / "data_npy" / split / f"{name}_{split}.npy")


# ----------------------------------------------------------------------------------------------
# Layout
# ----------------------------------------------------------------------------------------------
def test_layout_shapes_and_dtypes(cohort: Path) -> None:
    meta = json.loads((cohort / "cohort.json").read_text())
    assert cohort.name == f"cohort_{meta['params_hash']}"
    assert set(meta["splits"]) == set(syn.SPLITS)
    assert sum(meta["splits"].values()) == N
    assert meta["tasks"]["reduced_ef"]["kind"] == "physiology" and meta["tasks"]["nodule"]["kind"] == "anatomy"
    assert all(t["type"] == "binary" for t in meta["tasks"].values())
    assert meta["segmentation"] == {"lung": {"kind": "anatomy", "mask": "tasks/lung_mask_{split}.npy"}}
    assert meta["ecg_labels"] and all(c.startswith("ecg_") for c in meta["ecg_labels"])
    for key in ("parameters", "content_hash", "version", "generation_seconds"):
        assert key in meta
    hadm_all, subj_all = [], []
    for split, n in meta["splits"].items():
        cxr = np.load(cohort / "data_npy" / split / f"cxr_{split}.npy", mmap_mode="r")
        ecg = np.load(cohort / "data_npy" / split / f"ecg_{split}.npy", mmap_mode="r")
        pct, obs, hadm = (_load(cohort, split, k) for k in ("labs_percentiles", "labs_missingness", "hadm_id"))
        lung = np.load(cohort / "tasks" / f"lung_mask_{split}.npy")
        assert (cxr.shape, cxr.dtype) == ((n, 3, SIZE, SIZE), np.float32)
        assert (ecg.shape, ecg.dtype) == ((n, 1, 5000, 12), np.float32)
        assert (pct.shape, pct.dtype) == ((n, 50), np.float32)
        assert (obs.shape, obs.dtype) == ((n, 50), np.int64)
        assert (hadm.shape, hadm.dtype) == ((n,), np.int64)
        assert (lung.shape, lung.dtype) == ((n, SIZE, SIZE), np.uint8)
        table = pd.read_csv(cohort / "tasks" / f"{split}.csv")
        assert list(table.columns[:2]) == ["hadm_id", "subject_id"]
        assert set(table.columns) == {"hadm_id", "subject_id", *meta["tasks"], *meta["ecg_labels"]}
        np.testing.assert_array_equal(table["hadm_id"].to_numpy(), hadm)  # row-aligned
        hadm_all.append(hadm)
        subj_all.append(table["subject_id"].to_numpy())
    hadm_all, subj_all = np.concatenate(hadm_all), np.concatenate(subj_all)
    assert np.unique(hadm_all).size == N and np.unique(subj_all).size == N  # patient-disjoint splits
    means = json.loads((cohort / "labs_means.json").read_text())
    assert list(means) == [f"{i}_percentile" for i in syn.LAB_ITEMIDS] == sorted(means)


def test_cxr_is_imagenet_normalised_grayscale(cohort: Path) -> None:
    cxr = _load(cohort, "train", "cxr")
    gray = cxr * IMAGENET_STD[None, :, None, None] + IMAGENET_MEAN[None, :, None, None]
    np.testing.assert_allclose(gray[:, 0], gray[:, 1], atol=1e-5)
    np.testing.assert_allclose(gray[:, 0], gray[:, 2], atol=1e-5)
    assert gray.min() >= -1e-5 and gray.max() <= 1 + 1e-5
    assert gray.std() > 0.1  # not a blank image


def test_lung_masks_cover_radiolucent_lung_fields(cohort: Path) -> None:
    from scipy.ndimage import binary_dilation

    gray = _load(cohort, "train", "cxr")[:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    masks = np.load(cohort / "tasks" / "lung_mask_train.npy")
    assert set(np.unique(masks)) <= {0, 1}
    frac = masks.mean(axis=(1, 2))
    assert 0.1 < frac.min() and frac.max() < 0.5
    darker = []
    for img, mask in zip(gray, masks.astype(bool)):
        ring = binary_dilation(mask, iterations=2) & ~mask  # heart, mediastinum, chest wall, diaphragm
        darker.append(img[mask].mean() < img[ring].mean())
    assert np.mean(darker) > 0.95  # the mask sits on the dark (air-filled) lung fields


# ----------------------------------------------------------------------------------------------
# Labels, labs, ECG
# ----------------------------------------------------------------------------------------------
def test_labels_binary_with_reasonable_prevalence(cohort: Path) -> None:
    meta = json.loads((cohort / "cohort.json").read_text())
    table = pd.concat([pd.read_csv(cohort / "tasks" / f"{s}.csv") for s in syn.SPLITS])
    for col in [*meta["tasks"], *meta["ecg_labels"]]:
        assert set(table[col].unique()) <= {0, 1}, col
    for task in meta["tasks"]:
        assert 0.12 < table[task].mean() < 0.45, task
    for col in meta["ecg_labels"]:
        assert 0.02 < table[col].mean() < 0.35, col
    # the physiology labels are not a function of the anatomy label
    assert abs(np.corrcoef(table["nodule"], table["reduced_ef"])[0, 1]) < 0.15


def test_labs_percentiles_observed_and_imputation(cohort: Path) -> None:
    means = np.array(list(json.loads((cohort / "labs_means.json").read_text()).values()), dtype=np.float32)
    fractions = []
    for split in syn.SPLITS:
        pct, obs = _load(cohort, split, "labs_percentiles"), _load(cohort, split, "labs_missingness")
        assert pct.min() >= 0.0 and pct.max() <= 1.0
        assert set(np.unique(obs)) <= {0, 1}
        missing = obs == 0
        np.testing.assert_allclose(pct[missing], np.broadcast_to(means, pct.shape)[missing], rtol=0, atol=1e-6)
        fractions.append(obs.mean())
    assert 0.64 < np.mean(fractions) < 0.76  # Symile-MIMIC: ~70.6% observed
    # train percentiles are the train ECDF: for observed values their mean is labs_means
    pct, obs = _load(cohort, "train", "labs_percentiles"), _load(cohort, "train", "labs_missingness")
    col_means = np.array([pct[obs[:, j] == 1, j].mean() for j in range(50)])
    np.testing.assert_allclose(col_means, means, atol=1e-5)
    # missingness is informative: the blood gas panel is ordered more often in congested patients
    latent = pd.read_csv(cohort / "latent" / "train.csv")
    gas = obs[:, 5]  # pO2 (itemid 50821)
    assert gas[latent["congestion"].to_numpy() > 0.5].mean() > gas[latent["congestion"].to_numpy() < -0.5].mean()


def test_labs_to_percentiles_is_the_train_ecdf() -> None:
    train = np.array([[1.0], [2.0], [2.0], [np.nan], [4.0]])
    pct, means = syn.labs_to_percentiles(np.array([[0.5], [2.0], [3.0], [9.0], [np.nan]]), train)
    np.testing.assert_allclose(pct[:, 0], [0.0, 0.75, 0.75, 1.0, means[0]])
    np.testing.assert_allclose(means, [(0.25 + 0.75 + 0.75 + 1.0) / 4])
    with pytest.raises(ValueError, match="same number of columns"):
        syn.labs_to_percentiles(np.zeros((2, 3)), np.zeros((2, 4)))


def test_ecg_range_and_lead_relations(cohort: Path) -> None:
    ecg = _load(cohort, "val", "ecg")[:, 0]  # (N, 5000, 12), MIMIC order I, II, III, aVR, aVF, aVL
    assert ecg.min() >= -1.0 - 1e-6 and ecg.max() <= 1.0 + 1e-6
    np.testing.assert_allclose(ecg.min(axis=(1, 2)), -1.0, atol=1e-5)  # global per-record min-max
    np.testing.assert_allclose(ecg.max(axis=(1, 2)), 1.0, atol=1e-5)
    lead_i, lead_ii, lead_iii, avr, avf, avl = (ecg[..., k] for k in range(6))
    # The scaling x' = a x + b is affine, so each linear relation holds up to a per-record constant.
    for residual in (
        lead_iii - (lead_ii - lead_i),  # Einthoven
        avr + (lead_i + lead_ii) / 2,  # Goldberger
        avf - (lead_ii - lead_i / 2),
        avl - (lead_i - lead_ii / 2),
    ):
        assert np.ptp(residual, axis=1).max() < 1e-4
    # ...while the leads themselves are far from constant
    assert np.ptp(lead_ii, axis=1).min() > 0.05


def test_ecg_heart_rate_matches_the_label(cohort: Path) -> None:
    """The rhythm in the signal follows the generating heart rate (autocorrelation peak)."""
    ecg = _load(cohort, "test", "ecg")[:, 0]
    latent = pd.read_csv(cohort / "latent" / "test.csv")
    hr = _autocorr_hr(ecg)
    err = np.abs(hr - latent["hr"].to_numpy())
    assert np.median(err) < 3.0


def _autocorr_hr(x: np.ndarray) -> np.ndarray:
    """Heart rate (bpm) of (..., T, 12) ECGs: the autocorrelation peak of the QRS slope envelope."""
    env = np.abs(np.diff(x, axis=-2)).sum(-1)
    env = env - env.mean(-1, keepdims=True)
    spec = np.fft.rfft(env, n=2 * env.shape[-1], axis=-1)
    ac = np.fft.irfft(spec * np.conj(spec), axis=-1)[..., : env.shape[-1]]
    lags = np.arange(env.shape[-1]) / syn.ECG_SAMPLING_RATE
    window = (lags > 60 / 180) & (lags < 60 / 35)
    return 60.0 / lags[window][np.argmax(ac[..., window], axis=-1)]


# ----------------------------------------------------------------------------------------------
# Determinism, caching, atomicity, validation
# ----------------------------------------------------------------------------------------------
def test_same_seed_identical_other_seed_different(tmp_path: Path, cohort: Path) -> None:
    again = make_cohort(tmp_path / "a", n_patients=N, image_size=SIZE, seed=3, num_workers=1)
    meta0 = json.loads((cohort / "cohort.json").read_text())
    meta1 = json.loads((again / "cohort.json").read_text())
    assert again.name == cohort.name
    assert meta0["content_hash"] == meta1["content_hash"]
    for name in ("cxr", "ecg", "labs_percentiles", "labs_missingness", "hadm_id"):
        np.testing.assert_array_equal(_load(cohort, "probe_test", name), _load(again, "probe_test", name))
    other = make_cohort(tmp_path / "b", n_patients=N, image_size=SIZE, seed=4)
    assert other.name != cohort.name
    assert json.loads((other / "cohort.json").read_text())["content_hash"] != meta0["content_hash"]
    assert not np.array_equal(_load(cohort, "train", "cxr"), _load(other, "train", "cxr"))
    assert not np.array_equal(_load(cohort, "train", "ecg"), _load(other, "train", "ecg"))


def test_cache_hit_does_not_regenerate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = cohort_module._generate
    monkeypatch.setattr(cohort_module, "_generate", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    first = make_cohort(tmp_path, n_patients=120, image_size=16, seed=0)
    mtime = (first / "cohort.json").stat().st_mtime_ns
    assert make_cohort(tmp_path, n_patients=120, image_size=16, seed=0) == first
    assert make_cohort(first, n_patients=120, image_size=16, seed=0) == first  # root is the cohort itself
    assert len(calls) == 1 and (first / "cohort.json").stat().st_mtime_ns == mtime
    # a different configuration coexists in its own parameter-keyed folder
    second = make_cohort(tmp_path, n_patients=120, image_size=16, seed=1)
    assert second != first and second.parent == first.parent and len(calls) == 2
    assert make_cohort(tmp_path, n_patients=120, image_size=16, seed=0, force=True) == first
    assert make_cohort(first, n_patients=120, image_size=16, seed=0, force=True) == first  # in place
    assert len(calls) == 4 and (first / "cohort.json").stat().st_mtime_ns != mtime
    assert not (first / f"cohort_{first.name[7:]}").exists()
    with pytest.raises(ValueError, match="different parameters"):
        make_cohort(first, n_patients=120, image_size=16, seed=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, second.name])  # no temp leftovers


def test_cohort_folder_is_as_readable_as_the_umask_allows(cohort: Path) -> None:
    """The cohort is published from a temporary folder: it must not keep mkdtemp's 0o700."""
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(cohort.stat().st_mode) == 0o777 & ~umask


def test_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cohort_module, "simulate_ecg", boom)
    with pytest.raises(KeyboardInterrupt):
        make_cohort(tmp_path, n_patients=120, image_size=16, seed=0)
    assert list(tmp_path.iterdir()) == []


def test_cxr_corpus_layout_cache_and_force(tmp_path: Path) -> None:
    root = syn.make_cxr_corpus(tmp_path, {"probe_val": 40, "probe_test": 30}, image_size=16, seed=1, kind="prior")
    meta = json.loads((root / "cohort.json").read_text())
    assert root.name == f"corpus_{meta['params_hash']}" and meta["splits"] == {"probe_val": 40, "probe_test": 30}
    hadm = _load(root, "probe_test", "hadm_id")
    assert _load(root, "probe_test", "cxr").shape == (30, 3, 16, 16) and hadm.min() >= 40_000_000
    assert not (root / "data_npy" / "probe_test" / "ecg_probe_test.npy").exists()
    mtime = (root / "cohort.json").stat().st_mtime_ns
    assert syn.make_cxr_corpus(tmp_path, {"probe_val": 40, "probe_test": 30}, 16, 1, "prior") == root
    assert (root / "cohort.json").stat().st_mtime_ns == mtime  # cache hit: not regenerated
    assert syn.make_cxr_corpus(tmp_path, {"probe_val": 40, "probe_test": 30}, 16, 1, "prior", force=True) == root
    assert (root / "cohort.json").stat().st_mtime_ns != mtime
    np.testing.assert_array_equal(_load(root, "probe_test", "hadm_id"), hadm)
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no temp or trash leftovers
    with pytest.raises(ValueError, match="kind"):
        syn.make_cxr_corpus(tmp_path, {"probe_val": 4}, kind="cohort")
    with pytest.raises(ValueError, match=r"split_sizes\['probe_val'\]"):
        syn.make_cxr_corpus(tmp_path, {"probe_val": 0})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_patients": 0}, "n_patients"),
        ({"n_patients": 10}, "empty split"),
        ({"image_size": 8}, "image_size"),
        ({"seed": -1}, "seed"),
        ({"split_fractions": {"train": 1.0}}, "split_fractions"),
        ({"split_fractions": dict.fromkeys(syn.SPLITS, 0.2)}, "sum to 1"),
        ({"num_workers": 0}, "num_workers"),
    ],
)
def test_invalid_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    args = {"n_patients": 200, "image_size": 16, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        make_cohort(tmp_path, **args)


def test_custom_split_fractions(tmp_path: Path) -> None:
    fractions = {"train": 0.4, "val": 0.1, "test": 0.1, "probe_train": 0.2, "probe_val": 0.1, "probe_test": 0.1}
    root = make_cohort(tmp_path, n_patients=101, image_size=16, split_fractions=fractions)
    sizes = json.loads((root / "cohort.json").read_text())["splits"]
    assert sum(sizes.values()) == 101 and sizes["train"] in (40, 41) and sizes["probe_train"] in (20, 21)


# ----------------------------------------------------------------------------------------------
# Honesty: physiology is in the teachers, only weakly in the pixels
# ----------------------------------------------------------------------------------------------
def _auroc(score: np.ndarray, label: np.ndarray) -> float:
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(score.size)
    ranks[order] = np.arange(1, score.size + 1)
    pos = label.astype(bool)
    return float((ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum()))


def _ridge_auroc(x: np.ndarray, y: np.ndarray, n_fit: int) -> float:
    """Held-out AUROC of a ridge classifier on standardised features, penalty picked on a split."""
    x = x.reshape(len(x), -1).astype(np.float64)
    z = (x - x[:n_fit].mean(0)) / (x[:n_fit].std(0) + 1e-8)
    z = np.concatenate([z, np.ones((len(z), 1))], 1)
    inner = int(0.75 * n_fit)

    def fit(rows: slice, lam: float) -> np.ndarray:
        return np.linalg.solve(z[rows].T @ z[rows] + lam * np.eye(z.shape[1]), z[rows].T @ y[rows])

    def held_out(lam: float) -> float:
        return _auroc(z[inner:n_fit] @ fit(slice(0, inner), lam), y[inner:n_fit])

    lam = max((1.0, 10.0, 100.0, 1000.0, 1e4), key=held_out)
    return _auroc(z[n_fit:] @ fit(slice(0, n_fit), lam), y[n_fit:])


def _ecg_features(ecg: np.ndarray) -> np.ndarray:
    """Simple hand-made ECG features: per-lead amplitude and slope, a spectrum, the heart rate."""
    amp = np.concatenate([ecg.std(1), ecg.max(1), ecg.min(1), np.abs(np.diff(ecg, axis=1)).mean(1)], 1)
    spec = np.abs(np.fft.rfft(ecg[..., [1, 7, 10]], axis=1)).mean(-1) ** 2  # leads II, V2, V5
    bands = np.log(spec[:, 5:405].reshape(len(ecg), -1, 10).mean(-1) + 1e-9)  # 1-Hz bands, 0.5-40 Hz
    return np.concatenate([amp, bands, _autocorr_hr(ecg)[:, None]], 1)


def test_no_pixel_shortcut_and_teachers_carry_the_signal() -> None:
    n, n_ecg, size = 1792, 768, 32
    rng = np.random.default_rng(2024)
    state = syn.sample_latent_state(n, rng)
    raw, observed = syn.simulate_labs(state, rng)
    n_fit = int(0.6 * n)
    pct, _ = syn.labs_to_percentiles(raw, raw[:n_fit])
    images, ctr, ecg_x = [], [], []
    for lo in range(0, n, 256):
        sub = {k: v[lo : lo + 256] for k, v in state.items()}
        img, _, info = syn.render_cxr(sub, size, rng)
        images.append(img.reshape(len(img), -1))
        ctr.append(info["ctr"])
        if lo < n_ecg:
            ecg_x.append(_ecg_features(syn.simulate_ecg(sub, rng)[0]))
    pixels, ctr, ecg_x = np.concatenate(images), np.concatenate(ctr), np.concatenate(ecg_x)
    labs_x = np.concatenate([pct, observed], 1)
    for task in ("reduced_ef", "fluid_overload"):
        y = state[task].astype(np.float64)
        pix = _ridge_auroc(pixels, y, n_fit)
        labs = _ridge_auroc(labs_x, y, n_fit)
        ecg = _ridge_auroc(ecg_x, y[:n_ecg], int(0.6 * n_ecg))
        cue = _auroc(ctr[n_fit:], y[n_fit:])
        # The labels do not leak into the pixels: a linear read-out stays well below the best
        # teacher, and each teacher beats it (the labs hold no BNP, so for reduced_ef they are
        # the weaker teacher: about 0.75 here, 0.79 with 4,000 patients; the ECG about 0.82).
        assert pix < max(labs, ecg) - 0.08, (task, pix, labs, ecg)
        assert labs > pix + 0.02 and ecg > pix + 0.02, (task, pix, labs, ecg)
        # ...yet the CXR carries the physiological cue, weakly
        assert 0.55 < cue < 0.85 and pix > 0.55, (task, cue, pix)
    # the anatomy label is invisible to the physiology teachers
    assert abs(_ridge_auroc(labs_x, state["nodule"].astype(np.float64), n_fit) - 0.5) < 0.08


def test_nodule_is_visible_to_local_patch_statistics() -> None:
    from scipy.ndimage import binary_erosion, gaussian_filter

    n, size = 1024, 64
    rng = np.random.default_rng(7)
    state = syn.sample_latent_state(n, rng)
    feats = []
    for lo in range(0, n, 256):
        sub = {k: v[lo : lo + 256] for k, v in state.items()}
        img, mask, _ = syn.render_cxr(sub, size, rng)
        dog = gaussian_filter(img, (0, 2, 2)) - gaussian_filter(img, (0, 5, 5))  # nodule-scale blob filter
        inside = np.stack([binary_erosion(m, iterations=2) for m in mask])
        feats.append(np.sort(np.where(inside, dog, -1.0).reshape(len(img), -1), axis=1)[:, ::-1][:, :20])
    y = state["nodule"].astype(np.float64)
    assert _ridge_auroc(np.concatenate(feats), y, int(0.6 * n)) > 0.8


# ----------------------------------------------------------------------------------------------
# CLI, figure, reader
# ----------------------------------------------------------------------------------------------
def test_cli_help_and_errors(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        syn.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--n-patients" in out and "--image-size" in out and "--seed" in out
    with pytest.raises(SystemExit) as exc:
        syn.main(["--out", "unused", "--image-size", "4"])
    assert exc.value.code != 0 and "image_size" in capsys.readouterr().err


def test_cli_subprocess(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [sys.executable, "-m", "pacx.data.synthetic", "--out", str(tmp_path), "--n-patients", "60"]
    cmd += ["--image-size", "16", "--seed", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    root = Path(res.stdout.splitlines()[0])
    assert root.parent == tmp_path and (root / "cohort.json").is_file()
    assert "train" in res.stdout and "probe_test" in res.stdout


def test_plot_sample_patients(cohort: Path, tmp_path: Path) -> None:
    path = syn.plot_sample_patients(cohort, tmp_path / "fig.png", split="val", n=3)
    assert path.is_file() and path.stat().st_size > 10_000
    with pytest.raises(ValueError, match="split"):
        syn.plot_sample_patients(cohort, tmp_path / "x.png", split="nope")


def test_symile_reader_reads_the_cohort(cohort: Path) -> None:
    from pacx.data import SymileMIMIC, load_task_labels

    masks = {"lung_mask": "tasks/lung_mask_{split}.npy"}
    ds = SymileMIMIC(cohort, "probe_train", ecg_preprocess=False, extra_arrays=masks)
    item = ds[0]
    assert item["cxr"].shape == (3, SIZE, SIZE)
    assert item["ecg"].shape == (12, 5000)
    assert item["labs"].shape == (50,) and item["labs_observed"].shape == (50,)
    assert item["lung_mask"].shape == (SIZE, SIZE)
    hadm = _load(cohort, "probe_train", "hadm_id")
    labels = load_task_labels(cohort, "probe_train", ["reduced_ef", "nodule"], hadm)
    assert labels.shape == (len(ds), 2)
