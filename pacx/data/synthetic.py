"""A synthetic, fully controlled cohort of paired chest X-rays, 12-lead ECGs and 50 labs.

Real paired CXR/ECG/lab data (Symile-MIMIC) are credentialed, so pacx ships this generator as
its default data source: the whole pipeline (MAE, teachers, distillation, probes) runs on a CPU
on it. The cohort makes the PaCX-MAE premise true *by construction and nothing more*:

* every patient has a latent physiological state (cardiac dysfunction, hypertrophy, conduction
  disease, ischaemia, renal dysfunction, congestion, inflammation, ...) linked by documented
  structural equations;
* the ECG and the labs are noisy, partial but fairly direct views of that state;
* the chest X-ray shows it only through subtle cues (cardiothoracic ratio, costophrenic
  blunting, perihilar haze), while nuisance (position, rotation, scale, exposure, habitus,
  noise, devices) carries most of the pixel variance;
* anatomy (lung fields, a local nodule) is independent of physiology.

The arrays are written in the Symile-MIMIC on-disk layout (``data_npy/<split>/...``) of the
pacx contract, so the same readers serve real and synthetic data. The generative equations are
documented in ``docs/synthetic_cohort.md``.

Example:
    >>> from pacx.data.synthetic import make_cohort
    >>> root = make_cohort("/tmp/pacx_cohorts", n_patients=400, image_size=32, seed=0)  # doctest: +SKIP
    >>> sorted(p.name for p in (root / "data_npy").iterdir())  # doctest: +SKIP
    ['probe_test', 'probe_train', 'probe_val', 'test', 'train', 'val']
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pacx.constants import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "COHORT_VERSION",
    "DEFAULT_SPLIT_FRACTIONS",
    "ECG_LABELS",
    "ECG_SAMPLING_RATE",
    "LAB_ITEMIDS",
    "LAB_NAMES",
    "MIMIC_ECG_LEADS",
    "SPLITS",
    "TASKS",
    "labs_to_percentiles",
    "CORPUS_KINDS",
    "main",
    "make_cohort",
    "make_cxr_corpus",
    "plot_sample_patients",
    "render_cxr",
    "sample_latent_state",
    "simulate_ecg",
    "simulate_labs",
]

# Bumped whenever a change alters the generated arrays: it is part of the cache key, so an old
# cache is never mistaken for the output of a newer generator.
COHORT_VERSION = "1.0.0"

SPLITS: tuple[str, ...] = ("train", "val", "test", "probe_train", "probe_val", "probe_test")
DEFAULT_SPLIT_FRACTIONS: dict[str, float] = {
    "train": 0.50,
    "val": 0.05,
    "test": 0.10,
    "probe_train": 0.15,
    "probe_val": 0.05,
    "probe_test": 0.15,
}

ECG_SAMPLING_RATE = 500
ECG_SAMPLES = 5000
# MIMIC-IV-ECG / Symile order (aVF before aVL), as stored in ecg_<split>.npy.
MIMIC_ECG_LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")


# Patients are rendered and written in chunks of this size: it bounds memory and, being a fixed
# constant, keeps the per-chunk random streams (and hence the bytes) independent of the machine.
_CHUNK = 256

TASKS: dict[str, dict[str, str]] = {
    "reduced_ef": {
        "kind": "physiology",
        "type": "binary",
        "description": "latent LV ejection fraction < 45% (cardiac dysfunction)",
    },
    "fluid_overload": {
        "kind": "physiology",
        "type": "binary",
        "description": "latent congestion (plus unobserved noise) above a fixed threshold",
    },
    "nodule": {
        "kind": "anatomy",
        "type": "binary",
        "description": "a solitary pulmonary nodule (3-6 px radius at 64 px), independent of physiology",
    },
}

ECG_LABELS: tuple[str, ...] = (
    "ecg_tachycardia",
    "ecg_bradycardia",
    "ecg_wide_qrs",
    "ecg_st_deviation",
    "ecg_lvh_voltage",
    "ecg_left_axis",
)
_ECG_LABEL_FLIP = 0.02  # annotator noise on the ECG diagnostic labels

# ----------------------------------------------------------------------------------------------
# Labs: the 50 Symile-MIMIC labs in tensor column order (ascending itemid).
# Each entry: itemid, name, centre, spread, log-scale?, decimals, panel, loadings on the latent
# state (in z units; the remainder of unit variance is lab-specific noise).
# For log-scale labs the raw value is exp(log(centre) + spread * z), else centre + spread * z.
# ----------------------------------------------------------------------------------------------
_LABS: tuple[tuple[int, str, float, float, bool, int, str, dict[str, float]], ...] = (
    (50802, "Base Excess", 0.0, 3.5, False, 0, "gas", {"renal": -0.30, "inflammation": -0.25, "gas": 0.5}),
    (50804, "Calculated Total CO2", 25.0, 4.0, False, 0, "gas", {"renal": -0.30, "gas": 0.6}),
    (50813, "Lactate", 1.6, 0.45, True, 1, "gas", {"cardiac": 0.30, "inflammation": 0.30, "congestion": 0.15}),
    (50818, "pCO2", 41.0, 7.0, False, 0, "gas", {"respiratory": 0.40, "gas": -0.3}),
    (50820, "pH", 7.38, 0.06, False, 2, "gas", {"renal": -0.25, "inflammation": -0.20, "gas": 0.5}),
    (50821, "pO2", 95.0, 0.40, True, 0, "gas", {"congestion": -0.40, "respiratory": -0.35}),
    (50861, "Alanine Aminotransferase (ALT)", 25.0, 0.65, True, 0, "lft", {"liver": 0.45}),
    (50862, "Albumin", 3.5, 0.6, False, 1, "lft", {"congestion": -0.30, "inflammation": -0.35, "age": -0.15}),
    (50863, "Alkaline Phosphatase", 85.0, 0.40, True, 0, "lft", {"liver": 0.35}),
    (50868, "Anion Gap", 14.0, 3.0, False, 0, "bmp", {"renal": 0.35, "inflammation": 0.20}),
    (50878, "Asparate Aminotransferase (AST)", 28.0, 0.65, True, 0, "lft", {"liver": 0.40, "ischaemia": 0.20}),
    (50882, "Bicarbonate", 24.0, 4.0, False, 0, "bmp", {"renal": -0.40, "gas": 0.4}),
    (50885, "Bilirubin, Total", 0.7, 0.60, True, 1, "lft", {"liver": 0.40, "congestion": 0.20}),
    (50893, "Calcium, Total", 8.8, 0.6, False, 1, "mg_phos_ca", {"renal": -0.25, "inflammation": -0.15}),
    (50902, "Chloride", 102.0, 5.0, False, 0, "bmp", {"renal": 0.10, "congestion": -0.20, "sodium": 0.6}),
    (50910, "Creatine Kinase (CK)", 120.0, 0.90, True, 0, "ck", {"ischaemia": 0.50}),
    (50912, "Creatinine", 1.0, 0.45, True, 1, "bmp", {"renal": 0.70, "cardiac": 0.10, "sex": 0.15}),
    (50931, "Glucose", 120.0, 0.30, True, 0, "bmp", {"inflammation": 0.20, "age": 0.15}),
    (50934, "H", 10.0, 0.80, True, 0, "hil", {}),
    (50947, "I", 2.0, 0.60, True, 0, "hil", {"liver": 0.35}),
    (50960, "Magnesium", 2.0, 0.25, False, 1, "mg_phos_ca", {"renal": 0.20}),
    (50970, "Phosphate", 3.5, 1.0, False, 1, "mg_phos_ca", {"renal": 0.40}),
    (50971, "Potassium", 4.2, 0.55, False, 1, "bmp", {"renal": 0.35}),
    (50983, "Sodium", 138.0, 4.0, False, 0, "bmp", {"congestion": -0.35, "sodium": 0.6}),
    (51006, "Urea Nitrogen", 20.0, 0.55, True, 0, "bmp", {"renal": 0.55, "congestion": 0.25, "age": 0.10}),
    (51133, "Absolute Lymphocyte Count", 1.3, 0.50, True, 2, "abs_diff", {"inflammation": -0.30, "age": -0.10}),
    (51146, "Basophils", 0.4, 0.50, True, 1, "diff", {}),
    (51200, "Eosinophils", 1.2, 0.80, True, 1, "diff", {"inflammation": -0.25}),
    (51221, "Hematocrit", 35.0, 6.0, False, 1, "cbc", {"anaemia": -0.55, "congestion": -0.15, "sex": 0.15, "rbc": 0.4}),
    (51222, "Hemoglobin", 11.5, 2.0, False, 1, "cbc", {"anaemia": -0.55, "congestion": -0.15, "sex": 0.15, "rbc": 0.4}),
    (51237, "INR(PT)", 1.2, 0.30, True, 1, "coag", {"liver": 0.35, "coag": 0.55}),
    (51244, "Lymphocytes", 18.0, 9.0, False, 1, "diff", {"inflammation": -0.45}),
    (51248, "MCH", 30.0, 2.5, False, 1, "cbc", {"indices": 0.7}),
    (51249, "MCHC", 33.0, 1.5, False, 1, "cbc", {"indices": 0.4}),
    (51250, "MCV", 90.0, 6.0, False, 0, "cbc", {"indices": 0.6, "age": 0.10}),
    (51254, "Monocytes", 7.0, 3.0, False, 1, "diff", {}),
    (51256, "Neutrophils", 72.0, 12.0, False, 1, "diff", {"inflammation": 0.45}),
    (51265, "Platelet Count", 220.0, 0.40, True, 0, "cbc", {"inflammation": 0.20, "liver": -0.20}),
    (51274, "PT", 13.0, 0.25, True, 1, "coag", {"liver": 0.35, "coag": 0.55}),
    (51275, "PTT", 32.0, 0.30, True, 1, "coag", {"coag": 0.40}),
    (51277, "RDW", 14.5, 0.12, True, 1, "cbc", {"cardiac": 0.30, "anaemia": 0.30, "age": 0.15, "rdw": 0.5}),
    (51279, "Red Blood Cells", 3.9, 0.7, False, 2, "cbc",
     {"anaemia": -0.55, "congestion": -0.15, "sex": 0.15, "rbc": 0.4}),
    (51301, "White Blood Cells", 9.0, 0.40, True, 1, "cbc", {"inflammation": 0.55, "wbc": 0.3}),
    (51678, "L", 12.0, 0.80, True, 0, "hil", {}),
    (52069, "Absolute Basophil Count", 0.04, 0.60, True, 2, "abs_diff", {"wbc": 0.3}),
    (52073, "Absolute Eosinophil Count", 0.12, 0.80, True, 2, "abs_diff", {"inflammation": -0.20, "wbc": 0.3}),
    (52074, "Absolute Monocyte Count", 0.6, 0.45, True, 2, "abs_diff", {"inflammation": 0.15, "wbc": 0.4}),
    (52075, "Absolute Neutrophil Count", 6.5, 0.50, True, 2, "abs_diff", {"inflammation": 0.55, "wbc": 0.3}),
    (52135, "Immature Granulocytes", 0.5, 0.70, True, 1, "abs_diff", {"inflammation": 0.35}),
    (52172, "RDW-SD", 46.0, 0.12, True, 1, "cbc", {"cardiac": 0.30, "anaemia": 0.30, "age": 0.15, "rdw": 0.5}),
)
LAB_ITEMIDS: tuple[int, ...] = tuple(lab[0] for lab in _LABS)
LAB_NAMES: tuple[str, ...] = tuple(lab[1] for lab in _LABS)

# Panels are ordered together (a clinician orders a gas, not a pH): P(panel ordered) =
# sigmoid(base + loadings . state); within an ordered panel each lab is reported with p = 0.97.
# The state loadings make missingness informative, as in real hospitals (gases when sick,
# CK when ischaemia is suspected, coagulation and liver panels when congested).
_PANELS: dict[str, tuple[float, dict[str, float]]] = {
    "cbc": (3.0, {"inflammation": 0.3}),
    "bmp": (3.6, {"renal": 0.3}),
    "mg_phos_ca": (1.8, {"renal": 0.4, "congestion": 0.3}),
    "diff": (0.7, {"inflammation": 0.5}),
    "abs_diff": (0.3, {"inflammation": 0.5}),
    "coag": (0.9, {"congestion": 0.5, "liver": 0.4}),
    "lft": (0.5, {"liver": 0.5, "inflammation": 0.3, "congestion": 0.3}),
    "ck": (-1.3, {"ischaemia": 1.0, "cardiac": 0.3}),
    "gas": (-0.8, {"congestion": 0.8, "respiratory": 0.5, "inflammation": 0.4}),
    "hil": (0.6, {}),
}
_PANEL_REPORT_PROB = 0.97

# Lab-group latents: shared noise that makes related labs co-vary (Hct/Hgb/RBC, PT/INR, ...)
# without carrying physiology.
_LAB_GROUP_LATENTS = ("gas", "sodium", "rbc", "indices", "coag", "rdw", "wbc")


# ----------------------------------------------------------------------------------------------
# Latent state
# ----------------------------------------------------------------------------------------------
def sample_latent_state(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Sample the latent physiological state and the anatomy variables of ``n`` patients.

    Structural equations (``e_*`` independent standard normals, ``s = 2 * sex - 1``)::

        age_z ~ N(0, 1);  age = clip(64 + 16 age_z, 18, 100);  sex ~ Bernoulli(0.5) (1 = male)
        cardiac      = 0.35 age_z + 0.15 s + 0.92 e      (LV dysfunction / remodelling)
        hypertrophy  = 0.25 age_z + 0.35 cardiac + 0.15 s + 0.85 e
        conduction   = 0.30 age_z + 0.30 cardiac + 0.88 e
        ischaemia    = 0.30 age_z + 0.35 cardiac + 0.15 s + 0.85 e
        renal        = 0.35 age_z + 0.30 cardiac + 0.85 e  (renal dysfunction)
        congestion   = 0.60 cardiac + 0.30 renal + 0.70 e  (fluid overload)
        inflammation = 0.20 congestion + 0.98 e
        liver        = 0.45 congestion + 0.20 inflammation + 0.85 e  (congestive hepatopathy)
        anaemia      = 0.30 renal + 0.25 inflammation + 0.10 age_z + 0.90 e
        respiratory  = 0.45 congestion + 0.25 inflammation + 0.85 e
        lvef         = clip(52 - 10 cardiac + 4 e, 10, 75)       (%)
        heart_size   = 0.45 cardiac + 0.15 hypertrophy + 0.85 e   (drives the CXR heart width)
        effusion     = max(0, 0.6 congestion + 0.8 e - 0.7)        (drives costophrenic blunting)
        haze         = 0.6 congestion + 0.8 e                      (drives perihilar haze)
        nodule ~ Bernoulli(0.25), independent of everything else

    Labels: ``reduced_ef = lvef < 45``; ``fluid_overload = congestion + 0.35 e > 0.8``.

    Args:
        n: number of patients (> 0).
        rng: numpy random generator.

    Returns:
        Dict of float32 arrays of shape (n,) (``sex``, ``nodule``, ``reduced_ef`` and
        ``fluid_overload`` hold 0/1 values).

    Raises:
        ValueError: when ``n`` is not a positive integer.
    """
    n = _check_positive_int("n", n)
    e = lambda: rng.standard_normal(n)  # noqa: E731 - one fresh noise term per equation
    st: dict[str, np.ndarray] = {}
    age_z = e()
    sex = (rng.random(n) < 0.5).astype(np.float64)
    s = 2.0 * sex - 1.0
    st["age_z"] = age_z
    st["age"] = np.clip(64.0 + 16.0 * age_z, 18.0, 100.0)
    st["sex"] = sex
    st["cardiac"] = 0.35 * age_z + 0.15 * s + 0.92 * e()
    st["hypertrophy"] = 0.25 * age_z + 0.35 * st["cardiac"] + 0.15 * s + 0.85 * e()
    st["conduction"] = 0.30 * age_z + 0.30 * st["cardiac"] + 0.88 * e()
    st["ischaemia"] = 0.30 * age_z + 0.35 * st["cardiac"] + 0.15 * s + 0.85 * e()
    st["renal"] = 0.35 * age_z + 0.30 * st["cardiac"] + 0.85 * e()
    st["congestion"] = 0.60 * st["cardiac"] + 0.30 * st["renal"] + 0.70 * e()
    st["inflammation"] = 0.20 * st["congestion"] + 0.98 * e()
    st["liver"] = 0.45 * st["congestion"] + 0.20 * st["inflammation"] + 0.85 * e()
    st["anaemia"] = 0.30 * st["renal"] + 0.25 * st["inflammation"] + 0.10 * age_z + 0.90 * e()
    st["respiratory"] = 0.45 * st["congestion"] + 0.25 * st["inflammation"] + 0.85 * e()
    st["lvef"] = np.clip(52.0 - 10.0 * st["cardiac"] + 4.0 * e(), 10.0, 75.0)
    st["heart_size"] = 0.45 * st["cardiac"] + 0.15 * st["hypertrophy"] + 0.85 * e()
    st["effusion"] = np.maximum(0.0, 0.6 * st["congestion"] + 0.8 * e() - 0.7)
    st["haze"] = 0.6 * st["congestion"] + 0.8 * e()
    st["nodule"] = (rng.random(n) < 0.25).astype(np.float64)
    st["reduced_ef"] = (st["lvef"] < 45.0).astype(np.float64)
    st["fluid_overload"] = (st["congestion"] + 0.35 * e() > 0.8).astype(np.float64)
    return {k: v.astype(np.float32) for k, v in st.items()}


