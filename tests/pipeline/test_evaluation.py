"""The latent-state readout of Stage 3 (synthetic cohorts only)."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pacx.pipeline.evaluation import LATENT_READOUT_VARIABLES, PROBE_SPLITS, _latent_readout


def _context(root: Path, features: dict[str, dict[str, np.ndarray]], ids: dict[str, np.ndarray]):
    return SimpleNamespace(
        root=lambda split: root,
        dataset=lambda split: SimpleNamespace(hadm_ids=ids[split]),
        features=lambda name, split: features[name][split],
    )


def _write_latent(root: Path, split: str, ids: np.ndarray, values: dict[str, np.ndarray]) -> None:
    (root / "latent").mkdir(exist_ok=True)
    with (root / "latent" / f"{split}.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["hadm_id", *values])
        for i, hadm in enumerate(ids):
            writer.writerow([int(hadm), *(float(v[i]) for v in values.values())])


@pytest.fixture
def cohort(tmp_path):
    rng = np.random.default_rng(0)
    mix = rng.standard_normal((len(LATENT_READOUT_VARIABLES), 5))  # one encoder: the same map in every split
    ids, latent, features = {}, {}, {"reads": {}, "blind": {}}
    for k, split in PROBE_SPLITS.items():
        n = 300
        ids[split] = np.arange(n) + 1000 * len(ids)
        latent[split] = {v: rng.standard_normal(n) for v in LATENT_READOUT_VARIABLES}
        _write_latent(tmp_path, split, ids[split], latent[split])
        signal = np.stack([latent[split][v] for v in LATENT_READOUT_VARIABLES], axis=1)
        # "reads" holds every latent variable linearly (plus small noise); "blind" is pure noise.
        seen = signal @ mix + 0.05 * rng.standard_normal((n, 5))
        features["reads"][split] = np.hstack([seen, rng.standard_normal((n, 11))])
        features["blind"][split] = rng.standard_normal((n, 16))
    return tmp_path, features, ids


def test_readout_separates_an_encoder_that_sees_the_state(cohort):
    root, features, ids = cohort
    out = _latent_readout(_context(root, features, ids), ["reads", "blind"], pixels=False)
    assert set(out) == {"reads", "blind"} and set(out["reads"]) == set(LATENT_READOUT_VARIABLES)
    assert min(out["reads"].values()) > 0.95
    assert max(out["blind"].values()) < 0.1


def test_readout_is_empty_without_latent_files(tmp_path):
    ctx = _context(tmp_path, {}, {})
    assert _latent_readout(ctx, ["mae"], pixels=False) == {}


def test_readout_refuses_misordered_rows(cohort):
    root, features, ids = cohort
    ids = {**ids, "probe_test": ids["probe_test"][::-1].copy()}
    with pytest.raises(ValueError, match="hadm_id order"):
        _latent_readout(_context(root, features, ids), ["reads"], pixels=False)
