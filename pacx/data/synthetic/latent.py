"""The latent physiological state of the synthetic cohort and the task labels it defines.

Every patient's CXR, ECG, labs and vitals are views of this state (see
``docs/synthetic_cohort.md``); anatomy (the nodule) is independent of it.
"""

from __future__ import annotations

import numpy as np

from ._common import check_positive_int

__all__ = ["LATENT_COLUMNS", "TASKS", "sample_latent_state"]

# Downstream task labels: thresholds of the latent state (physiology) or the nodule (anatomy).
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

# Latent variables written to ``latent/<split>.csv`` (ground truth for analysis only).
LATENT_COLUMNS: tuple[str, ...] = ("age", "sex", "cardiac", "hypertrophy", "conduction", "ischaemia", "renal",
                                   "congestion", "inflammation", "lvef", "heart_size", "effusion", "haze")


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
    n = check_positive_int("n", n)
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