def _take(state: Mapping[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in state.items()}


# ----------------------------------------------------------------------------------------------
# Chest X-ray
# ----------------------------------------------------------------------------------------------
def _ramp(signed: np.ndarray, width: float) -> np.ndarray:
    """Soft inside-indicator of a signed distance (positive inside), linear over ``width``."""
    return np.clip(0.5 + signed * (1.0 / width), 0.0, 1.0)


def _superellipse(qx, qy, cx, cy, ax, ay, power: int = 2) -> np.ndarray:
    """Approximate signed distance (positive inside) to a superellipse of integer ``power``.

    ``(1 - |dx|^p - |dy|^p) / p`` equals ``1 - r`` to first order at the boundary (r = 1), which
    is all the anti-aliasing ramp needs, and it avoids the per-pixel fractional powers that
    dominated the rendering time.
    """
    dx = (qx - cx) / ax
    dy = (qy - cy) / ay
    if power == 2:
        s = dx * dx + dy * dy
    elif power == 3:
        s = np.abs(dx) * dx * dx + np.abs(dy) * dy * dy
    elif power == 4:
        dx = dx * dx
        dy = dy * dy
        s = dx * dx + dy * dy
    else:
        raise ValueError(f"power must be 2, 3 or 4, got {power}")
    # np.float32: a float64 numpy scalar here would silently promote every image to float64.
    return (1.0 - s) * np.float32(np.minimum(ax, ay) / power)


def _segment_distance(qx, qy, x0, y0, x1, y1) -> np.ndarray:
    """Distance from every pixel to the segment (x0, y0)-(x1, y1) (per-patient endpoints)."""
    vx, vy = x1 - x0, y1 - y0
    t = ((qx - x0) * vx + (qy - y0) * vy) / (vx * vx + vy * vy + 1e-12)
    t = np.clip(t, 0.0, 1.0)
    ex = qx - (x0 + t * vx)
    ey = qy - (y0 + t * vy)
    return np.sqrt(ex * ex + ey * ey)


def _over(base: np.ndarray, alpha: np.ndarray, value) -> np.ndarray:
    """Alpha-composite ``value`` over ``base`` (a denser structure in front)."""
    return base + alpha * (value - base)


def _col(x) -> np.ndarray:
    """(B,) -> (B, 1, 1) float32 for broadcasting against (B, S, S) images."""
    return np.asarray(x, dtype=np.float32).reshape(-1, 1, 1)


def _dome(qx: np.ndarray, hab: np.ndarray) -> np.ndarray:
    """y of the diaphragm surface: two domes, the patient's right (image left) one higher."""
    xr = qx / hab
    right = (xr + 0.34) * (1.0 / 0.42)
    left = (xr - 0.35) * (1.0 / 0.42)
    return np.where(qx < 0, 0.40 + 0.32 * right * right, 0.45 + 0.32 * left * left)


def render_cxr(
    state: Mapping[str, np.ndarray], image_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Draw schematic PA chest radiographs, vectorised over patients.

    Canonical coordinates span [-1, 1] (x to the image right = patient's left, y downwards);
    each patient's geometric nuisance (translation, rotation, scale) maps pixels into them, so
    the image and the lung mask share the same warp. Physiology enters only through the heart
    width (``heart_size``), costophrenic blunting (``effusion``) and perihilar haze (``haze``).

    Args:
        state: latent state from :func:`sample_latent_state` (uses ``heart_size``,
            ``effusion``, ``haze``, ``nodule``).
        image_size: side length in pixels (>= 16).
        rng: numpy random generator (nuisance and pixel noise).

    Returns:
        ``images`` (B, S, S) float32 in [0, 1] (bright = dense), ``lung_mask`` (B, S, S) uint8,
        and ``info``: per-patient float32 arrays ``ctr`` (true cardiothoracic ratio),
        ``device`` (0/1), ``nodule_x``, ``nodule_y`` (canonical units, NaN without nodule),
        ``nodule_radius_px``.

    Raises:
        ValueError: when ``image_size`` < 16.
    """
    size = _check_positive_int("image_size", image_size)
    if size < 16:
        raise ValueError(f"image_size must be >= 16, got {size}")
    b = int(np.asarray(state["heart_size"]).shape[0])
    f32 = np.float32
    u = lambda lo, hi: rng.uniform(lo, hi, b).astype(f32)  # noqa: E731
    nrm = lambda sd: (sd * rng.standard_normal(b)).astype(f32)  # noqa: E731

    # Geometric nuisance: translation, rotation, scale (patient positioning, distance).
    tx, ty = u(-0.12, 0.12), u(-0.10, 0.10)
    theta = np.deg2rad(nrm(4.0))
    scale = u(0.86, 1.10)
    habitus = np.clip(1.0 + nrm(0.06), 0.85, 1.15).astype(f32)  # chest width (body build)

    centres = (np.arange(size, dtype=f32) + 0.5) * (2.0 / size) - 1.0
    px, py = centres.reshape(1, 1, size), centres.reshape(1, size, 1)
    cos_t, sin_t = _col(np.cos(theta) / scale), _col(np.sin(theta) / scale)
    dx, dy = px - _col(tx), py - _col(ty)
    qx = cos_t * dx + sin_t * dy
    qy = cos_t * dy - sin_t * dx
    del dx, dy
    edge = 2.4 / size  # anti-aliasing width: about one pixel
    hab = _col(habitus)

    # Body (thorax + shoulders), background air outside it.
    body = np.maximum(
        _superellipse(qx, qy, 0.0, 0.25, 0.92 * hab, 1.30, 3),
        _superellipse(qx, qy, 0.0, -0.98, 1.20 * hab, 0.32, 2),
    )
    body_alpha = _ramp(body, 3 * edge)
    dens = 0.03 + body_alpha * (_col(u(0.38, 0.50)) - 0.03)  # soft-tissue thickness varies

    # Lung fields: two superellipses cut below by the diaphragm domes.
    above_dome = _dome(qx, hab) - qy
    lung_r = _superellipse(qx, qy, -0.36 * hab, -0.03, 0.30 * hab, 0.70, 3)
    lung_l = _superellipse(qx, qy, 0.37 * hab, -0.01, 0.29 * hab, 0.68, 3)
    lung_env = np.maximum(lung_r, lung_l)
    del lung_r, lung_l
    lung_field = np.minimum(_ramp(lung_env, edge), _ramp(above_dome, edge))
    dens = _over(dens, lung_field, _col(u(0.10, 0.16)))

    # Vascular/interstitial texture: smooth random field inside the lungs (nuisance).
    dens += 0.05 * lung_field * _smooth_noise(rng, b, size, cells=6)

    # Abdomen below the domes, with a gastric air bubble under the left dome.
    dens = _over(dens, np.minimum(_ramp(-above_dome, edge), body_alpha), 0.62)
    bubble = _superellipse(qx, qy, 0.36 * hab, _col(0.68 + u(0.0, 0.08)), 0.10, 0.06)
    dens = _over(dens, _ramp(bubble, edge) * _col(u(0.0, 1.0) > 0.3), 0.25)

    # Mediastinum, aortic knob, trachea.
    mediastinum = _ramp(_superellipse(qx, qy, 0.0, -0.42, 0.115, 0.62, 4), edge)
    dens = _over(dens, mediastinum, 0.60)
    dens = _over(dens, _ramp(_superellipse(qx, qy, 0.11, -0.40, 0.075, 0.075), edge), 0.62)
    dens = _over(dens, _ramp(_superellipse(qx, qy, 0.0, -0.72, 0.035, 0.40, 4), edge), 0.30)

    # Physiology cue 1: the heart, a rotated ellipse whose width grows 10% per SD of the latent
    # heart size (habitus widens it a little too, as a broad chest does).
    heart_size = np.asarray(state["heart_size"], dtype=f32)
    h_ax = 0.33 * (1.0 + 0.10 * heart_size) * (0.5 + 0.5 * habitus)
    h_ay = 0.23 * (1.0 + 0.04 * heart_size)
    rot = np.deg2rad(22.0 + nrm(4.0))  # long axis from the right base down to the apex
    hx, hy = qx - 0.10, qy - 0.34
    cr, sr = _col(np.cos(rot)), _col(np.sin(rot))
    heart = _ramp(_superellipse(cr * hx + sr * hy, cr * hy - sr * hx, 0.0, 0.0, _col(h_ax), _col(h_ay)), edge)
    del hx, hy
    dens = _over(dens, heart, 0.64)

    # Visible lung = lung fields not hidden by heart or mediastinum: the segmentation target,
    # from the same warped coordinates as the image.
    visible_lung = lung_field * (1.0 - heart) * (1.0 - mediastinum)
    lung_mask = (visible_lung > 0.5).astype(np.uint8)

    # Physiology cue 2: costophrenic blunting (pleural effusion), a meniscus rising laterally.
    effusion = np.asarray(state["effusion"], dtype=f32)
    lateral = np.clip((np.abs(qx) / hab - 0.15) * 2.0, 0.0, 1.0)
    side_factor = np.where(qx < 0, _col(u(0.6, 1.2)), _col(u(0.6, 1.2)))
    rise = _col(0.30 * effusion) * side_factor * (0.25 + 0.75 * lateral * lateral)
    dens = _over(dens, visible_lung * _ramp(rise - above_dome, 3 * edge), 0.50)
    del lateral, side_factor, rise

    # Physiology cue 3: perihilar (bat-wing) haze from congestion.
    haze_amp = 0.045 * np.log1p(np.exp(1.3 * np.asarray(state["haze"], dtype=f32)))
    hx = (np.abs(qx) / hab - 0.17) * (1.0 / 0.24)
    hy = (qy - 0.02) * (1.0 / 0.36)
    bump = np.clip(1.0 - hx * hx - hy * hy, 0.0, 1.0)
    dens += _col(haze_amp) * (bump * bump) * visible_lung
    del hx, hy, bump

    # Bones: spine, posterior ribs (curving down laterally), clavicles.
    spine = _ramp(_superellipse(qx, qy, 0.0, 0.0, 0.07, 1.4, 4), edge)
    seg = qy * (1.0 / 0.14)
    dens += spine * (0.05 + 0.05 * np.abs(seg - np.floor(seg) - 0.5))
    thorax = _ramp(lung_env + 0.05, 2 * edge) * _ramp(above_dome + 0.05, edge)
    # Posterior ribs arch over each hemithorax; anterior ribs run down towards the sternum.
    xr = np.abs(qx) / hab - 0.30
    phase = (qy - 0.55 * xr * xr) * (1.0 / 0.16) + _col(u(0.0, 1.0))
    ribs = np.clip(1.0 - np.abs(phase - np.floor(phase) - 0.5) * (1.0 / 0.17), 0.0, 1.0)
    phase = (qy + 0.45 * np.abs(qx) / hab) * (1.0 / 0.19) + _col(u(0.0, 1.0))
    ribs += 0.5 * np.clip(1.0 - np.abs(phase - np.floor(phase) - 0.5) * (1.0 / 0.15), 0.0, 1.0)
    dens += _col(u(0.07, 0.12)) * ribs * thorax
    del seg, thorax, xr, phase, ribs, spine, lung_env
    for side in (-1.0, 1.0):
        clav = _segment_distance(qx, qy, side * 0.11, -0.72, side * 0.62 * hab, _col(-0.86 + u(-0.04, 0.04)))
        dens += 0.16 * _ramp(0.032 - clav, edge)

    # Nodule: anatomy finding, independent of physiology; 3-6 px radius at 64 px (a fixed
    # anatomical size in canonical units).
    has_nodule = np.asarray(state["nodule"]) > 0.5
    nod_x, nod_y = _sample_lung_points(rng, b, habitus)
    nod_r = u(3.0, 6.0) * (2.0 / 64.0)
    nod_amp = u(0.22, 0.30)
    sel = np.flatnonzero(has_nodule)
    if sel.size:
        ddx, ddy = qx[sel] - _col(nod_x[sel]), qy[sel] - _col(nod_y[sel])
        rr = (ddx * ddx + ddy * ddy) / _col(nod_r[sel] ** 2)
        dens[sel] += _col(nod_amp[sel]) * np.sqrt(np.clip(1.0 - rr, 0.0, 1.0))

    # Devices (about 40% of patients, independent of physiology): ECG electrodes, a central
    # line, an endotracheal tube.
    has_device = rng.random(b) < 0.40
    kinds = rng.random((3, b))
    electrode_xy = rng.uniform(-1.0, 1.0, (3, 2, b)).astype(f32) * np.array([[0.75], [0.55]], f32)[None]
    line_side = np.where(rng.random(b) < 0.5, -1.0, 1.0).astype(f32)
    line_end, tube_end = u(-0.25, -0.10), u(-0.62, -0.50)
    sel = np.flatnonzero(has_device & (kinds[0] < 0.7))
    if sel.size:
        sx, sy = qx[sel], qy[sel]
        for k in range(3):
            ddx, ddy = sx - _col(electrode_xy[k, 0, sel]), sy - _col(electrode_xy[k, 1, sel] - 0.05)
            d = np.sqrt(ddx * ddx + ddy * ddy)
            dens[sel] += 0.55 * _ramp(0.045 - d, edge) * (0.6 + 0.4 * _ramp(d - 0.02, edge))
    sel = np.flatnonzero(has_device & (kinds[1] < 0.5))
    if sel.size:
        side = _col(line_side[sel])
        pts = [(side * 0.62, -0.80), (side * 0.30, -0.68), (side * 0.10, -0.50), (0.03, _col(line_end[sel]))]
        d = np.full((sel.size, size, size), np.inf, f32)
        for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
            d = np.minimum(d, _segment_distance(qx[sel], qy[sel], x0, y0, x1, y1))
        dens[sel] += 0.40 * _ramp(0.012 - d, edge)
    sel = np.flatnonzero(has_device & (kinds[2] < 0.35))
    if sel.size:
        wall = _ramp(0.026 - np.abs(np.abs(qx[sel]) - 0.018), edge) * _ramp(_col(tube_end[sel]) - qy[sel], edge)
        dens[sel] += 0.35 * wall

    # Exposure: gamma, contrast, brightness, heel-effect gradient; then quantum noise.
    dens = np.clip(dens, 1e-6, 1.0) ** _col(np.exp(nrm(0.22)))
    dens = dens * _col(u(0.80, 1.15)) + _col(nrm(0.05))
    phi = u(0.0, 2.0 * np.pi)
    dens += _col(u(0.0, 0.10)) * (_col(np.cos(phi)) * px + _col(np.sin(phi)) * py)
    dens += _col(u(0.01, 0.035)) * rng.standard_normal(dens.shape, dtype=f32)
    images = np.clip(dens, 0.0, 1.0, out=dens)

    thoracic_width = (0.36 + 0.30 + 0.37 + 0.29) * habitus
    heart_width = 2.0 * np.sqrt((h_ax * np.cos(rot)) ** 2 + (h_ay * np.sin(rot)) ** 2)
    info = {
        "ctr": (heart_width / thoracic_width).astype(f32),
        "device": has_device.astype(f32),
        "nodule_x": np.where(has_nodule, nod_x, np.nan).astype(f32),
        "nodule_y": np.where(has_nodule, nod_y, np.nan).astype(f32),
        "nodule_radius_px": np.where(has_nodule, nod_r * scale * size / 2.0, 0.0).astype(f32),
    }
    return images, lung_mask, info


def _smooth_noise(rng: np.random.Generator, b: int, size: int, cells: int) -> np.ndarray:
    """Zero-mean smooth random field (B, S, S): bilinear upsampling of a coarse grid."""
    coarse = rng.standard_normal((b, cells + 1, cells + 1)).astype(np.float32)
    pos = (np.arange(size, dtype=np.float32) + 0.5) * (cells / size)
    i0 = np.minimum(pos.astype(np.int64), cells - 1)
    w = (pos - i0).astype(np.float32)
    rows = coarse[:, i0, :] * (1 - w)[None, :, None] + coarse[:, i0 + 1, :] * w[None, :, None]
    return rows[:, :, i0] * (1 - w)[None, None, :] + rows[:, :, i0 + 1] * w[None, None, :]


def _sample_lung_points(rng: np.random.Generator, b: int, habitus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One point per patient well inside a lung field and away from the heart (rejection)."""
    tries = 32
    side = np.where(rng.random((b, tries)) < 0.5, -1.0, 1.0)
    x = side * rng.uniform(0.20, 0.58, (b, tries)) * habitus[:, None]
    y = rng.uniform(-0.50, 0.30, (b, tries))
    cx = np.where(side < 0, -0.36, 0.37) * habitus[:, None]
    inside = ((x - cx) / (0.24 * habitus[:, None])) ** 2 + (y / 0.55) ** 2 < 1.0
    clear_of_heart = ~((x > -0.15) & (y > 0.0))
    ok = inside & clear_of_heart
    first = np.argmax(ok, axis=1)  # every row has a valid point with overwhelming probability
    rows = np.arange(b)
    return x[rows, first].astype(np.float32), y[rows, first].astype(np.float32)


# ----------------------------------------------------------------------------------------------
# ECG
# ----------------------------------------------------------------------------------------------
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


def _ecg_labels(p: Mapping[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
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


# ----------------------------------------------------------------------------------------------
# Labs
# ----------------------------------------------------------------------------------------------
def simulate_labs(state: Mapping[str, np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Raw values of the 50 labs and their observed mask (ascending itemid order).

    Args:
        state: latent state from :func:`sample_latent_state`.
        rng: numpy random generator.

    Returns:
        ``values`` (N, 50) float64 in natural units, rounded to clinical precision, NaN where
        not observed, and ``observed`` (N, 50) int64 (1 = observed).
    """
    n = int(np.asarray(state["cardiac"]).shape[0])
    latents = {k: np.asarray(state[k], dtype=np.float64) for k in (
        "cardiac", "ischaemia", "renal", "congestion", "inflammation", "liver", "anaemia", "respiratory"
    )}
    latents["age"] = np.asarray(state["age_z"], dtype=np.float64)
    latents["sex"] = 2.0 * np.asarray(state["sex"], dtype=np.float64) - 1.0
    for g in _LAB_GROUP_LATENTS:
        latents[g] = rng.standard_normal(n)
    values = np.empty((n, len(_LABS)))
    for j, (_, _, centre, spread, log_scale, decimals, _, loadings) in enumerate(_LABS):
        signal = sum(w * latents[k] for k, w in loadings.items()) if loadings else np.zeros(n)
        resid = math.sqrt(max(0.25, 1.0 - sum(w * w for w in loadings.values())))
        z = signal + resid * rng.standard_normal(n)
        raw = np.exp(math.log(centre) + spread * z) if log_scale else centre + spread * z
        values[:, j] = np.round(raw, decimals)
    panel_prob = {}
    for panel, (base, loadings) in _PANELS.items():
        logit = base + sum(w * latents[k] for k, w in loadings.items())
        panel_prob[panel] = 1.0 / (1.0 + np.exp(-logit))
    ordered = {panel: rng.random(n) < prob for panel, prob in panel_prob.items()}
    observed = np.empty((n, len(_LABS)), dtype=np.int64)
    for j, lab in enumerate(_LABS):
        observed[:, j] = ordered[lab[6]] & (rng.random(n) < _PANEL_REPORT_PROB)
    values[observed == 0] = np.nan
    return values, observed


def labs_to_percentiles(
    values: np.ndarray, train_values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Percentiles against the train empirical CDF, missing filled with the train mean percentile.

    The ECDF is the fraction of observed train values <= x (statsmodels ``ECDF``, side='right'),
    as in Symile-MIMIC. A lab never observed in train maps to 0.5.

    Args:
        values: (N, L) raw values, NaN = missing.
        train_values: (M, L) raw train values, NaN = missing.

    Returns:
        ``percentiles`` (N, L) float32 in [0, 1] and ``train_means`` (L,) float64: the mean
        percentile of the observed train values of each lab (the labs_means.json values).

    Raises:
        ValueError: when the column counts differ.
    """
    values = np.asarray(values, dtype=np.float64)
    train_values = np.asarray(train_values, dtype=np.float64)
    if values.ndim != 2 or train_values.ndim != 2 or values.shape[1] != train_values.shape[1]:
        raise ValueError(
            "values and train_values must be 2-D with the same number of columns, got "
            f"{values.shape} and {train_values.shape}"
        )
    out = np.empty(values.shape, dtype=np.float32)
    means = np.empty(values.shape[1])
    for j in range(values.shape[1]):
        ref = np.sort(train_values[~np.isnan(train_values[:, j]), j])
        if ref.size == 0:
            means[j] = 0.5
            out[:, j] = 0.5
            continue
        means[j] = (np.searchsorted(ref, ref, side="right") / ref.size).mean()
        col = values[:, j]
        pct = np.searchsorted(ref, np.nan_to_num(col, nan=0.0), side="right") / ref.size
        out[:, j] = np.where(np.isnan(col), means[j], pct)
    return out, means


# ----------------------------------------------------------------------------------------------
# Cohort writer
# ----------------------------------------------------------------------------------------------
def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _normalise_fractions(split_fractions: Mapping[str, float] | None) -> dict[str, float]:
    if split_fractions is None:
        return dict(DEFAULT_SPLIT_FRACTIONS)
    if not isinstance(split_fractions, Mapping) or set(split_fractions) != set(SPLITS):
        got = sorted(split_fractions) if isinstance(split_fractions, Mapping) else type(split_fractions).__name__
        raise ValueError(f"split_fractions must map exactly the splits {list(SPLITS)} to fractions, got {got}")
    fr = {k: float(split_fractions[k]) for k in SPLITS}
    if any(not (v > 0.0) for v in fr.values()):
        raise ValueError(f"split_fractions must all be > 0, got {fr}")
    total = sum(fr.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"split_fractions must sum to 1, got {total:.6f}")
    return fr


def _split_sizes(n: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Largest-remainder apportionment, so the sizes sum exactly to ``n``."""
    raw = {k: fractions[k] * n for k in SPLITS}
    sizes = {k: int(math.floor(v)) for k, v in raw.items()}
    order = sorted(SPLITS, key=lambda k: (-(raw[k] - sizes[k]), SPLITS.index(k)))
    for k in order[: n - sum(sizes.values())]:
        sizes[k] += 1
    return sizes


def _parameters(n_patients: int, image_size: int, seed: int, fractions: Mapping[str, float]) -> dict:
    return {
        "version": COHORT_VERSION,
        "n_patients": n_patients,
        "image_size": image_size,
        "seed": seed,
        "split_fractions": {k: fractions[k] for k in SPLITS},
    }


def _params_hash(params: Mapping) -> str:
    blob = json.dumps(params, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _read_parameters(cohort_dir: Path) -> dict | None:
    try:
        meta = json.loads((cohort_dir / "cohort.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta.get("parameters") if isinstance(meta, dict) else None


def make_cohort(
    root: str | os.PathLike,
    n_patients: int = 4000,
    image_size: int = 64,
    seed: int = 0,
    split_fractions: Mapping[str, float] | None = None,
    force: bool = False,
    *,
    num_workers: int | None = None,
) -> Path:
    """Generate (or reuse) a synthetic cohort in the Symile-MIMIC layout and return its root.

    The cohort is written to ``root/cohort_<hash>/`` where ``<hash>`` keys the parameters and
    the generator version, so several configurations coexist under one ``root``. A cohort with
    identical parameters is returned immediately without regenerating. If ``root`` is itself a
    cohort folder (holds ``cohort.json``) with the same parameters, ``root`` is returned; with
    different parameters a ``ValueError`` is raised rather than nesting cohorts. Writing goes to a
    temporary sibling folder renamed into place at the end, so an interrupted run never looks
    complete. Same seed and parameters give byte-identical arrays.

    Args:
        root: folder that holds cohorts (created if needed).
        n_patients: number of patients, split patient-disjointly.
        image_size: CXR side in pixels (>= 16).
        seed: random seed (>= 0).
        split_fractions: fractions for ``train, val, test, probe_train, probe_val, probe_test``
            (all > 0, summing to 1); default :data:`DEFAULT_SPLIT_FRACTIONS`.
        force: regenerate even if an identical cohort exists (the old one is replaced
            atomically).
        num_workers: threads rendering chunks in parallel (default: available cores, at most
            4). It changes speed only, never the bytes, and is not part of the cache key.

    Returns:
        The cohort root (holding ``cohort.json``, ``data_npy/``, ``tasks/``).

    Raises:
        ValueError: on invalid arguments, a split that would be empty, or when ``root`` is a
            cohort with different parameters.

    Example:
        >>> root = make_cohort("/tmp/pacx_cohorts", n_patients=300, image_size=32)  # doctest: +SKIP
        >>> (root / "data_npy" / "train" / "cxr_train.npy").exists()  # doctest: +SKIP
        True
    """
    n_patients = _check_positive_int("n_patients", n_patients)
    image_size = _check_positive_int("image_size", image_size)
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    if num_workers is not None:
        num_workers = _check_positive_int("num_workers", num_workers)
    fractions = _normalise_fractions(split_fractions)
    sizes = _split_sizes(n_patients, fractions)
    if min(sizes.values()) < 1:
        raise ValueError(f"n_patients={n_patients} leaves an empty split with these fractions: {sizes}")
    params = _parameters(n_patients, image_size, seed, fractions)

    root = Path(root)
    own = _read_parameters(root)
    if own is not None:  # ``root`` is itself a cohort folder
        if own != params:
            raise ValueError(
                f"root {root} is itself a cohort with different parameters ({own}); pass the folder "
                "that holds cohorts instead"
            )
        if not force:
            return root
        target, container = root, root.parent
    else:
        target, container = root / f"cohort_{_params_hash(params)}", root
        if not force and _read_parameters(target) == params:
            return target

    container.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=container))
    try:
        _generate(tmp, params, sizes, _default_workers() if num_workers is None else num_workers)
        if target.exists():
            if not force and _read_parameters(target) == params:  # another process won the race
                shutil.rmtree(tmp, ignore_errors=True)
                return target
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=container))
            os.replace(target, trash / "old")
            os.replace(tmp, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            try:
                os.replace(tmp, target)
            except OSError:  # a concurrent run renamed an identical cohort into place first
                if _read_parameters(target) != params:
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


# Random-stream tags and patient-id ranges of the CXR-only corpora. Cohorts draw from the
# streams (seed, 0) and (seed, 1, ...); a corpus draws from (seed, 2, tag) and
# (seed, 3, tag, ...), so a corpus never repeats a cohort's patients, and its ``hadm_id``s lie
# in a range of its own.
CORPUS_KINDS: dict[str, dict[str, int]] = {
    "probe": {"tag": 1, "hadm_base": 30_000_000},
    "prior": {"tag": 2, "hadm_base": 40_000_000},
}
_LATENT_COLUMNS = ("age", "sex", "cardiac", "hypertrophy", "conduction", "ischaemia", "renal", "congestion",
                   "inflammation", "lvef", "heart_size", "effusion", "haze")


def make_cxr_corpus(
    root: str | os.PathLike,
    split_sizes: Mapping[str, int],
    image_size: int = 64,
    seed: int = 0,
    kind: str = "probe",
    force: bool = False,
    *,
    num_workers: int | None = None,
) -> Path:
    """Generate (or reuse) CXR-only patients of the cohort's generator in the Symile-MIMIC layout.

    Two uses, each with its own random stream and ``hadm_id`` range (:data:`CORPUS_KINDS`):
    ``"probe"`` holds the large evaluation splits of a cohort (probe train / val / test), and
    ``"prior"`` the unpaired corpus the Stage-1 MAE prior is pretrained on. Patients come from the
    same latent-state model and the same renderer as :func:`make_cohort`, but only what images
    need is written: ``data_npy/<split>/cxr_<split>.npy`` and ``hadm_id_<split>.npy``, the task
    labels (``tasks/<split>.csv``), the lung masks and the latent state (``latent/<split>.csv``).
    No ECG or labs are simulated. Caching, atomic writing and determinism are as for
    :func:`make_cohort`; the folder is ``root/corpus_<hash>/``.

    Args:
        root: folder that holds cohorts and corpora (created if needed).
        split_sizes: patients per split, e.g. ``{"probe_train": 8000, "probe_val": 4000}``.
        image_size: CXR side in pixels (>= 16).
        seed: random seed (>= 0).
        kind: ``"probe"`` or ``"prior"``.
        force: regenerate even if an identical corpus exists.
        num_workers: rendering threads; changes speed only, never the bytes.

    Returns:
        The corpus root.

    Raises:
        ValueError: on an unknown ``kind``, an empty or non-positive split size, a bad seed or
            image size.

    Example:
        >>> root = make_cxr_corpus("/tmp/pacx_cohorts", {"probe_test": 500}, image_size=32)  # doctest: +SKIP
        >>> (root / "data_npy" / "probe_test" / "cxr_probe_test.npy").exists()  # doctest: +SKIP
        True
    """
    if kind not in CORPUS_KINDS:
        raise ValueError(f"kind must be one of {sorted(CORPUS_KINDS)}, got {kind!r}")
    if not isinstance(split_sizes, Mapping) or not split_sizes:
        raise ValueError(f"split_sizes must be a non-empty mapping of split name to size, got {split_sizes!r}")
    sizes = {str(k): _check_positive_int(f"split_sizes[{k!r}]", v) for k, v in split_sizes.items()}
    image_size = _check_positive_int("image_size", image_size)
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    params = {"version": COHORT_VERSION, "kind": kind, "split_sizes": sizes, "image_size": image_size,
              "seed": int(seed)}
    root = Path(root)
    target = root / f"corpus_{_params_hash(params)}"
    if not force and _read_parameters(target) == params:
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=root))
    try:
        _generate_corpus(tmp, params, _default_workers() if num_workers is None else
                         _check_positive_int("num_workers", num_workers))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _render_cxr_chunk(sub: Mapping[str, np.ndarray], size: int, key: tuple[int, ...]) -> dict:
    rng = np.random.default_rng(np.random.SeedSequence(list(key)))
    img, lung, info = render_cxr(sub, size, rng)
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(1, 3, 1, 1)
    cxr = np.ascontiguousarray((img[:, None, :, :] - mean) / std, dtype=np.float32)
    return {"cxr": cxr, "lung": lung, "info": {k: info[k] for k in ("ctr", "device", "nodule_radius_px")}}


def _generate_corpus(out: Path, params: Mapping, num_workers: int) -> None:
    start = time.perf_counter()
    seed, size, sizes = params["seed"], params["image_size"], params["split_sizes"]
    tag, hadm_base = CORPUS_KINDS[params["kind"]]["tag"], CORPUS_KINDS[params["kind"]]["hadm_base"]
    n = sum(sizes.values())
    master = np.random.default_rng(np.random.SeedSequence([seed, 2, tag]))
    state = sample_latent_state(n, master)
    (out / "tasks").mkdir(parents=True)
    (out / "latent").mkdir()
    hashes: dict[str, str] = {}
    offset = 0
    for s_code, (split, m) in enumerate(sizes.items()):
        idx = np.arange(offset, offset + m)
        offset += m
        folder = out / "data_npy" / split
        folder.mkdir(parents=True)
        writers = {"cxr": _NpyWriter(folder / f"cxr_{split}.npy", np.float32, (m, 3, size, size)),
                   "lung": _NpyWriter(out / "tasks" / f"lung_mask_{split}.npy", np.uint8, (m, size, size))}
        hashers = {k: hashlib.sha256() for k in writers}
        info_rows = {k: np.zeros(m, np.float32) for k in ("ctr", "device", "nodule_radius_px")}
        bounds = [(lo, min(lo + _CHUNK, m)) for lo in range(0, m, _CHUNK)]
        jobs = ((_take(state, idx[lo:hi]), size, (seed, 3, tag, s_code, c)) for c, (lo, hi) in enumerate(bounds))
        try:
            for (lo, hi), chunk in zip(bounds, _map_bounded(_render_cxr_chunk, jobs, num_workers)):
                for k in info_rows:
                    info_rows[k][lo:hi] = chunk["info"][k]
                for k, writer in writers.items():
                    writer.write(chunk[k])
                    hashers[k].update(chunk[k].tobytes())
        except BaseException:
            for writer in writers.values():
                writer.close(check=False)
            raise
        for writer in writers.values():
            writer.close()
        hashes[f"data_npy/{split}/cxr_{split}.npy"] = hashers["cxr"].hexdigest()
        hashes[f"tasks/lung_mask_{split}.npy"] = hashers["lung"].hexdigest()
        hadm = hadm_base + idx.astype(np.int64)
        np.save(folder / f"hadm_id_{split}.npy", hadm)
        hashes[f"data_npy/{split}/hadm_id_{split}.npy"] = hashlib.sha256(hadm.tobytes()).hexdigest()
        columns: dict[str, np.ndarray] = {"hadm_id": hadm, "subject_id": hadm - hadm_base + 10 * hadm_base}
        columns.update({task: state[task][idx].astype(np.int64) for task in TASKS})
        (out / "tasks" / f"{split}.csv").write_text(_csv(columns), encoding="utf-8")
        latent: dict[str, np.ndarray] = {"hadm_id": hadm, **{k: state[k][idx] for k in _LATENT_COLUMNS}}
        latent.update(info_rows)
        (out / "latent" / f"{split}.csv").write_text(_csv(latent), encoding="utf-8")
    content = hashlib.sha256("".join(f"{k}:{v}\n" for k, v in sorted(hashes.items())).encode()).hexdigest()
    meta = {
        "format": "pacx-synthetic-cxr-corpus",
        "version": COHORT_VERSION,
        "parameters": dict(params),
        "params_hash": _params_hash(params),
        "content_hash": content,
        "file_hashes": hashes,
        "splits": dict(sizes),
        "tasks": {k: dict(v) for k, v in TASKS.items()},
        "segmentation": {"lung": {"kind": "anatomy", "mask": "tasks/lung_mask_{split}.npy"}},
        "cxr": {"image_size": size, "channels": 3, "normalisation": "imagenet",
                "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "generation_seconds": round(time.perf_counter() - start, 3),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (out / "cohort.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


# Per-patient values kept from rendering for latent/<split>.csv (analysis only).
_CHUNK_INFO_KEYS = ("ctr", "device", "nodule_radius_px", "hr", "qrs_ms", "axis_deg", "st_mv", "sokolow_mv")


class _NpyWriter:
    """Stream row chunks into a ``.npy`` file with plain sequential writes.

    Sequential writes (rather than a memory map) keep the resident memory of a 10,000-patient
    cohort bounded by one chunk; ``close`` checks that exactly the declared rows arrived.
    """

    def __init__(self, path: Path, dtype, shape: tuple[int, ...]) -> None:
        self.path, self.dtype, self.shape = path, np.dtype(dtype), tuple(shape)
        self.expected = int(np.prod(shape)) * self.dtype.itemsize
        self.written = 0
        self.fh = open(path, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_1_0(self.fh, header)

    def write(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.shape[1:]:
            raise ValueError(f"{self.path.name}: rows of shape {rows.shape[1:]} do not match {self.shape[1:]}")
        self.fh.write(rows.tobytes())
        self.written += rows.nbytes

    def close(self, check: bool = True) -> None:
        if self.fh.closed:
            return
        self.fh.close()
        if check and self.written != self.expected:
            raise RuntimeError(f"{self.path}: wrote {self.written} bytes of data, expected {self.expected}")


def _render_chunk(sub: Mapping[str, np.ndarray], size: int, key: tuple[int, ...]) -> dict:
    """CXR, lung mask, ECG and ECG labels of one chunk of patients, from its own random stream."""
    rng = np.random.default_rng(np.random.SeedSequence(list(key)))
    img, lung, info = render_cxr(sub, size, rng)
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(1, 3, 1, 1)
    cxr = np.ascontiguousarray((img[:, None, :, :] - mean) / std, dtype=np.float32)
    ecg, ecg_params = simulate_ecg(sub, rng)
    labels = _ecg_labels(ecg_params, rng)
    rows = {k: (info[k] if k in info else ecg_params[k]) for k in _CHUNK_INFO_KEYS}
    return {"cxr": cxr, "ecg": np.ascontiguousarray(ecg[:, None]), "lung": lung, "labels": labels, "info": rows}


def _map_bounded(fn, jobs, num_workers: int):
    """Ordered ``map`` over threads with at most ``2 * num_workers`` chunks in flight.

    numpy releases the GIL inside its array kernels, so threads use several cores; the window
    bounds memory, and results come back in submission order, so the bytes written do not
    depend on the number of workers.
    """
    if num_workers <= 1:
        for args in jobs:
            yield fn(*args)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        pending: deque = deque()
        for args in jobs:
            pending.append(pool.submit(fn, *args))
            if len(pending) >= 2 * num_workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _default_workers() -> int:
    try:
        return max(1, min(4, len(os.sched_getaffinity(0))))
    except AttributeError:  # pragma: no cover - platforms without sched_getaffinity
        return max(1, min(4, os.cpu_count() or 1))


def _generate(out: Path, params: Mapping, sizes: Mapping[str, int], num_workers: int) -> None:
    """Write a complete cohort into ``out`` (an empty folder)."""
    start = time.perf_counter()
    seed, size, n = params["seed"], params["image_size"], params["n_patients"]
    master = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    state = sample_latent_state(n, master)
    raw_labs, observed = simulate_labs(state, master)
    order = master.permutation(n)
    split_index: dict[str, np.ndarray] = {}
    offset = 0
    for split in SPLITS:
        split_index[split] = np.sort(order[offset : offset + sizes[split]])
        offset += sizes[split]
    subject_ids = 10_000_000 + np.arange(n, dtype=np.int64)
    hadm_ids = 20_000_000 + master.permutation(n).astype(np.int64)

    train = split_index["train"]
    percentiles, means = labs_to_percentiles(raw_labs, raw_labs[train])
    (out / "tasks").mkdir(parents=True)
    (out / "latent").mkdir()
    labs_means = {f"{itemid}_percentile": float(means[j]) for j, itemid in enumerate(LAB_ITEMIDS)}
    (out / "labs_means.json").write_text(json.dumps(labs_means, indent=2) + "\n", encoding="utf-8")

    hashes: dict[str, str] = {}
    prevalence: dict[str, dict[str, float]] = {}
    for s_code, split in enumerate(SPLITS):
        idx = split_index[split]
        m = idx.size
        folder = out / "data_npy" / split
        folder.mkdir(parents=True)
        writers = {
            "cxr": _NpyWriter(folder / f"cxr_{split}.npy", np.float32, (m, 3, size, size)),
            "ecg": _NpyWriter(folder / f"ecg_{split}.npy", np.float32, (m, 1, ECG_SAMPLES, 12)),
            "lung": _NpyWriter(out / "tasks" / f"lung_mask_{split}.npy", np.uint8, (m, size, size)),
        }
        hashers = {k: hashlib.sha256() for k in writers}
        ecg_labels = {k: np.zeros(m, np.int64) for k in ECG_LABELS}
        latent_rows: dict[str, np.ndarray] = {k: np.zeros(m, np.float32) for k in _CHUNK_INFO_KEYS}
        bounds = [(lo, min(lo + _CHUNK, m)) for lo in range(0, m, _CHUNK)]
        jobs = (
            (_take(state, idx[lo:hi]), size, (seed, 1, s_code, c_idx)) for c_idx, (lo, hi) in enumerate(bounds)
        )
        try:
            for (lo, hi), chunk in zip(bounds, _map_bounded(_render_chunk, jobs, num_workers)):
                for k in ECG_LABELS:
                    ecg_labels[k][lo:hi] = chunk["labels"][k]
                for k in latent_rows:
                    latent_rows[k][lo:hi] = chunk["info"][k]
                for k, writer in writers.items():  # written and hashed in patient order
                    writer.write(chunk[k])
                    hashers[k].update(chunk[k].tobytes())
        except BaseException:
            for writer in writers.values():
                writer.close(check=False)  # let the original error propagate
            raise
        for writer in writers.values():
            writer.close()
        hashes[f"data_npy/{split}/cxr_{split}.npy"] = hashers["cxr"].hexdigest()
        hashes[f"data_npy/{split}/ecg_{split}.npy"] = hashers["ecg"].hexdigest()
        hashes[f"tasks/lung_mask_{split}.npy"] = hashers["lung"].hexdigest()

        small = {
            f"labs_percentiles_{split}.npy": percentiles[idx].astype(np.float32),
            f"labs_missingness_{split}.npy": observed[idx].astype(np.int64),
            f"hadm_id_{split}.npy": hadm_ids[idx],
        }
        for name, arr in small.items():
            np.save(folder / name, arr)
            hashes[f"data_npy/{split}/{name}"] = hashlib.sha256(arr.tobytes()).hexdigest()

        columns: dict[str, np.ndarray] = {"hadm_id": hadm_ids[idx], "subject_id": subject_ids[idx]}
        for task in TASKS:
            columns[task] = state[task][idx].astype(np.int64)
        columns.update(ecg_labels)
        csv_text = _csv(columns)
        (out / "tasks" / f"{split}.csv").write_text(csv_text, encoding="utf-8")
        hashes[f"tasks/{split}.csv"] = hashlib.sha256(csv_text.encode()).hexdigest()
        prevalence[split] = {k: round(float(columns[k].mean()), 4) for k in [*TASKS, *ECG_LABELS]}

        latent_cols: dict[str, np.ndarray] = {"hadm_id": hadm_ids[idx]}
        for k in ("age", "sex", "cardiac", "hypertrophy", "conduction", "ischaemia", "renal", "congestion",
                  "inflammation", "lvef", "heart_size", "effusion", "haze"):
            latent_cols[k] = state[k][idx]
        latent_cols.update(latent_rows)
        (out / "latent" / f"{split}.csv").write_text(_csv(latent_cols), encoding="utf-8")

    content = hashlib.sha256("".join(f"{k}:{v}\n" for k, v in sorted(hashes.items())).encode()).hexdigest()
    meta = {
        "format": "pacx-synthetic-cohort",
        "version": COHORT_VERSION,
        "parameters": dict(params),
        "params_hash": _params_hash(params),
        "content_hash": content,
        "file_hashes": hashes,
        "splits": {k: int(v) for k, v in sizes.items()},
        "tasks": {k: dict(v) for k, v in TASKS.items()},
        "segmentation": {"lung": {"kind": "anatomy", "mask": "tasks/lung_mask_{split}.npy"}},
        "ecg_labels": list(ECG_LABELS),
        "ecg": {"sampling_rate": ECG_SAMPLING_RATE, "samples": ECG_SAMPLES, "leads": list(MIMIC_ECG_LEADS),
                "scaling": "global per-record min-max to [-1, 1]"},
        "cxr": {"image_size": size, "channels": 3, "normalisation": "imagenet",
                "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "labs": {"itemids": list(LAB_ITEMIDS), "names": list(LAB_NAMES),
                 "observed_fraction": round(float(observed.mean()), 4)},
        "prevalence": prevalence,
        "latent": "latent/{split}.csv: ground-truth state for analysis only; never read by training",
        "generation_seconds": round(time.perf_counter() - start, 3),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (out / "cohort.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _csv(columns: Mapping[str, np.ndarray]) -> str:
    """Deterministic CSV text (ints as ints, floats with 6 significant digits)."""
    names = list(columns)
    cols = []
    for name in names:
        arr = np.asarray(columns[name])
        if np.issubdtype(arr.dtype, np.integer):
            cols.append([str(int(v)) for v in arr])
        else:
            cols.append([f"{float(v):.6g}" for v in arr])
    lines = [",".join(names)] + [",".join(row) for row in zip(*cols)]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Figure
# ----------------------------------------------------------------------------------------------
def plot_sample_patients(
    root: str | os.PathLike, path: str | os.PathLike, split: str = "train", n: int = 6
) -> Path:
    """Save a figure of ``n`` patients: CXR with lung-mask contour and labels, lead II, labs.

    Args:
        root: a cohort root returned by :func:`make_cohort`.
        path: output image file (PNG).
        split: which split to draw from.
        n: number of patients (columns).

    Returns:
        ``path``.

    Raises:
        ValueError: when ``split`` is unknown or ``n`` is not positive.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    n = _check_positive_int("n", n)
    root, path = Path(root), Path(path)
    folder = root / "data_npy" / split
    cxr = np.load(folder / f"cxr_{split}.npy", mmap_mode="r")
    ecg = np.load(folder / f"ecg_{split}.npy", mmap_mode="r")
    pct = np.load(folder / f"labs_percentiles_{split}.npy")
    obs = np.load(folder / f"labs_missingness_{split}.npy")
    lung = np.load(root / "tasks" / f"lung_mask_{split}.npy", mmap_mode="r")
    header, *rows = (root / "tasks" / f"{split}.csv").read_text().strip().split("\n")
    cols = header.split(",")
    table = np.array([[int(v) for v in r.split(",")] for r in rows])
    latent_path = root / "latent" / f"{split}.csv"
    lat_header, *lat_rows = latent_path.read_text().strip().split("\n")
    lat_cols = lat_header.split(",")
    lat = np.array([[float(v) for v in r.split(",")] for r in lat_rows])
    n = min(n, cxr.shape[0])
    # Show variety: the first positive of each task and the first all-negative patient, then
    # the following patients in file order.
    task_cols = [cols.index(t) for t in TASKS]
    picks: list[int] = []
    for col in task_cols:
        hits = np.flatnonzero(table[:, col] == 1)
        picks += [int(hits[0])] if hits.size and int(hits[0]) not in picks else []
    negatives = np.flatnonzero(table[:, task_cols].sum(1) == 0)
    picks += [int(negatives[0])] if negatives.size and int(negatives[0]) not in picks else []
    picks = (picks + [i for i in range(cxr.shape[0]) if i not in picks])[:n]

    fig, axes = plt.subplots(3, n, figsize=(3.0 * n, 7.6), gridspec_kw={"height_ratios": [3.0, 1.1, 1.1]})
    axes = np.asarray(axes).reshape(3, n)
    for col, i in enumerate(picks):
        gray = cxr[i, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
        ax = axes[0, col]
        ax.imshow(gray, cmap="gray", vmin=0, vmax=1)
        ax.contour(lung[i], levels=[0.5], colors="tab:cyan", linewidths=0.8)
        lab = {c: table[i, cols.index(c)] for c in TASKS}
        ef = lat[i, lat_cols.index("lvef")]
        ctr = lat[i, lat_cols.index("ctr")]
        ax.set_title(
            f"EF {ef:.0f}% (reduced={lab['reduced_ef']})\nfluid_overload={lab['fluid_overload']} "
            f"nodule={lab['nodule']}\nCTR {ctr:.2f}",
            fontsize=8,
        )
        ax.axis("off")
        ax = axes[1, col]
        tsec = np.arange(ECG_SAMPLES) / ECG_SAMPLING_RATE
        keep = tsec < 4.0
        ax.plot(tsec[keep], ecg[i, 0, keep, 1], lw=0.6, color="k")
        ecg_pos = [c.replace("ecg_", "") for c in ECG_LABELS if table[i, cols.index(c)] == 1]
        hr = lat[i, lat_cols.index("hr")]
        qrs = lat[i, lat_cols.index("qrs_ms")]
        ax.set_title(f"lead II: HR {hr:.0f}, QRS {qrs:.0f} ms\n{', '.join(ecg_pos) or 'normal'}", fontsize=7)
        ax.set_ylim(-1.05, 1.05)
        ax.set_xticks([0, 1, 2, 3, 4])
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
        ax = axes[2, col]
        colours = np.where(obs[i] == 1, "tab:blue", "lightgray")
        ax.bar(np.arange(pct.shape[1]), pct[i], color=colours, width=0.8)
        ax.set_ylim(0, 1)
        ax.set_title("labs percentiles (grey = missing)", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle("pacx synthetic cohort: sample patients", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def _parse_fractions(text: str) -> dict[str, float]:
    out = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected split=fraction pairs, got {item!r}")
        out[key.strip()] = float(value)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``python -m pacx.data.synthetic --out DIR ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m pacx.data.synthetic",
        description=(
            "Generate (or reuse) a synthetic paired CXR/ECG/labs cohort in the Symile-MIMIC on-disk "
            "layout. The cohort is written to DIR/cohort_<hash>/ (hash of the parameters); an identical "
            "cohort already there is reused. Prints the cohort root and the split sizes."
        ),
    )
    parser.add_argument("--out", required=True, help="folder that holds cohorts (created if needed)")
    parser.add_argument("--n-patients", type=int, default=4000, help="number of patients (default 4000)")
    parser.add_argument("--image-size", type=int, default=64, help="CXR side in pixels, >= 16 (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--split-fractions",
        type=_parse_fractions,
        default=None,
        help="e.g. train=0.5,val=0.05,test=0.1,probe_train=0.15,probe_val=0.05,probe_test=0.15 (the default)",
    )
    parser.add_argument("--force", action="store_true", help="regenerate even if an identical cohort exists")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="rendering threads (default: available cores, at most 4); the bytes written do not depend on it",
    )
    parser.add_argument("--figure", default=None, help="also save a sample-patients PNG to this path")
    args = parser.parse_args(argv)
    try:
        root = make_cohort(
            args.out,
            args.n_patients,
            args.image_size,
            args.seed,
            args.split_fractions,
            args.force,
            num_workers=args.workers,
        )
    except ValueError as err:
        parser.error(str(err))
    meta = json.loads((root / "cohort.json").read_text(encoding="utf-8"))
    print(root)
    for split, count in meta["splits"].items():
        print(f"  {split:<12s} {count:6d} patients")
    print(f"  generation_seconds {meta['generation_seconds']}")
    if args.figure:
        print(plot_sample_patients(root, args.figure))
    return 0


if __name__ == "__main__":
    sys.exit(main())
