"""CXR-only corpora of the cohort's generator: large probe sets and the Stage-1 prior's corpus."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pacx.constants import IMAGENET_MEAN, IMAGENET_STD

from ._common import check_image_size, check_positive_int, check_seed, take
from ._writing import (ChunkedArrays, build_into, content_hash, default_workers, map_bounded, params_hash,
                       read_parameters, sha256, to_csv)
from .cohort import CHUNK, COHORT_VERSION
from .cxr import imagenet_normalised, render_cxr
from .latent import LATENT_COLUMNS, TASKS, sample_latent_state

__all__ = ["CORPUS_KINDS", "make_cxr_corpus"]

# Random-stream tags and patient-id ranges of the CXR-only corpora. Cohorts draw from the
# streams (seed, 0), (seed, 1, ...) and (seed, 4); a corpus draws from (seed, 2, tag) and
# (seed, 3, tag, ...), so a corpus never repeats a cohort's patients, and its ``hadm_id``s lie
# in a range of its own.
CORPUS_KINDS: dict[str, dict[str, int]] = {
    "probe": {"tag": 1, "hadm_base": 30_000_000},
    "prior": {"tag": 2, "hadm_base": 40_000_000},
}
_INFO_KEYS = ("ctr", "device", "nodule_radius_px")


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
    No ECG, labs or vitals are simulated. Caching, atomic writing and determinism are as for
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
    sizes = {str(k): check_positive_int(f"split_sizes[{k!r}]", v) for k, v in split_sizes.items()}
    params = {"version": COHORT_VERSION, "kind": kind, "split_sizes": sizes, "image_size": check_image_size(image_size),
              "seed": check_seed(seed)}
    num_workers = default_workers() if num_workers is None else check_positive_int("num_workers", num_workers)
    root = Path(root)
    target = root / f"corpus_{params_hash(params)}"
    if not force and read_parameters(target) == params:
        return target
    return build_into(target, params, force, lambda tmp: _generate_corpus(tmp, params, num_workers))


def _render_cxr_chunk(sub: Mapping[str, np.ndarray], size: int, key: tuple[int, ...]) -> dict:
    rng = np.random.default_rng(np.random.SeedSequence(list(key)))
    img, lung, info = render_cxr(sub, size, rng)
    return {"cxr": imagenet_normalised(img), "lung": lung, "info": {k: info[k] for k in _INFO_KEYS}}


def _write_corpus_split(out: Path, split: str, s_code: int, idx: np.ndarray, state: Mapping[str, np.ndarray],
                        params: Mapping, num_workers: int) -> dict[str, str]:
    """Images, masks, ids, labels and latent rows of one split; returns the recorded digests."""
    seed, size, m = params["seed"], params["image_size"], idx.size
    tag, hadm_base = CORPUS_KINDS[params["kind"]]["tag"], CORPUS_KINDS[params["kind"]]["hadm_base"]
    folder = out / "data_npy" / split
    folder.mkdir(parents=True)
    specs = {"cxr": (folder / f"cxr_{split}.npy", np.float32, (m, 3, size, size)),
             "lung": (out / "tasks" / f"lung_mask_{split}.npy", np.uint8, (m, size, size))}
    info_rows = {k: np.zeros(m, np.float32) for k in _INFO_KEYS}
    bounds = [(lo, min(lo + CHUNK, m)) for lo in range(0, m, CHUNK)]
    jobs = ((take(state, idx[lo:hi]), size, (seed, 3, tag, s_code, c)) for c, (lo, hi) in enumerate(bounds))
    with ChunkedArrays(specs) as arrays:
        for (lo, hi), chunk in zip(bounds, map_bounded(_render_cxr_chunk, jobs, num_workers)):
            for k in info_rows:
                info_rows[k][lo:hi] = chunk["info"][k]
            arrays.write(chunk)
    digests = arrays.digests()
    hadm = hadm_base + idx.astype(np.int64)
    np.save(folder / f"hadm_id_{split}.npy", hadm)
    columns: dict[str, np.ndarray] = {"hadm_id": hadm, "subject_id": hadm - hadm_base + 10 * hadm_base}
    columns.update({task: state[task][idx].astype(np.int64) for task in TASKS})
    (out / "tasks" / f"{split}.csv").write_text(to_csv(columns), encoding="utf-8")
    latent = {"hadm_id": hadm, **{k: state[k][idx] for k in LATENT_COLUMNS}, **info_rows}
    (out / "latent" / f"{split}.csv").write_text(to_csv(latent), encoding="utf-8")
    return {f"data_npy/{split}/cxr_{split}.npy": digests["cxr"], f"tasks/lung_mask_{split}.npy": digests["lung"],
            f"data_npy/{split}/hadm_id_{split}.npy": sha256(hadm.tobytes())}


def _generate_corpus(out: Path, params: Mapping, num_workers: int) -> None:
    start = time.perf_counter()
    sizes = params["split_sizes"]
    master = np.random.default_rng(np.random.SeedSequence([params["seed"], 2, CORPUS_KINDS[params["kind"]]["tag"]]))
    state = sample_latent_state(sum(sizes.values()), master)
    (out / "tasks").mkdir(parents=True)
    (out / "latent").mkdir()
    hashes: dict[str, str] = {}
    offset = 0
    for s_code, (split, m) in enumerate(sizes.items()):
        hashes.update(_write_corpus_split(out, split, s_code, np.arange(offset, offset + m), state, params,
                                          num_workers))
        offset += m
    meta = {
        "format": "pacx-synthetic-cxr-corpus",
        "version": COHORT_VERSION,
        "parameters": dict(params),
        "params_hash": params_hash(params),
        "content_hash": content_hash(hashes),
        "file_hashes": hashes,
        "splits": dict(sizes),
        "tasks": {k: dict(v) for k, v in TASKS.items()},
        "segmentation": {"lung": {"kind": "anatomy", "mask": "tasks/lung_mask_{split}.npy"}},
        "cxr": {"image_size": params["image_size"], "channels": 3, "normalisation": "imagenet",
                "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "generation_seconds": round(time.perf_counter() - start, 3),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (out / "cohort.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
