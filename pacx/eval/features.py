"""Frozen-encoder feature extraction with an on-disk cache.

The reference probes re-ran the frozen ViT over every image in every epoch. Here features
are computed once per (encoder weights, dataset, transform, pooling) and written under a
content key: every probe, seed and low-data subset then reads the same array. With
augmentation off this changes nothing in the result (the features are identical), only the
cost (see ``benchmarks/bench_linear_probe.py``).

The cache key hashes:

* the encoder's ``state_dict`` (names, dtypes, shapes and bytes), so any weight change,
  e.g. another checkpoint or merged LoRA, gives a new key;
* the dataset identity: its class, its length and a fingerprint, either supplied by the
  caller (``dataset_key``: a file list hash, a split name plus a cohort hash, ...) or computed
  by :func:`dataset_fingerprint` from the bytes of a few items *after* the dataset's
  transform (so a different resize or normalisation gives a new key);
* the pooling and any caller-supplied ``key_extra``.

Each entry is ``<cache_dir>/<key>.npy`` with a ``<key>.json`` sidecar describing it. The
device is not part of the key: features computed on a GPU and on a CPU agree only to float
tolerance (about 3e-4 for a small ViT in float32), and whichever was written first is served.
``pool="patch"`` stores the patch tokens (N, L, D) as float16, halving the space (a 224 px
ViT-B set of 10k images is 10k x 196 x 768 x 2 B = 3 GB); the segmentation probe casts them
back to float32. Pooled features are float32.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from pacx.io import atomic_write, save_json

__all__ = [
    "POOLS",
    "dataset_fingerprint",
    "encode_batch",
    "encoder_fingerprint",
    "extract_features",
    "feature_cache_key",
]

POOLS = ("token", "mean", "patch")
_FULL_HASH_BYTES = 256 * 2**20


class _ArrayImages(Dataset):
    """Wrap an (N, 3, S, S) array/tensor as a dataset of ``{"cxr": tensor}`` items."""

    def __init__(self, images: np.ndarray | torch.Tensor) -> None:
        self.images = torch.as_tensor(images)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"cxr": self.images[index].float()}


def _as_dataset(dataset: Dataset | np.ndarray | torch.Tensor) -> Dataset:
    if isinstance(dataset, (np.ndarray, torch.Tensor)):
        if dataset.ndim != 4:
            raise ValueError(f"an image array must have shape (N, C, H, W), got {tuple(dataset.shape)}")
        return _ArrayImages(dataset)
    if isinstance(dataset, TensorDataset):
        return _ArrayImages(dataset.tensors[0])
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise ValueError(f"dataset must be a map-style Dataset or an image array, got {type(dataset).__name__}")
    return dataset


def _image_of(item: Any, image_key: str) -> torch.Tensor:
    if isinstance(item, dict):
        if image_key not in item:
            raise ValueError(f"dataset items must contain {image_key!r}, got keys {sorted(item)}")
        image = item[image_key]
    else:
        image = item
    return torch.as_tensor(image)


def encoder_fingerprint(encoder: nn.Module) -> str:
    """SHA-256 of an encoder's ``state_dict`` (names, dtypes, shapes and bytes).

    Args:
        encoder: any module.

    Returns:
        A hex digest; equal weights give equal digests whatever the device.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # View as bytes so bfloat16 and friends hash without a numpy round trip.
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def dataset_fingerprint(
    dataset: Dataset | np.ndarray | torch.Tensor, num_items: int = 4, image_key: str = "cxr"
) -> str:
    """Fingerprint of a dataset from its class, length and the bytes of a few transformed items.

    Items are taken evenly from the whole dataset (first and last included); an in-memory
    image array up to 256 MiB is hashed whole. Hashing the *transformed* images makes the
    transform part of the identity. Datasets with random
    augmentation have no stable fingerprint: pass ``dataset_key`` to the extractor instead.

    Args:
        dataset: a map-style dataset of dicts with ``image_key``, or an image array.
        num_items: number of items hashed.
        image_key: the image entry of an item.

    Returns:
        A hex digest.
    """
    ds = _as_dataset(dataset)
    n = len(ds)
    digest = hashlib.sha256(f"{type(ds).__name__}|{n}|".encode())
    if isinstance(ds, _ArrayImages) and ds.images.numel() * ds.images.element_size() <= _FULL_HASH_BYTES:
        # A modest in-memory array is hashed whole; larger ones fall back to sampled items.
        digest.update(ds.images.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()
    picks = sorted({int(round(i)) for i in np.linspace(0, n - 1, num=min(num_items, n))}) if n else []
    for i in picks:
        image = _image_of(ds[i], image_key).detach().cpu().float().contiguous()
        digest.update(f"{i}|{tuple(image.shape)}|".encode())
        digest.update(image.numpy().tobytes())
    return digest.hexdigest()


def feature_cache_key(
    encoder: nn.Module,
    dataset: Dataset | np.ndarray | torch.Tensor,
    pool: str = "token",
    dataset_key: str | None = None,
    key_extra: str | None = None,
    image_key: str = "cxr",
) -> tuple[str, dict]:
    """Content key of a feature array and the metadata it is derived from.

    Args:
        encoder: the frozen encoder.
        dataset: the dataset.
        pool: ``"token"``, ``"mean"`` or ``"patch"``.
        dataset_key: caller-supplied identity of the dataset (file list hash, split name,
            ...); when omitted :func:`dataset_fingerprint` is used.
        key_extra: anything else that changes the features (e.g. a transform description).
        image_key: the image entry of an item.

    Returns:
        ``(key, metadata)``; the key is a 24-hex-digit prefix of SHA-256 over the metadata.
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    ds = _as_dataset(dataset)
    meta = {
        "encoder_sha256": encoder_fingerprint(encoder),
        "encoder_class": type(encoder).__name__,
        "dataset_class": type(ds).__name__,
        "dataset_len": len(ds),
        "dataset_key": dataset_key if dataset_key is not None else dataset_fingerprint(ds, image_key=image_key),
        "dataset_key_source": "caller" if dataset_key is not None else "fingerprint",
        "pool": pool,
        "key_extra": key_extra,
    }
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:24]
    return key, meta


def encode_batch(encoder: VisionTransformer, images: torch.Tensor, pool: str = "token") -> torch.Tensor:
    """Features of one batch from a timm ViT (after the final norm).

    Args:
        encoder: timm ``VisionTransformer``.
        images: (B, C, H, W).
        pool: ``"token"`` class token (the paper's probe feature), ``"mean"`` mean of the
            patch tokens, ``"patch"`` the patch tokens (B, L, D) without prefix tokens.

    Returns:
        (B, D) or (B, L, D).
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    tokens = encoder.forward_features(images)
    n_prefix = int(getattr(encoder, "num_prefix_tokens", 1))
    if pool == "token":
        if getattr(encoder, "cls_token", None) is None:
            raise ValueError("pool='token' needs an encoder with a class token; use pool='mean'")
        return tokens[:, 0]
    patches = tokens[:, n_prefix:]
    return patches.mean(dim=1) if pool == "mean" else patches


def _module_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _collate_images(image_key: str):
    def collate(items: Sequence[Any]) -> torch.Tensor:
        return torch.stack([_image_of(item, image_key).float() for item in items])

    return collate


def _compute(
    encoder: VisionTransformer,
    dataset: Dataset,
    pool: str,
    batch_size: int,
    device: torch.device,
    num_workers: int,
    image_key: str,
    progress: bool,
) -> np.ndarray:
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=_collate_images(image_key)
    )
    out_dtype = np.float16 if pool == "patch" else np.float32
    chunks: list[np.ndarray] = []
    iterator = loader
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(loader, desc=f"features[{pool}]", leave=False)
    with torch.inference_mode():
        for images in iterator:
            feats = encode_batch(encoder, images.to(device, non_blocking=True), pool)
            chunks.append(feats.float().cpu().numpy().astype(out_dtype, copy=False))
    if not chunks:
        raise ValueError("dataset is empty")
    return np.concatenate(chunks, axis=0)


def extract_features(
    encoder: VisionTransformer,
    dataset: Dataset | np.ndarray | torch.Tensor,
    cache_dir: str | os.PathLike | None = None,
    pool: str = "token",
    batch_size: int = 64,
    device: str | torch.device | None = None,
    key_extra: str | None = None,
    dataset_key: str | None = None,
    image_key: str = "cxr",
    num_workers: int = 0,
    progress: bool = False,
) -> np.ndarray:
    """Frozen features of a dataset, computed once and cached on disk.

    The encoder runs in eval mode without gradients; its training flag and device are
    restored afterwards. With ``cache_dir`` the result is looked up under the content key
    of :func:`feature_cache_key` and written there atomically when missing.

    Args:
        encoder: timm ``VisionTransformer`` (``num_classes=0``, class token).
        dataset: map-style dataset whose items are dicts with ``image_key`` (3, S, S), or an
            image array (N, 3, S, S).
        cache_dir: folder of the cache; ``None`` disables caching.
        pool: ``"token"`` (class token; the paper's probe), ``"mean"`` (mean patch token) or
            ``"patch"`` (patch tokens (N, L, D), stored and returned as float16).
        batch_size: images per forward pass.
        device: where to run; defaults to the encoder's device.
        key_extra: extra text folded into the key (e.g. a transform description).
        dataset_key: caller-supplied dataset identity (recommended for large datasets: the
            default fingerprint reads a few items).
        image_key: the image entry of an item.
        num_workers: DataLoader workers.
        progress: show a tqdm bar.

    Returns:
        float32 (N, D) for ``"token"``/``"mean"``; float16 (N, L, D) for ``"patch"``.

    Raises:
        ValueError: for an unknown pool, a non-positive batch size or a malformed dataset.

    Example:
        >>> vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0)
        >>> extract_features(vit, torch.randn(5, 3, 32, 32)).shape
        (5, 32)
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    ds = _as_dataset(dataset)
    if len(ds) == 0:
        raise ValueError("dataset is empty")

    path = meta = None
    if cache_dir is not None:
        key, meta = feature_cache_key(encoder, ds, pool, dataset_key, key_extra, image_key)
        path = Path(cache_dir) / f"{key}.npy"
        if path.exists() and path.with_suffix(".json").exists():
            return np.load(path)

    original_device = _module_device(encoder)
    target = torch.device(device) if device is not None else original_device
    was_training = encoder.training
    encoder.eval()
    encoder.to(target)
    try:
        feats = _compute(encoder, ds, pool, batch_size, target, num_workers, image_key, progress)
    finally:
        encoder.to(original_device)
        encoder.train(was_training)

    if path is not None:

        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, feats)

        atomic_write(path, write)
        save_json(
            {**meta, "shape": list(feats.shape), "dtype": str(feats.dtype), "created_unix": time.time()},
            path.with_suffix(".json"),
        )
    return feats
