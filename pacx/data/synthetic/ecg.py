"""10-s, 500-Hz, 12-lead ECGs of the synthetic cohort and their diagnostic labels.

A 3-D cardiac dipole driven by the latent state (rate, intervals, axis, voltages, ST injury)
is projected on the leads, tiled at the heart rate and corrupted by wander, noise and mains
hum; the labels are thresholds of the generating parameters with 2% annotator noise. See
``docs/synthetic_cohort.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

__all__ = ["ECG_LABELS", "ECG_SAMPLES", "ECG_SAMPLING_RATE", "MIMIC_ECG_LEADS", "ecg_labels", "simulate_ecg"]

ECG_SAMPLING_RATE = 500
ECG_SAMPLES = 5000
# MIMIC-IV-ECG / Symile order (aVF before aVL), as stored in ecg_<split>.npy.
MIMIC_ECG_LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")

ECG_LABELS: tuple[str, ...] = (
    "ecg_tachycardia",
    "ecg_bradycardia",
    "ecg_wide_qrs",
    "ecg_st_deviation",
    "ecg_lvh_voltage",
    "ecg_left_axis",
)
_ECG_LABEL_FLIP = 0.02  # annotator noise on the ECG diagnostic labels

# Precordial electrode directions in the horizontal plane (x left, z anterior) and gains
# (chest electrodes sit close to the heart, so their amplitudes are larger).
_PRECORDIAL_ANGLES = np.deg2rad(np.array([118.0, 96.0, 76.0, 56.0, 32.0, 10.0]))
_PRECORDIAL_GAINS = np.array([1.6, 2.2, 2.4, 2.3, 2.0, 1.6])


def _ecg_parameters(state: Mapping[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """ECG-generating parameters from the latent state (physiology) plus nuisance."""
    b = int(np.asarray(state["cardiac"]).shape[0])
    e = lambda: rng.standard_normal(b)  # noqa: E731
    c, cond = state["cardiac"], state["conduction"]
    hyp, isch = state["hypertrophy"], state["ischaemia"]
    p: dict[str, np.ndarray] = {}
    p["hr"] = np.clip(84.0 + 8.0 * state["congestion"] + 5.0 * state["inflammation"] + 11.0 * e(), 38.0, 170.0)
    p["qrs_ms"] = np.clip(98.0 + 9.0 * c + 12.0 * cond + 5.0 * e(), 70.0, 190.0)
    p["pr_ms"] = np.clip(160.0 + 15.0 * cond + 20.0 * e(), 100.0, 320.0)
    p["qtc_ms"] = np.clip(420.0 + 8.0 * c + 8.0 * isch + 6.0 * cond + 18.0 * e(), 360.0, 540.0)
    p["axis_deg"] = 20.0 - 25.0 * cond - 10.0 * hyp + 22.0 * e()
    p["r_amp"] = 1.05 * np.exp(0.20 * hyp + 0.12 * e() + 0.06 * (2.0 * state["sex"] - 1.0))
    p["t_amp"] = np.clip(0.30 * (1.0 - 0.12 * c - 0.12 * isch) + 0.05 * e(), -0.25, 0.7)
    st_mag = 0.12 * np.maximum(isch - 0.6, 0.0) + 0.02 * np.abs(e())
    p["st_mv"] = st_mag * np.where(rng.random(b) < 0.3, 1.0, -1.0)  # elevation or depression
    territory = rng.integers(0, 3, b)  # anterior, inferior, lateral injury current
    p["st_dir"] = np.array([[0.0, 0.2, 1.0], [0.0, 1.0, 0.1], [1.0, 0.0, 0.3]])[territory]
    # Nuisance: phase, respiratory sinus arrhythmia, electrode placement, wander, noise, mains.
    p["phase"] = rng.random(b)
    p["rsa_s"] = rng.uniform(0.0, 0.03, b)
    p["resp_hz"] = rng.uniform(0.15, 0.35, b)
    p["resp_phase"] = rng.uniform(0.0, 2.0 * np.pi, b)
    p["electrode_jitter"] = np.deg2rad(rng.normal(0.0, 6.0, b))
    p["noise_mv"] = rng.uniform(0.005, 0.025, b)
    p["mains_mv"] = np.where(rng.random(b) < 0.3, rng.uniform(0.0, 0.03, b), 0.0)
    p["mains_hz"] = np.where(rng.random(b) < 0.5, 50.0, 60.0)
    return {k: np.asarray(v, dtype=np.float64) for k, v in p.items()}


def _heart_vector(p: Mapping[str, np.ndarray], t: np.ndarray) -> np.ndarray:
    """Cardiac dipole H(t) (B, T, 3) in mV from Gaussian waves tiled at the heart rate.

    ``t`` is (B, T) in seconds relative to each patient's first R peak. Each wave is evaluated
    at the distance to its *nearest* occurrence, so beats wrap without a Python loop.
    """
    rr = 60.0 / p["hr"]
    qrs = p["qrs_ms"] / 1000.0
    qt = p["qtc_ms"] / 1000.0 * np.sqrt(rr)
    axis = np.deg2rad(p["axis_deg"])
    r_amp = p["r_amp"]
    # Wave centre (s from R peak), width (s), direction (mV): P, septal Q, R, S, T.
    p_dir = np.broadcast_to(0.14 * np.array([math.cos(0.96), math.sin(0.96), 0.15]), (rr.size, 3))  # 55 deg
    q_dir = 0.20 * r_amp[:, None] * np.array([-0.6, 0.2, 0.8])
    r_dir = r_amp[:, None] * np.stack([np.cos(axis), np.sin(axis), np.full_like(rr, -0.35)], -1)
    s_dir = 0.35 * r_amp[:, None] * np.array([-0.5, -0.4, -0.75])
    t_axis = axis - np.deg2rad(15.0)
    t_dir = p["t_amp"][:, None] * np.stack([np.cos(t_axis), np.sin(t_axis), np.full_like(rr, 0.45)], -1)
    p_centre = -qrs / 2 - p["pr_ms"] / 1000.0 + 0.05  # PR interval: P onset to QRS onset
    t_centre = -qrs / 2 + qt - 0.11 * np.sqrt(rr)  # T peak about 110 ms before the end of QT
    centres = np.stack([p_centre, -0.32 * qrs, 0 * qrs, 0.30 * qrs, t_centre], -1)
    widths = np.stack([np.full_like(rr, 0.022), 0.09 * qrs, 0.13 * qrs, 0.10 * qrs, 0.048 * np.sqrt(rr)], -1)
    dirs = np.stack([p_dir, q_dir, r_dir, s_dir, t_dir], 1)  # (B, 5, 3)

    rr32 = rr.astype(np.float32)[:, None]
    waves = []
    for k in range(centres.shape[1]):
        d = np.mod(t - centres[:, k : k + 1].astype(np.float32) + 0.5 * rr32, rr32) - 0.5 * rr32
        w = widths[:, k : k + 1].astype(np.float32)
        waves.append(np.exp(-0.5 * (d / w) ** 2))
    # ST segment: a plateau from the J point to the T peak (injury current).
    d = np.mod(t + 0.5 * rr32, rr32) - 0.5 * rr32
    j_point = (qrs / 2).astype(np.float32)[:, None]
    t_peak = centres[:, 4:5].astype(np.float32)
    plateau = np.clip((d - j_point) / 0.012, 0.0, 1.0) * np.clip((t_peak - d) / 0.04, 0.0, 1.0)
    waves.append(plateau)
    st_dir = p["st_dir"] / np.linalg.norm(p["st_dir"], axis=1, keepdims=True)
    dirs = np.concatenate([dirs, (p["st_mv"][:, None] * st_dir)[:, None, :]], 1)
    return np.matmul(np.stack(waves, -1), dirs.astype(np.float32))


def _lead_matrix(p: Mapping[str, np.ndarray]) -> np.ndarray:
    """(B, 3, 8) projections of the dipole onto leads I, II and V1..V6 (per-patient placement)."""
    b = p["hr"].shape[0]
    frontal = np.array([[1.0, 0.0, 0.0], [0.5, math.sqrt(3) / 2, 0.0]])  # I at 0 deg, II at 60 deg
    ang = _PRECORDIAL_ANGLES[None, :] + p["electrode_jitter"][:, None]
    pre = np.stack([np.cos(ang), np.zeros_like(ang), np.sin(ang)], -1) * _PRECORDIAL_GAINS[None, :, None]
    mat = np.concatenate([np.broadcast_to(frontal, (b, 2, 3)), pre], 1)  # (B, 8, 3)
    return np.transpose(mat, (0, 2, 1)).astype(np.float32)


def _limb_to_mimic(electrodes: np.ndarray) -> np.ndarray:
    """(B, T, 8) [I, II, V1..V6] -> (B, T, 12) in MIMIC order via Einthoven/Goldberger."""
    lead_i, lead_ii = electrodes[..., 0], electrodes[..., 1]
    out = np.empty(electrodes.shape[:-1] + (12,), dtype=electrodes.dtype)
    out[..., 0] = lead_i
    out[..., 1] = lead_ii
    np.subtract(lead_ii, lead_i, out=out[..., 2])  # III = II - I
    out[..., 3] = -0.5 * (lead_i + lead_ii)  # aVR
    out[..., 4] = lead_ii - 0.5 * lead_i  # aVF = (II + III) / 2
    out[..., 5] = lead_i - 0.5 * lead_ii  # aVL = (I - III) / 2
    out[..., 6:] = electrodes[..., 2:]
    return out


def simulate_ecg(
    state: Mapping[str, np.ndarray], rng: np.random.Generator, scale_to_unit: bool = True
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Simulate 10-s, 500-Hz, 12-lead ECGs (vectorised over patients).

    A 3-D cardiac dipole (P, septal Q, R, S, T waves and an ST injury plateau) is evaluated once
    per patient as a template beat on a grid of 2048 phases, projected on leads I, II and V1-V6,
    and tiled at the patient's heart rate (with respiratory sinus arrhythmia) by a
    nearest-phase lookup. Baseline wander, white noise and mains hum are added per electrode lead;
    III, aVR, aVL and aVF are then derived exactly from I and II, so Einthoven's and
    Goldberger's relations hold.

    Args:
        state: latent state from :func:`sample_latent_state`.
        rng: numpy random generator.
        scale_to_unit: min-max scale each record globally (all leads jointly) to [-1, 1], the
            Symile convention; ``False`` returns millivolts.

    Returns:
        ``ecg`` (B, 5000, 12) float32 in MIMIC lead order (I, II, III, aVR, aVF, aVL, V1-V6) and
        ``params``: the generating parameters (``hr``, ``qrs_ms``, ``pr_ms``, ``qtc_ms``,
        ``axis_deg``, ``st_mv``, ``sokolow_mv``, ...) as (B,) arrays.
    """
    p = _ecg_parameters(state, rng)
    b = p["hr"].shape[0]
    fs, n_t, n_phase = ECG_SAMPLING_RATE, ECG_SAMPLES, _TEMPLATE_PHASES
    rr = 60.0 / p["hr"]

    # Template beat: time since the R peak on a phase grid covering one RR interval.
    grid = np.arange(n_phase, dtype=np.float32)[None, :] / n_phase * rr.astype(np.float32)[:, None]
    template = np.matmul(_heart_vector(p, grid), _lead_matrix(p))  # (B, n_phase, 8)

    # Tile: beat phase of every sample (respiratory sinus arrhythmia as a smooth time warp), then
    # a nearest-phase lookup into the template (grid step <= 0.8 ms, below the 2-ms sampling).
    t0 = np.arange(n_t, dtype=np.float32)[None, :] / fs
    f32 = lambda k: p[k].astype(np.float32)[:, None]  # noqa: E731
    beats_per_s = f32("hr") / 60.0
    pos = (t0 + f32("rsa_s") * np.sin(2 * np.pi * f32("resp_hz") * t0 + f32("resp_phase"))) * beats_per_s
    pos += f32("phase")
    pos -= np.floor(pos)
    idx = np.minimum((pos * n_phase).astype(np.int64), n_phase - 1)
    idx += (np.arange(b, dtype=np.int64) * n_phase)[:, None]
    electrodes = template.reshape(b * n_phase, 8)[idx]  # (B, T, 8)
    del pos, idx

    # Baseline wander: two slow sinusoids per electrode lead, evaluated on a coarse grid and
    # interpolated by a matrix product (cheap); then white noise and mains hum.
    coarse_t = np.linspace(0.0, n_t / fs, _WANDER_KNOTS)
    freq = rng.uniform(0.05, 0.5, (b, 8, 2, 1))
    amp = rng.uniform(0.0, 0.12, (b, 8, 2, 1))
    ph = rng.uniform(0.0, 2 * np.pi, (b, 8, 2, 1))
    wander = (amp * np.sin(2 * np.pi * freq * coarse_t + ph)).sum(2).astype(np.float32)  # (B, 8, K)
    # One 2-D GEMM: numpy's batched matmul against a broadcast matrix is an order slower.
    electrodes += (wander.reshape(b * 8, -1) @ _wander_interpolation()).reshape(b, 8, n_t).transpose(0, 2, 1)
    electrodes += f32("noise_mv")[:, :, None] * rng.standard_normal(electrodes.shape, dtype=np.float32)
    mains = f32("mains_mv") * np.sin(2 * np.pi * f32("mains_hz") * t0)
    electrodes += mains[:, :, None]
    ecg = _limb_to_mimic(electrodes)

    # Sokolow-Lyon index measured on one noiseless QRS: S(V1) + R(V5).
    p["sokolow_mv"] = _sokolow_index(p)
    if scale_to_unit:
        lo = ecg.min(axis=(1, 2), keepdims=True)
        hi = ecg.max(axis=(1, 2), keepdims=True)
        ecg -= lo
        ecg *= 2.0 / np.maximum(hi - lo, 1e-6)
        ecg -= 1.0
    return ecg.astype(np.float32, copy=False), p


