"""Tests for pacx.data.ecg: lead order, ECGFounder filter chain, global z-score, WFDB reading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import signal

from pacx.data.ecg import (
    ECGFOUNDER_LEADS,
    MIMIC_LEADS,
    filter_ecg,
    mimic_to_ecgfounder,
    preprocess_ecg,
    read_wfdb_ecg,
    zscore_global,
)
from tests.utils import require_shared_data

# The tests write and read records with wfdb directly; its pandas deprecations are not ours.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:wfdb")

FS = 500
T = 5000


def _time() -> np.ndarray:
    return np.arange(T) / FS


def _band_power(x: np.ndarray, hz: float) -> float:
    """Amplitude of the ``hz`` component of a 1-D signal (Fourier projection)."""
    t = np.arange(x.shape[-1]) / FS
    return float(np.abs(np.sum(x * np.exp(-2j * np.pi * hz * t))) * 2 / x.shape[-1])


def test_lead_constants_differ_only_by_avl_avf_swap():
    assert ECGFOUNDER_LEADS[:4] == MIMIC_LEADS[:4] and ECGFOUNDER_LEADS[6:] == MIMIC_LEADS[6:]
    assert (ECGFOUNDER_LEADS[4], ECGFOUNDER_LEADS[5]) == ("aVL", "aVF")
    assert (MIMIC_LEADS[4], MIMIC_LEADS[5]) == ("aVF", "aVL")


@pytest.mark.parametrize("batched", [False, True])
def test_mimic_to_ecgfounder_reorders_by_name(batched):
    x = np.stack([np.full(7, i, dtype=np.float32) for i in range(12)])  # lead i holds value i
    if batched:
        x = np.stack([x, x + 100])
    y = mimic_to_ecgfounder(x)
    names_out = [MIMIC_LEADS[int(v)] for v in (y[0] if batched else y)[:, 0]]
    assert names_out == list(ECGFOUNDER_LEADS)
    assert y.shape == x.shape
    t = mimic_to_ecgfounder(torch.from_numpy(x))
    assert isinstance(t, torch.Tensor) and np.array_equal(t.numpy(), y)


def test_mimic_to_ecgfounder_rejects_wrong_lead_axis():
    with pytest.raises(ValueError, match=r"\(12, T\)"):
        mimic_to_ecgfounder(np.zeros((5000, 12)))


def test_notch_removes_50hz_and_keeps_10hz():
    t = _time()
    mains = np.sin(2 * np.pi * 50 * t)
    wanted = np.sin(2 * np.pi * 10 * t)
    x = np.tile(mains + wanted, (12, 1))
    y = filter_ecg(x, fs=FS, notch_hz=50.0)
    core = slice(500, -500)  # avoid filtfilt edge transients
    assert _band_power(y[0, core], 50) < 0.01
    assert _band_power(y[0, core], 10) > 0.8
    # Without the notch the 40 Hz low-pass alone leaves part of the 50 Hz line.
    kept = filter_ecg(x, fs=FS, notch_hz=None)
    assert _band_power(kept[0, core], 50) > 5 * _band_power(y[0, core], 50)


def test_notch_60hz_option():
    x = np.tile(np.sin(2 * np.pi * 60 * _time()), (12, 1))
    y = filter_ecg(x, fs=FS, notch_hz=60.0)
    assert _band_power(y[0, 500:-500], 60) < 0.01


def test_dc_offset_and_baseline_wander_removed():
    t = _time()
    rng = np.random.default_rng(0)
    beats = signal.sawtooth(2 * np.pi * 1.2 * t, width=0.1)  # a crude ~1.2 Hz QRS-like train
    wander = 3.0 * np.sin(2 * np.pi * 0.15 * t)  # respiration baseline wander
    x = np.stack([beats + wander + 25.0 + 0.01 * rng.standard_normal(T) for _ in range(12)])
    y = filter_ecg(x, fs=FS)
    core = slice(1000, -1000)
    assert abs(float(y[:, core].mean())) < 0.05  # DC gone
    assert _band_power(y[0, core], 0.15) < 0.05  # wander gone (it was 3.0)
    assert y[:, core].std() > 0.1  # the beats survive


def test_filter_batch_matches_single_and_keeps_dtype():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 12, 1000)).astype(np.float32)
    batch = filter_ecg(x)
    assert batch.dtype == np.float32 and batch.shape == x.shape
    np.testing.assert_allclose(batch[1], filter_ecg(x[1]), rtol=1e-6, atol=1e-6)


def test_filter_matches_reference_chain():
    """Same numbers as the textbook chain written out with scipy per lead (medfilt baseline)."""
    x = np.random.default_rng(2).standard_normal((12, 2000))
    b, a = signal.iirnotch(50.0, 30.0, fs=FS)
    y = signal.filtfilt(b, a, x, axis=-1)
    b, a = signal.butter(4, [0.67, 40.0], btype="bandpass", fs=FS)
    y = signal.filtfilt(b, a, y, axis=-1)
    y = y - np.stack([signal.medfilt(lead, 201) for lead in y])
    np.testing.assert_allclose(filter_ecg(x), y, atol=1e-10)


def test_zscore_is_global_not_per_lead():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((12, T)) * np.arange(1, 13)[:, None] + 5.0
    z = zscore_global(x)
    assert abs(z.mean()) < 1e-9 and abs(z.std() - 1.0) < 1e-6
    # Per-lead stds keep their ratios (a per-lead z-score would make them all 1).
    stds = z.std(axis=1)
    assert stds[-1] / stds[0] == pytest.approx(12.0, rel=0.05)


def test_zscore_batch_is_per_record():
    x = np.stack([np.random.default_rng(4).standard_normal((12, 100)), 10 + 3 * np.random.default_rng(5).standard_normal((12, 100))])
    z = zscore_global(x)
    np.testing.assert_allclose(z.mean(axis=(1, 2)), 0.0, atol=1e-9)
    np.testing.assert_allclose(z.std(axis=(1, 2)), 1.0, atol=1e-6)


def test_preprocess_is_filter_then_zscore_and_invariant_to_affine_scaling():
    """Symile min-max scaling a*x+b does not change ECGFounder input (teachers_and_data 1.5)."""
    t = _time()
    x = np.stack([np.sin(2 * np.pi * (1 + i / 10) * t) + 0.3 * np.sin(2 * np.pi * 7 * t) for i in range(12)])
    z = preprocess_ecg(x)
    assert abs(z.mean()) < 1e-9 and abs(z.std() - 1.0) < 1e-6
    np.testing.assert_allclose(z, zscore_global(filter_ecg(x)))
    scaled = 2 * (x - x.min()) / (x.max() - x.min()) - 1
    np.testing.assert_allclose(preprocess_ecg(scaled), z, atol=1e-4)  # zero-padded median edges


@pytest.mark.parametrize(
    "kwargs, match",
    [({"fs": 0}, "fs"), ({"notch_hz": 300.0}, "notch_hz"), ({"notch_q": 0.0}, "notch_q")],
)
def test_filter_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        filter_ecg(np.zeros((12, 1000)), **kwargs)


def test_filter_rejects_too_short_signal():
    with pytest.raises(ValueError, match="time samples"):
        filter_ecg(np.zeros((12, 10)))


# --- WFDB -------------------------------------------------------------------------------------


def _write_record(folder, name, signals, names, fs=500):
    import wfdb

    wfdb.wrsamp(
        name, fs=fs, units=["mV"] * len(names), sig_name=list(names), p_signal=signals,
        fmt=["16"] * len(names), adc_gain=[1000.0] * len(names), baseline=[0] * len(names), write_dir=str(folder),
    )
    return folder / name


def test_read_wfdb_selects_leads_by_name_case_insensitive_and_pads(tmp_path):
    rng = np.random.default_rng(6)
    upper = ["I", "II", "III", "AVR", "AVF", "AVL", "V1", "V2", "V3", "V4", "V5", "V6"]  # MIMIC order, capitals
    sig = np.round(rng.standard_normal((2000, 12)), 3)
    base = _write_record(tmp_path, "rec", sig, upper)
    out = read_wfdb_ecg(base, fs=500, seconds=10)
    assert out.shape == (12, 5000) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, :2000], mimic_to_ecgfounder(sig.T), atol=1e-3)  # reordered by name
    assert not out[:, 2000:].any()  # zero-padded after the record ends
    again = read_wfdb_ecg(str(base) + ".hea", leads=MIMIC_LEADS)
    np.testing.assert_allclose(again[:, :2000], sig.T, atol=1e-3)


def test_read_wfdb_missing_leads_names_record_and_leads(tmp_path):
    base = _write_record(tmp_path, "limb", np.zeros((600, 3)), ["I", "II", "III"])
    with pytest.raises(ValueError, match=r"limb.*lacks leads \['aVR', 'aVL'"):
        read_wfdb_ecg(base)


def test_read_wfdb_nan_to_zero_with_warning(tmp_path):
    base = _write_record(tmp_path, "gappy", np.ones((1000, 12)), list(ECGFOUNDER_LEADS))
    import wfdb

    # Re-write with a NaN gap (wfdb stores NaN as the digital missing value).
    sig = np.ones((1000, 12))
    sig[100:110, 2] = np.nan
    wfdb.wrsamp("gappy", fs=500, units=["mV"] * 12, sig_name=list(ECGFOUNDER_LEADS), p_signal=sig, fmt=["16"] * 12,
                adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(tmp_path))
    with pytest.warns(RuntimeWarning, match=r"gappy.*NaN.*\['III'\]"):
        out = read_wfdb_ecg(base, seconds=2)
    assert np.isfinite(out).all() and (out[2, 100:110] == 0).all() and out[0, 100] == pytest.approx(1.0)


def test_read_wfdb_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.hea"):
        read_wfdb_ecg(tmp_path / "nothing")


def test_read_wfdb_truncated_or_empty_records_are_named(tmp_path):
    base = _write_record(tmp_path, "cut", np.ones((2000, 12)), list(ECGFOUNDER_LEADS))
    dat = tmp_path / "cut.dat"
    with open(dat, "r+b") as fh:
        fh.truncate(1001)  # mid-sample: the signal file ends early
    with pytest.raises(ValueError, match=r"WFDB record .*cut.*signal"):
        read_wfdb_ecg(base)
    dat.write_bytes(b"")
    with pytest.raises(ValueError, match=r"WFDB record .*cut"):
        read_wfdb_ecg(base)
    (tmp_path / "cut.hea").write_text("")
    with pytest.raises(ValueError, match=r"WFDB header .*cut.hea"):
        read_wfdb_ecg(base)
    empty = _write_record(tmp_path, "empty", np.ones((2, 12)), list(ECGFOUNDER_LEADS))
    first, *signals = (tmp_path / "empty.hea").read_text().splitlines()
    record, n_sig, fs, _ = first.split()[:4]  # record line: name, signals, frequency, length
    (tmp_path / "empty.hea").write_text("\n".join([f"{record} {n_sig} {fs} 0", *signals]) + "\n")
    with pytest.raises(ValueError, match=r"WFDB record .*empty.*no samples"):
        read_wfdb_ecg(empty)


@pytest.mark.real_data
def test_read_wfdb_cinc2021_real_records():
    import wfdb

    folder = require_shared_data("ecg_cinc2021")
    for name in ("E07500", "HR06000"):
        out = read_wfdb_ecg(folder / name)
        assert out.shape == (12, 5000) and out.dtype == np.float32
        record = wfdb.rdrecord(str(folder / name))
        direct = record.p_signal.T[[record.sig_name.index(lead) for lead in ECGFOUNDER_LEADS]]
        np.testing.assert_allclose(out, direct, rtol=1e-6, atol=1e-6)
        z = preprocess_ecg(out)
        assert np.isfinite(z).all() and abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-4


@pytest.mark.real_data
def test_read_wfdb_ptb_resamples_1000hz_and_ignores_frank_leads():
    import wfdb

    folder = require_shared_data("ecg_ptb_diagnostic")
    out = read_wfdb_ecg(folder / "s0010_re")  # 15 signals, lowercase names, 1000 Hz, 38,400 samples
    assert out.shape == (12, 5000)
    record = wfdb.rdrecord(str(folder / "s0010_re"), channels=[1])  # lead "ii"
    assert record.sig_name == ["ii"] and record.fs == 1000
    expected = signal.resample_poly(record.p_signal[:, 0], 1, 2)[:5000]
    np.testing.assert_allclose(out[1], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="s0010_re.*lacks leads"):
        read_wfdb_ecg(folder / "s0010_re", leads=("I", "II", "X9"))
