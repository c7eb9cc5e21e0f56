"""The cohort writer: paired CXR/ECG/labs/vitals patients in the Symile-MIMIC layout, cached.

Random streams (``SeedSequence`` keys; no two parts share one, so adding a part never moves
an existing byte): ``(seed, 0)`` the latent state, labs, split assignment and ids, in that
order; ``(seed, 1, split, chunk)`` the CXR, ECG and ECG labels of each chunk of 256 patients;
``(seed, 4)`` the vitals. CXR-only corpora use ``(seed, 2, tag)`` and ``(seed, 3, tag, ...)``
(:mod:`pacx.data.synthetic.corpus`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pacx.constants import IMAGENET_MEAN, IMAGENET_STD
from pacx.data.vitals import VITAL_ITEMIDS, VITAL_NAMES, VITAL_UNITS

from ._common import check_image_size, check_positive_int, check_seed, take
from ._writing import (ChunkedArrays, build_into, content_hash, default_workers, map_bounded, params_hash,
                       read_parameters, sha256, to_csv)
from .cxr import imagenet_normalised, render_cxr
from .ecg import ECG_LABELS, ECG_SAMPLES, ECG_SAMPLING_RATE, MIMIC_ECG_LEADS, ecg_labels, simulate_ecg
from .labs import LAB_ITEMIDS, LAB_NAMES, labs_to_percentiles, simulate_labs
from .latent import LATENT_COLUMNS, TASKS, sample_latent_state
from .vitals import simulate_vitals

__all__ = ["COHORT_VERSION", "DEFAULT_SPLIT_FRACTIONS", "SPLITS", "make_cohort"]

# Bumped whenever a change alters the generated files: it is part of the cache key, so an old
# cache is never mistaken for the output of a newer generator. 1.1.0 added the vitals (every
# 1.0.0 array is unchanged, byte for byte).
COHORT_VERSION = "1.1.0"

SPLITS: tuple[str, ...] = ("train", "val", "test", "probe_train", "probe_val", "probe_test")
DEFAULT_SPLIT_FRACTIONS: dict[str, float] = {
    "train": 0.50,
    "val": 0.05,
    "test": 0.10,
    "probe_train": 0.15,
    "probe_val": 0.05,
    "probe_test": 0.15,
}

# Patients are rendered and written in chunks of this size: it bounds memory and, being a fixed
# constant, keeps the per-chunk random streams (and hence the bytes) independent of the machine.
CHUNK = 256
_VITALS_STREAM = 4  # the vitals' SeedSequence key (seed, 4): used by nothing else
# Per-patient values kept from rendering for latent/<split>.csv (analysis only).
_CHUNK_INFO_KEYS = ("ctr", "device", "nodule_radius_px", "hr", "qrs_ms", "axis_deg", "st_mv", "sokolow_mv")


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
    n_patients = check_positive_int("n_patients", n_patients)
    image_size = check_image_size(image_size)
    seed = check_seed(seed)
    num_workers = default_workers() if num_workers is None else check_positive_int("num_workers", num_workers)
    fractions = _normalise_fractions(split_fractions)
    sizes = _split_sizes(n_patients, fractions)
    if min(sizes.values()) < 1:
        raise ValueError(f"n_patients={n_patients} leaves an empty split with these fractions: {sizes}")
    params = {"version": COHORT_VERSION, "n_patients": n_patients, "image_size": image_size, "seed": seed,
              "split_fractions": {k: fractions[k] for k in SPLITS}}

    root = Path(root)
    own = read_parameters(root)
    if own is not None:  # ``root`` is itself a cohort folder
        if own != params:
            raise ValueError(
                f"root {root} is itself a cohort with different parameters ({own}); pass the folder "
                "that holds cohorts instead"
            )
        if not force:
            return root
        target = root
    else:
        target = root / f"cohort_{params_hash(params)}"
        if not force and read_parameters(target) == params:
            return target

    return build_into(target, params, force, lambda tmp: _generate(tmp, params, sizes, num_workers))


def _render_chunk(sub: Mapping[str, np.ndarray], size: int, key: tuple[int, ...]) -> dict:
    """CXR, lung mask, ECG and ECG labels of one chunk of patients, from its own random stream."""
    rng = np.random.default_rng(np.random.SeedSequence(list(key)))
    img, lung, info = render_cxr(sub, size, rng)
    ecg, ecg_params = simulate_ecg(sub, rng)
    labels = ecg_labels(ecg_params, rng)
    rows = {k: (info[k] if k in info else ecg_params[k]) for k in _CHUNK_INFO_KEYS}
    return {"cxr": imagenet_normalised(img), "ecg": np.ascontiguousarray(ecg[:, None]), "lung": lung,
            "labels": labels, "info": rows}


def _draw_cohort(params: Mapping, sizes: Mapping[str, int]) -> dict:
    """Everything drawn per cohort rather than per chunk: state, labs, splits, ids, vitals."""
    seed, n = params["seed"], params["n_patients"]
    master = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    state = sample_latent_state(n, master)
    raw_labs, labs_observed = simulate_labs(state, master)
    order = master.permutation(n)
    split_index: dict[str, np.ndarray] = {}
    offset = 0
    for split in SPLITS:
        split_index[split] = np.sort(order[offset : offset + sizes[split]])
        offset += sizes[split]
    hadm_ids = 20_000_000 + master.permutation(n).astype(np.int64)
    raw_vitals, vitals_observed = simulate_vitals(
        state, np.random.default_rng(np.random.SeedSequence([seed, _VITALS_STREAM]))
    )
    train = split_index["train"]
    labs_pct, labs_means = labs_to_percentiles(raw_labs, raw_labs[train])
    vitals_pct, vitals_means = labs_to_percentiles(raw_vitals, raw_vitals[train])
    return {
        "state": state, "split_index": split_index, "hadm_ids": hadm_ids,
        "subject_ids": 10_000_000 + np.arange(n, dtype=np.int64),
        "labs": (labs_pct, labs_observed, labs_means), "vitals": (vitals_pct, vitals_observed, vitals_means),
        "raw_vitals": raw_vitals,
    }


def _render_split(out: Path, split: str, s_code: int, sub: Mapping[str, np.ndarray], params: Mapping,
                  num_workers: int) -> tuple[dict[str, str], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Stream the chunked arrays of one split; returns their digests, ECG labels and latent rows."""
    m, size = int(sub["cardiac"].shape[0]), params["image_size"]
    specs = {
        f"data_npy/{split}/cxr_{split}.npy": (np.float32, (m, 3, size, size), "cxr"),
        f"data_npy/{split}/ecg_{split}.npy": (np.float32, (m, 1, ECG_SAMPLES, 12), "ecg"),
        f"tasks/lung_mask_{split}.npy": (np.uint8, (m, size, size), "lung"),
    }
    labels = {k: np.zeros(m, np.int64) for k in ECG_LABELS}
    latent_rows = {k: np.zeros(m, np.float32) for k in _CHUNK_INFO_KEYS}
    bounds = [(lo, min(lo + CHUNK, m)) for lo in range(0, m, CHUNK)]
    jobs = ((take(sub, slice(lo, hi)), size, (params["seed"], 1, s_code, c)) for c, (lo, hi) in enumerate(bounds))
    with ChunkedArrays({key: (out / rel, dtype, shape) for rel, (dtype, shape, key) in specs.items()}) as arrays:
        for (lo, hi), chunk in zip(bounds, map_bounded(_render_chunk, jobs, num_workers)):
            for k in ECG_LABELS:
                labels[k][lo:hi] = chunk["labels"][k]
            for k in latent_rows:
                latent_rows[k][lo:hi] = chunk["info"][k]
            arrays.write(chunk)
    digests = arrays.digests()
    return {rel: digests[key] for rel, (_, _, key) in specs.items()}, labels, latent_rows


