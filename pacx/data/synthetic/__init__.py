"""A synthetic, fully controlled cohort of paired chest X-rays, 12-lead ECGs, 50 labs and 7 vitals.

Real paired CXR/ECG/lab data (Symile-MIMIC) are credentialed, so pacx ships this generator as
its default data source: the whole pipeline (MAE, teachers, distillation, probes) runs on a CPU
on it. The cohort makes the PaCX-MAE premise true *by construction and nothing more*:

* every patient has a latent physiological state (cardiac dysfunction, hypertrophy, conduction
  disease, ischaemia, renal dysfunction, congestion, inflammation, ...) linked by documented
  structural equations (:mod:`.latent`);
* the ECG (:mod:`.ecg`), the labs (:mod:`.labs`) and the bedside vitals (:mod:`.vitals`) are
  noisy, partial but fairly direct views of that state;
* the chest X-ray (:mod:`.cxr`) shows it only through subtle cues (cardiothoracic ratio,
  costophrenic blunting, perihilar haze), while nuisance (position, rotation, scale, exposure,
  habitus, noise, devices) carries most of the pixel variance;
* anatomy (lung fields, a local nodule) is independent of physiology.

The arrays are written in the Symile-MIMIC on-disk layout (``data_npy/<split>/...``) of the
pacx contract by :mod:`.cohort` (CXR-only corpora: :mod:`.corpus`), so the same readers serve
real and synthetic data. The generative equations are documented in
``docs/synthetic_cohort.md``.

Example:
    >>> from pacx.data.synthetic import make_cohort
    >>> root = make_cohort("/tmp/pacx_cohorts", n_patients=400, image_size=32, seed=0)  # doctest: +SKIP
    >>> sorted(p.name for p in (root / "data_npy").iterdir())  # doctest: +SKIP
    ['probe_test', 'probe_train', 'probe_val', 'test', 'train', 'val']
"""

from .cli import main
from .cohort import COHORT_VERSION, DEFAULT_SPLIT_FRACTIONS, SPLITS, make_cohort
from .corpus import CORPUS_KINDS, make_cxr_corpus
from .cxr import render_cxr
from .ecg import ECG_LABELS, ECG_SAMPLES, ECG_SAMPLING_RATE, MIMIC_ECG_LEADS, simulate_ecg
from .figures import plot_sample_patients
from .labs import LAB_ITEMIDS, LAB_NAMES, labs_to_percentiles, simulate_labs
from .latent import TASKS, sample_latent_state
from .vitals import simulate_vitals

__all__ = [
    "COHORT_VERSION",
    "CORPUS_KINDS",
    "DEFAULT_SPLIT_FRACTIONS",
    "ECG_LABELS",
    "ECG_SAMPLES",
    "ECG_SAMPLING_RATE",
    "LAB_ITEMIDS",
    "LAB_NAMES",
    "MIMIC_ECG_LEADS",
    "SPLITS",
    "TASKS",
    "labs_to_percentiles",
    "main",
    "make_cohort",
    "make_cxr_corpus",
    "plot_sample_patients",
    "render_cxr",
    "sample_latent_state",
    "simulate_ecg",
    "simulate_labs",
    "simulate_vitals",
]