_TEMPLATE_PHASES = 2048
_WANDER_KNOTS = 81


def _wander_interpolation() -> np.ndarray:
    """(K, T) linear-interpolation matrix from the coarse wander knots to the sample times."""
    pos = np.arange(ECG_SAMPLES, dtype=np.float64) / ECG_SAMPLES * (_WANDER_KNOTS - 1)
    i0 = np.minimum(pos.astype(np.int64), _WANDER_KNOTS - 2)
    w = pos - i0
    mat = np.zeros((_WANDER_KNOTS, ECG_SAMPLES), np.float32)
    cols = np.arange(ECG_SAMPLES)
    mat[i0, cols] = 1.0 - w
    mat[i0 + 1, cols] = w
    return mat


def _sokolow_index(p: Mapping[str, np.ndarray]) -> np.ndarray:
    b = p["hr"].shape[0]
    t = np.broadcast_to(np.linspace(-0.12, 0.12, 121, dtype=np.float32)[None, :], (b, 121))
    quiet = dict(p)
    quiet["t_amp"] = np.zeros(b)
    quiet["st_mv"] = np.zeros(b)
    dip = _heart_vector(quiet, np.ascontiguousarray(t))
    leads = np.matmul(dip, _lead_matrix(p))
    return np.maximum(-leads[..., 2].min(1), 0.0) + np.maximum(leads[..., 6].max(1), 0.0)


def ecg_labels(p: Mapping[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Diagnostic labels from the generating parameters, each flipped with probability 2%."""
    clean = {
        "ecg_tachycardia": p["hr"] > 100.0,
        "ecg_bradycardia": p["hr"] < 60.0,
        "ecg_wide_qrs": p["qrs_ms"] >= 120.0,
        "ecg_st_deviation": np.abs(p["st_mv"]) >= 0.1,
        "ecg_lvh_voltage": p["sokolow_mv"] >= 3.5,
        "ecg_left_axis": p["axis_deg"] < -30.0,
    }
    out = {}
    for name in ECG_LABELS:
        flip = rng.random(clean[name].shape[0]) < _ECG_LABEL_FLIP
        out[name] = np.logical_xor(clean[name], flip).astype(np.int64)
    return out