def _write_tables(out: Path, split: str, idx: np.ndarray, draws: Mapping, labels: Mapping[str, np.ndarray],
                  latent_rows: Mapping[str, np.ndarray]) -> tuple[dict[str, str], dict[str, float]]:
    """The per-patient arrays, task CSV and latent CSV of one split; returns digests, prevalence."""
    state, hadm = draws["state"], draws["hadm_ids"][idx]
    small = {
        f"labs_percentiles_{split}.npy": draws["labs"][0][idx].astype(np.float32),
        f"labs_missingness_{split}.npy": draws["labs"][1][idx].astype(np.int64),
        f"hadm_id_{split}.npy": hadm,
        f"vitals_{split}.npy": draws["vitals"][0][idx].astype(np.float32),
        f"vitals_observed_{split}.npy": draws["vitals"][1][idx].astype(np.int64),
        f"vitals_raw_{split}.npy": draws["raw_vitals"][idx].astype(np.float32),
    }
    hashes: dict[str, str] = {}
    for name, arr in small.items():
        np.save(out / "data_npy" / split / name, arr)
        hashes[f"data_npy/{split}/{name}"] = sha256(arr.tobytes())
    columns = {"hadm_id": hadm, "subject_id": draws["subject_ids"][idx],
               **{task: state[task][idx].astype(np.int64) for task in TASKS}, **labels}
    csv_text = to_csv(columns)
    (out / "tasks" / f"{split}.csv").write_text(csv_text, encoding="utf-8")
    hashes[f"tasks/{split}.csv"] = sha256(csv_text.encode())
    latent = {"hadm_id": hadm, **{k: state[k][idx] for k in LATENT_COLUMNS}, **latent_rows}
    (out / "latent" / f"{split}.csv").write_text(to_csv(latent), encoding="utf-8")
    return hashes, {k: round(float(columns[k].mean()), 4) for k in [*TASKS, *ECG_LABELS]}


