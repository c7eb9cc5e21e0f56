"""The 50 Symile-MIMIC labs of the synthetic cohort: values, panel-wise missingness, percentiles.

Each lab is a noisy linear (or log-linear) view of the latent state; labs are ordered in panels
whose ordering probability depends on the state, so missingness is informative. See
``docs/synthetic_cohort.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

__all__ = ["LAB_ITEMIDS", "LAB_NAMES", "labs_to_percentiles", "simulate_labs"]

# The 50 Symile-MIMIC labs in tensor column order (ascending itemid).
# Each entry: itemid, name, centre, spread, log-scale?, decimals, panel, loadings on the latent
# state (in z units; the remainder of unit variance is lab-specific noise).
# For log-scale labs the raw value is exp(log(centre) + spread * z), else centre + spread * z.
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
