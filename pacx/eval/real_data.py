"""Ready-made evaluation on the real Montgomery County TB sample (classification + lung segmentation).

:func:`evaluate_montgomery` loads the images and lung masks once
(:class:`pacx.data.ImageMaskDataset`), splits them by patient (seeded, stratified by the TB
label; one image per patient, the id is the file name without its label suffix), caches
each encoder's frozen features per split and runs, for every encoder:

* TB classification: linear probe on the class token (:func:`pacx.eval.probe_task`), AUROC
  and F1 with bootstrap CIs. The default probe settings are the reference's TB settings
  (AdamW, batch 32, lr 1e-3, 40 epochs), since the generic batch 512 would give a
  100-image training split a single step per epoch;
* lung segmentation: the decoder probe on cached patch tokens
  (:func:`pacx.eval.segmentation_probe`; 40 epochs, batch 16, lr 3e-3 by default), per-image
  Dice and IoU with bootstrap CIs;

and, with ``reference``, paired comparisons of every other encoder against it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer

from pacx.data import ImageMaskDataset, montgomery_label, montgomery_patient_id, patient_split
from pacx.eval.features import extract_features
from pacx.eval.linear_probe import compare, probe_task
from pacx.eval.segmentation import compare_segmentation, segmentation_probe

__all__ = ["MONTGOMERY_PROBE_DEFAULTS", "MONTGOMERY_SEG_DEFAULTS", "default_montgomery_dir", "evaluate_montgomery"]

MONTGOMERY_PROBE_DEFAULTS: dict[str, Any] = {"method": "adamw", "epochs": 40, "lr": 1e-3, "batch_size": 32}
# ~80 training images: batch 16 and lr 3e-3 give the decoder enough steps in 40 epochs.
MONTGOMERY_SEG_DEFAULTS: dict[str, Any] = {"epochs": 40, "lr": 3e-3, "batch_size": 16}
_SPLITS = ("train", "val", "test")


def default_montgomery_dir() -> Path:
    """``$PACX_SAMPLE_DATA/montgomery``, else ``<repo>/../shared/data/montgomery``."""
    root = os.environ.get("PACX_SAMPLE_DATA")
    base = Path(root) if root else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return base / "montgomery"


def _load_split_arrays(dataset: ImageMaskDataset, indices: np.ndarray) -> dict[str, Any]:
    items = [dataset[int(i)] for i in indices]
    return {
        "cxr": torch.stack([it["cxr"] for it in items]),
        "mask": torch.stack([it["mask"] for it in items]).numpy().astype(np.float32),
        "label": np.array([int(it["label"]) for it in items], dtype=np.int64),
        "files": [dataset.files[int(i)] for i in indices],
    }


def _patch_size(encoder: VisionTransformer) -> int:
    ps = encoder.patch_embed.patch_size
    return int(ps[0] if isinstance(ps, (tuple, list)) else ps)


def _encoder_features(
    encoder: VisionTransformer,
    arrays: Mapping[str, Mapping[str, Any]],
    image_size: int,
    cache_dir: str | os.PathLike | None,
    batch_size: int,
    device: str | torch.device | None,
) -> dict[str, dict[str, np.ndarray]]:
    """``{"token": {split: (N, D)}, "patch": {split: (N, L, D)}}`` of one encoder, cached per split."""
    feats: dict[str, dict[str, np.ndarray]] = {"token": {}, "patch": {}}
    for split in _SPLITS:
        key = hashlib.sha256(f"montgomery|{image_size}|{'|'.join(arrays[split]['files'])}".encode()).hexdigest()
        for pool in feats:
            feats[pool][split] = extract_features(
                encoder, arrays[split]["cxr"], cache_dir=cache_dir, pool=pool, batch_size=batch_size, device=device,
                dataset_key=key, key_extra="pacx.data.load_cxr ImageNet-normalised",
            )  # fmt: skip
    return feats


def _compare_to_reference(
    classification: Mapping[str, Any], segmentation: Mapping[str, Any], reference: str | None, n_resamples: int
) -> dict[str, dict[str, Any]]:
    """Paired comparisons ``"<name>_vs_<reference>"`` of every other encoder (none without the reference)."""
    comparisons: dict[str, dict[str, Any]] = {"classification": {}, "segmentation": {}}
    if reference is None or reference not in classification:
        return comparisons
    for name in classification:
        if name == reference:
            continue
        tag = f"{name}_vs_{reference}"
        comparisons["classification"][tag] = compare(
            classification[name], classification[reference], "auroc", n_resamples=n_resamples
        )
        comparisons["segmentation"][tag] = {
            m: compare_segmentation(segmentation[name], segmentation[reference], m, n_resamples=n_resamples)
            for m in ("dice", "iou")
        }
    return comparisons


def evaluate_montgomery(
    encoders: Mapping[str, VisionTransformer],
    data_dir: str | os.PathLike | None = None,
    image_size: int = 224,
    seeds: Sequence[int] = (0, 1, 2),
    cache_dir: str | os.PathLike | None = None,
    split_fractions: Sequence[float] = (0.6, 0.2, 0.2),
    split_seed: int = 0,
    probe_kwargs: Mapping[str, Any] | None = None,
    seg_kwargs: Mapping[str, Any] | None = None,
    reference: str | None = "mae",
    n_resamples: int = 1000,
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """TB classification and lung segmentation on Montgomery for several frozen encoders.

    Args:
        encoders: ``{name: timm VisionTransformer}`` (class token, ``num_classes=0``), all
            accepting ``image_size`` inputs.
        data_dir: folder with ``cxr/`` and ``masks/``; :func:`default_montgomery_dir` when omitted.
        image_size: side length images and masks are resized to.
        seeds: probe seeds (classification and segmentation).
        cache_dir: feature cache folder (``None``: no caching).
        split_fractions: patient-level train/val/test fractions.
        split_seed: seed of the patient split.
        probe_kwargs: overrides of :data:`MONTGOMERY_PROBE_DEFAULTS` for :func:`probe_task`
            (e.g. ``{"method": "lbfgs"}``).
        seg_kwargs: overrides of :data:`MONTGOMERY_SEG_DEFAULTS` for :func:`segmentation_probe`.
        reference: encoder the others are compared with (paired bootstrap); skipped when
            ``None`` or absent.
        n_resamples: bootstrap resamples for CIs and comparisons.
        batch_size: feature-extraction batch size.
        device: feature extraction and probe device (CPU by default).

    Returns:
        dict with ``data`` (sizes, split, settings), ``classification`` (``{name: probe_task
        result}``), ``segmentation`` (``{name: segmentation_probe result}``) and
        ``comparisons`` (``{"classification": {"A_vs_REF": ...}, "segmentation": {...}}``).

    Raises:
        ValueError: for no encoders, an encoder that does not take ``image_size`` inputs or
            a data folder without ``cxr/`` and ``masks/``.
        FileNotFoundError: when the data folder is missing.
    """
    if not encoders:
        raise ValueError("encoders must hold at least one encoder")
    for name, enc in encoders.items():
        size = tuple(getattr(enc.patch_embed, "img_size", (image_size, image_size)) or (image_size, image_size))
        if not getattr(enc, "dynamic_img_size", False) and size != (image_size, image_size):
            raise ValueError(f"encoder {name!r} expects {size} images but image_size={image_size}")
    root = Path(data_dir) if data_dir is not None else default_montgomery_dir()
    if not root.is_dir():
        raise FileNotFoundError(f"Montgomery folder not found: {root}")
    dataset = ImageMaskDataset(
        root / "cxr", root / "masks", image_size, label_fn=montgomery_label, patient_id_fn=montgomery_patient_id
    )
    labels_all = np.asarray(dataset.labels, dtype=np.int64)
    parts = patient_split(dataset.patient_ids, split_fractions, seed=split_seed, stratify=labels_all)
    split_idx = dict(zip(_SPLITS, parts))
    arrays = {s: _load_split_arrays(dataset, idx) for s, idx in split_idx.items()}
    probe_cfg = {**MONTGOMERY_PROBE_DEFAULTS, **dict(probe_kwargs or {})}
    seg_cfg = {**MONTGOMERY_SEG_DEFAULTS, **dict(seg_kwargs or {})}

    classification: dict[str, Any] = {}
    segmentation: dict[str, Any] = {}
    for name, enc in encoders.items():
        feats = _encoder_features(enc, arrays, image_size, cache_dir, batch_size, device)
        classification[name] = probe_task(
            feats["token"], {s: arrays[s]["label"] for s in _SPLITS}, "binary", seeds=seeds,
            n_resamples=n_resamples, device=device, **probe_cfg,
        )
        segmentation[name] = segmentation_probe(
            feats["patch"], {s: arrays[s]["mask"] for s in _SPLITS}, _patch_size(enc), seeds=seeds,
            n_resamples=n_resamples, device=device, **seg_cfg,
        )

    return {
        "data": {
            "data_dir": str(root),
            "image_size": int(image_size),
            "n_images": len(dataset),
            "n_tb": int(labels_all.sum()),
            "split_seed": int(split_seed),
            "split_fractions": [float(f) for f in split_fractions],
            **{f"n_{s}": int(len(split_idx[s])) for s in _SPLITS},
            **{f"files_{s}": arrays[s]["files"] for s in _SPLITS},
        },
        "classification": classification,
        "segmentation": segmentation,
        "comparisons": _compare_to_reference(classification, segmentation, reference, n_resamples),
    }