def _generate(out: Path, params: Mapping, sizes: Mapping[str, int], num_workers: int) -> None:
    """Write a complete cohort into ``out`` (an empty folder)."""
    start = time.perf_counter()
    draws = _draw_cohort(params, sizes)
    (out / "tasks").mkdir(parents=True)
    (out / "latent").mkdir()
    labs_means = {f"{itemid}_percentile": float(draws["labs"][2][j]) for j, itemid in enumerate(LAB_ITEMIDS)}
    (out / "labs_means.json").write_text(json.dumps(labs_means, indent=2) + "\n", encoding="utf-8")
    hashes: dict[str, str] = {}
    prevalence: dict[str, dict[str, float]] = {}
    for s_code, split in enumerate(SPLITS):
        idx = draws["split_index"][split]
        (out / "data_npy" / split).mkdir(parents=True)
        chunk_hashes, labels, latent_rows = _render_split(
            out, split, s_code, take(draws["state"], idx), params, num_workers
        )
        hashes.update(chunk_hashes)
        table_hashes, prevalence[split] = _write_tables(out, split, idx, draws, labels, latent_rows)
        hashes.update(table_hashes)
    meta = _metadata(params, sizes, hashes, prevalence, draws)
    meta["generation_seconds"] = round(time.perf_counter() - start, 3)
    meta["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    (out / "cohort.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _metadata(params: Mapping, sizes: Mapping[str, int], hashes: Mapping[str, str],
              prevalence: Mapping[str, Mapping[str, float]], draws: Mapping) -> dict:
    """The ``cohort.json`` content (timing and creation date are added by the caller)."""
    vitals_observed, vitals_means = draws["vitals"][1], draws["vitals"][2]
    return {
        "format": "pacx-synthetic-cohort",
        "version": COHORT_VERSION,
        "parameters": dict(params),
        "params_hash": params_hash(params),
        "content_hash": content_hash(hashes),
        "file_hashes": dict(hashes),
        "splits": {k: int(v) for k, v in sizes.items()},
        "tasks": {k: dict(v) for k, v in TASKS.items()},
        "segmentation": {"lung": {"kind": "anatomy", "mask": "tasks/lung_mask_{split}.npy"}},
        "ecg_labels": list(ECG_LABELS),
        "ecg": {"sampling_rate": ECG_SAMPLING_RATE, "samples": ECG_SAMPLES, "leads": list(MIMIC_ECG_LEADS),
                "scaling": "global per-record min-max to [-1, 1]"},
        "cxr": {"image_size": params["image_size"], "channels": 3, "normalisation": "imagenet",
                "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "labs": {"itemids": list(LAB_ITEMIDS), "names": list(LAB_NAMES),
                 "observed_fraction": round(float(draws["labs"][1].mean()), 4)},
        "vitals": {
            "names": list(VITAL_NAMES), "units": list(VITAL_UNITS), "itemids": list(VITAL_ITEMIDS),
            "values": "data_npy/{split}/vitals_{split}.npy: train-split percentiles in [0, 1], missing = "
                      "train mean percentile",
            "observed": "data_npy/{split}/vitals_observed_{split}.npy: 1 = observed",
            "raw": "data_npy/{split}/vitals_raw_{split}.npy: physical units, NaN = missing",
            "train_mean_percentile": {name: float(m) for name, m in zip(VITAL_NAMES, vitals_means)},
            "observed_fraction": {name: round(float(f), 4) for name, f in zip(VITAL_NAMES, vitals_observed.mean(0))},
        },
        "prevalence": dict(prevalence),
        "latent": "latent/{split}.csv: ground-truth state for analysis only; never read by training",
    }
