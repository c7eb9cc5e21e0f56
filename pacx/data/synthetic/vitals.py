"""Bedside vital signs of the synthetic cohort: seven more views of the same latent state.

The vitals are the first charted value of each sign around admission (what
:func:`pacx.data.vitals.extract_admission_vitals` takes from MIMIC-IV), in the column order of
:data:`pacx.data.vitals.VITAL_NAMES`. Structural equations (``e`` a fresh standard normal per
equation, ``s = 2 sex - 1``, ``age_z`` the standardised age; each value is rounded to the
precision a monitor reports, then clipped to a physical range)::

    heart_rate   = 80 + 5 cardiac + 4 congestion + 6 inflammation + 3 respiratory
                   - 4 conduction + 10 e                                   bpm, 1,     [30, 200]
    systolic_bp  = 126 + 9 age_z + 6 renal + 5 hypertrophy + 3 s - 6 cardiac
                   - 4 inflammation + 15 e                                 mmHg, 1,    [60, 250]
    diastolic_bp = 74 + 0.35 (systolic_bp - 126) - 4 age_z + 8 e           mmHg, 1,    [30, systolic_bp - 10]
    spo2         = 100 - 2.2 exp(0.35 congestion + 0.45 respiratory + 0.35 e)  %, 1,   [60, 100]
    resp_rate    = 17 exp(0.08 congestion + 0.10 respiratory + 0.06 inflammation + 0.12 e)
                                                                           /min, 1,    [6, 50]
    temperature  = 36.8 + 0.30 inflammation + 0.6 max(inflammation - 1, 0) + 0.30 e
                                                                           degC, 0.1,  [34, 42]
    weight       = 76 exp(0.09 s - 0.05 age_z + 0.20 e) + 3 max(congestion, 0)
                                                                           kg, 0.1,    [30, 250]

So heart rate rises with cardiac dysfunction, congestion, inflammation and respiratory
disease and falls with conduction disease; blood pressure rises with age, renal disease and
hypertrophy and falls with cardiac dysfunction and inflammation (pulse pressure widens with
age); SpO2 falls and the respiratory rate rises with congestion and respiratory disease;
temperature follows inflammation; weight depends on sex and age and gains fluid with
congestion.

Missingness is informative: each measurement is charted with probability
``sigmoid(base + loadings . state)`` (:data:`_CHARTED`); a cuff gives the systolic and the
diastolic pressure together. Weight and temperature are charted least often, and more often in
the sick (daily weights when congested, temperature when inflamed).

Random stream: the cohort writer gives the vitals a stream of their own,
``SeedSequence([seed, 4])``, which no other part of the cohort uses, so adding them left every
earlier array byte-identical. Within it the draws are, in order: one normal vector per equation
above (top to bottom), then one uniform matrix (N, 6) for the charting decisions.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pacx.data.vitals import VITAL_NAMES

__all__ = ["simulate_vitals"]

# Charting model: (base, loadings on the latent state) per measurement; "blood_pressure" covers
# the systolic and diastolic columns, which share one decision.
_CHARTED: dict[str, tuple[float, dict[str, float]]] = {
    "heart_rate": (3.0, {"inflammation": 0.3, "congestion": 0.3}),
    "blood_pressure": (2.5, {"cardiac": 0.3, "congestion": 0.3}),
    "spo2": (2.0, {"respiratory": 0.6, "congestion": 0.4}),
    "resp_rate": (1.8, {"respiratory": 0.5, "inflammation": 0.3}),
    "temperature": (0.6, {"inflammation": 0.8}),
    "weight": (-0.2, {"congestion": 0.8, "renal": 0.3}),
}
_CHART_COLUMNS = {"blood_pressure": ("systolic_bp", "diastolic_bp")}


def _values(st: Mapping[str, np.ndarray], e) -> dict[str, np.ndarray]:
    """Raw vitals (float64) of the structural equations; ``e()`` draws one noise vector."""
    s = 2.0 * st["sex"] - 1.0
    v: dict[str, np.ndarray] = {}
    hr = 80 + 5 * st["cardiac"] + 4 * st["congestion"] + 6 * st["inflammation"] + 3 * st["respiratory"]
    v["heart_rate"] = np.clip(np.round(hr - 4 * st["conduction"] + 10 * e()), 30, 200)
    sbp = 126 + 9 * st["age_z"] + 6 * st["renal"] + 5 * st["hypertrophy"] + 3 * s - 6 * st["cardiac"]
    v["systolic_bp"] = np.clip(np.round(sbp - 4 * st["inflammation"] + 15 * e()), 60, 250)
    dbp = 74 + 0.35 * (v["systolic_bp"] - 126) - 4 * st["age_z"] + 8 * e()
    v["diastolic_bp"] = np.clip(np.round(dbp), 30, v["systolic_bp"] - 10)
    deficit = 2.2 * np.exp(0.35 * st["congestion"] + 0.45 * st["respiratory"] + 0.35 * e())
    v["spo2"] = np.clip(np.round(100 - deficit), 60, 100)
    rr = 17 * np.exp(0.08 * st["congestion"] + 0.10 * st["respiratory"] + 0.06 * st["inflammation"] + 0.12 * e())
    v["resp_rate"] = np.clip(np.round(rr), 6, 50)
    fever = 0.30 * st["inflammation"] + 0.6 * np.maximum(st["inflammation"] - 1, 0)
    v["temperature"] = np.clip(np.round(36.8 + fever + 0.30 * e(), 1), 34, 42)
    weight = 76 * np.exp(0.09 * s - 0.05 * st["age_z"] + 0.20 * e()) + 3 * np.maximum(st["congestion"], 0)
    v["weight"] = np.clip(np.round(weight, 1), 30, 250)
    return v


def simulate_vitals(state: Mapping[str, np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Raw values of the seven vitals and their observed mask (:data:`~pacx.data.vitals.VITAL_NAMES` order).

    Args:
        state: latent state from :func:`~pacx.data.synthetic.sample_latent_state`.
        rng: numpy random generator (the cohort uses the vitals' own stream).

    Returns:
        ``values`` (N, 7) float64 in physical units (:data:`~pacx.data.vitals.VITAL_UNITS`),
        rounded to monitor precision, NaN where not charted, and ``observed`` (N, 7) int64
        (1 = observed).

    Example:
        >>> from pacx.data.synthetic import sample_latent_state
        >>> state = sample_latent_state(5, np.random.default_rng(0))
        >>> values, observed = simulate_vitals(state, np.random.default_rng(1))
        >>> values.shape, observed.dtype
        ((5, 7), dtype('int64'))
    """
    st = {k: np.asarray(v, dtype=np.float64) for k, v in state.items()}
    n = st["cardiac"].shape[0]
    columns = _values(st, lambda: rng.standard_normal(n))
    draws = rng.random((n, len(_CHARTED)))
    observed = np.zeros((n, len(VITAL_NAMES)), dtype=np.int64)
    for k, (measurement, (base, loadings)) in enumerate(_CHARTED.items()):
        logit = base + sum(w * st[name] for name, w in loadings.items())
        charted = draws[:, k] < 1.0 / (1.0 + np.exp(-logit))
        for name in _CHART_COLUMNS.get(measurement, (measurement,)):
            observed[:, VITAL_NAMES.index(name)] = charted
    values = np.stack([columns[name] for name in VITAL_NAMES], axis=1)
    values[observed == 0] = np.nan
    return values, observed
