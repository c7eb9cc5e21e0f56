"""Segmentation probe: a light decoder on frozen, cached patch tokens.

The patch tokens of a frozen ViT (``extract_features(..., pool="patch")``, float16) are
reshaped to a (D, h, w) grid and decoded by :class:`SegmentationDecoder`: a 3x3 convolution
to ``hidden_dim`` channels with ReLU, then ``log2(patch_size)`` stride-2 transposed
convolutions (channels halved each time, ReLU between them) back to the input resolution.
With patch 16 and ``hidden_dim=256`` this is the reference decoder (256-128-64-32-1).

Training uses MONAI ``DiceCELoss(sigmoid=True)`` (soft Dice + BCE, 1:1) with AdamW and a
per-step cosine schedule; the epoch with the best validation Dice is kept. Scores are
computed per image on ``sigmoid > threshold`` with MONAI ``DiceMetric`` / ``MeanIoU`` and
averaged over images (the reference pooled the pixels of a whole batch, which inflates
scores on large organs such as lungs), with a bootstrap CI over images. Per-image values are
returned for paired comparisons (:func:`compare_segmentation`).

Defaults differ from the reference (AdamW lr 1e-4, 50 epochs, batch 256, 5 warm-up
epochs), which assumed tens of thousands of images; small datasets need more steps per
epoch, so lr 1e-3 and batch 32 are the defaults here. Pass the reference values to
reproduce it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss
from torch import nn

from pacx.eval.metrics import (
    bootstrap_ci,
    dice_per_image,
    iou_per_image,
    mean_statistic,
    paired_bootstrap,
    seed_mean_std,
)

__all__ = ["SegmentationDecoder", "compare_segmentation", "segmentation_probe", "train_segmentation_probe"]


class SegmentationDecoder(nn.Module):
    """Conv3x3 + ReLU, then ``log2(patch_size)`` 2x transposed-conv upsamplings to full size.

    Args:
        embed_dim: token width D.
        patch_size: ViT patch size (a power of two >= 2); sets the number of upsamplings.
        hidden_dim: channels after the 3x3 convolution (reference: 256).
        out_channels: output logit channels.
        min_channels: floor of the halving channel schedule.

    Raises:
        ValueError: when ``patch_size`` is not a power of two or a size is not positive.

    Example:
        >>> dec = SegmentationDecoder(embed_dim=32, patch_size=8, hidden_dim=64)
        >>> dec(torch.randn(2, 16, 32)).shape  # 16 tokens = 4 x 4 grid
        torch.Size([2, 1, 32, 32])
    """

    def __init__(
        self, embed_dim: int, patch_size: int, hidden_dim: int = 256, out_channels: int = 1, min_channels: int = 16
    ) -> None:
        super().__init__()
        if embed_dim <= 0 or hidden_dim <= 0 or out_channels <= 0 or min_channels <= 0:
            raise ValueError(
                f"sizes must be positive, got embed_dim={embed_dim}, hidden_dim={hidden_dim}, "
                f"out_channels={out_channels}, min_channels={min_channels}"
            )
        if patch_size < 2 or patch_size & (patch_size - 1):
            raise ValueError(f"patch_size must be a power of two >= 2, got {patch_size}")
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.num_upsamplings = int(math.log2(patch_size))
        layers: list[nn.Module] = [nn.Conv2d(embed_dim, hidden_dim, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
        channels = hidden_dim
        for _ in range(self.num_upsamplings - 1):
            nxt = max(channels // 2, min_channels)
            layers += [nn.ConvTranspose2d(channels, nxt, kernel_size=2, stride=2), nn.ReLU(inplace=True)]
            channels = nxt
        layers.append(nn.ConvTranspose2d(channels, out_channels, kernel_size=2, stride=2))
        self.layers = nn.Sequential(*layers)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Decode tokens (B, L, D) on a square grid, or a feature map (B, D, h, w), to logits (B, out, h*p, w*p)."""
        if tokens.ndim == 3:
            b, length, d = tokens.shape
            side = math.isqrt(length)
            if side * side != length:
                raise ValueError(f"tokens (B, L, D) need a square number of tokens, got L={length}; pass (B, D, h, w)")
            tokens = tokens.transpose(1, 2).reshape(b, d, side, side)
        if tokens.ndim != 4 or tokens.shape[1] != self.embed_dim:
            d = self.embed_dim
            raise ValueError(f"expected (B, L, {d}) or (B, {d}, h, w), got {tuple(tokens.shape)}")
        return self.layers(tokens.float())


def _as_masks(masks: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    m = torch.as_tensor(np.asarray(masks.detach().cpu() if isinstance(masks, torch.Tensor) else masks)).float()
    if m.ndim == 3:
        m = m[:, None]
    if m.ndim != 4 or m.shape[1] != 1:
        raise ValueError(f"{name} must have shape (N, S, S) or (N, 1, S, S), got {tuple(m.shape)}")
    if not bool(((m == 0) | (m == 1)).all()):
        raise ValueError(f"{name} must be binary 0/1")
    return m


def _as_tokens(tokens: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(tokens.detach().cpu() if isinstance(tokens, torch.Tensor) else tokens))
    if t.ndim != 3 or t.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, L, D) with N > 0, got {tuple(t.shape)}")
    return t


@torch.no_grad()
def _predict(decoder: nn.Module, tokens: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    decoder.eval()
    out = [
        torch.sigmoid(decoder(tokens[i : i + batch_size].to(device).float())).cpu()
        for i in range(0, len(tokens), batch_size)
    ]
    return torch.cat(out)


def _scores(probs: torch.Tensor, masks: torch.Tensor, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    pred = (probs > threshold).float()
    return dice_per_image(pred, masks), iou_per_image(pred, masks)


def _dice_iou(dice: np.ndarray, iou: np.ndarray) -> dict[str, Any]:
    """Mean Dice and IoU over images (NaN-aware) next to the per-image values."""
    return {
        "dice": float(np.nanmean(dice)),
        "iou": float(np.nanmean(iou)),
        "dice_per_image": dice,
        "iou_per_image": iou,
    }


def _check_probe_inputs(
    tokens_by_split: Mapping[str, np.ndarray | torch.Tensor],
    masks_by_split: Mapping[str, np.ndarray | torch.Tensor],
    patch_size: int,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Tokens (N, L, D) and masks per split as tensors, checked against each other and ``patch_size``."""
    toks = {s: _as_tokens(t, f"{s}_tokens") for s, t in tokens_by_split.items()}
    masks = {s: _as_masks(m, f"{s}_masks") for s, m in masks_by_split.items()}
    dims = {t.shape[1:] for t in toks.values()}
    if len(dims) != 1:
        raise ValueError(f"token shapes (L, D) differ between splits: {sorted(map(tuple, dims))}")
    length = toks["train"].shape[1]
    side = math.isqrt(length)
    if side * side != length:
        raise ValueError(f"the number of patch tokens must be a square, got {length}")
    size = side * patch_size
    for s in toks:
        if len(toks[s]) != len(masks[s]):
            raise ValueError(f"{s}_tokens has {len(toks[s])} rows but {s}_masks has {len(masks[s])}")
        if tuple(masks[s].shape[-2:]) != (size, size):
            raise ValueError(
                f"{s}_masks must be {size}x{size} ({side} tokens x patch {patch_size}), "
                f"got {tuple(masks[s].shape[-2:])}"
            )
    return toks, masks


def train_segmentation_probe(
    train_tokens: np.ndarray | torch.Tensor,
    train_masks: np.ndarray | torch.Tensor,
    val_tokens: np.ndarray | torch.Tensor,
    val_masks: np.ndarray | torch.Tensor,
    test_tokens: np.ndarray | torch.Tensor,
    test_masks: np.ndarray | torch.Tensor,
    patch_size: int,
    seed: int = 0,
    epochs: int = 30,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 32,
    hidden_dim: int = 256,
    threshold: float = 0.5,
    device: str | torch.device | None = None,
    return_probs: bool = False,
) -> dict[str, Any]:
    """Train one decoder on frozen patch tokens and score it per image.

    Args:
        train_tokens: (N, L, D) patch tokens (float16 from the cache is fine).
        train_masks: (N, S, S) or (N, 1, S, S) binary masks with ``S = sqrt(L) * patch_size``.
        val_tokens: validation tokens (model selection on mean Dice).
        val_masks: validation masks.
        test_tokens: test tokens.
        test_masks: test masks.
        patch_size: the encoder's patch size.
        seed: decoder initialisation and shuffling.
        epochs: training epochs.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        batch_size: images per step.
        hidden_dim: decoder width after the first convolution.
        threshold: probability threshold of the binary prediction.
        device: where to train; CPU by default.
        return_probs: include the test probabilities (N, 1, S, S).

    Returns:
        dict with ``dice`` and ``iou`` (means over test images), ``dice_per_image``,
        ``iou_per_image``, ``val_dice_history``, ``selected_epoch`` and optionally ``test_probs``.

    Raises:
        ValueError: for inconsistent shapes or options.
    """
    if epochs <= 0 or batch_size <= 0:
        raise ValueError(f"epochs and batch_size must be positive, got {epochs} and {batch_size}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    toks, masks = _check_probe_inputs(
        {"train": train_tokens, "val": val_tokens, "test": test_tokens},
        {"train": train_masks, "val": val_masks, "test": test_masks},
        patch_size,
    )
    dev = torch.device(device) if device is not None else torch.device("cpu")
    with torch.random.fork_rng(devices=[]):  # seeded decoder init without touching the caller's RNG
        torch.manual_seed(int(seed))
        decoder = SegmentationDecoder(toks["train"].shape[2], patch_size, hidden_dim=hidden_dim).to(dev)
    loss_fn = DiceCELoss(sigmoid=True)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(toks["train"])
    steps = epochs * math.ceil(n / batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=0.0)
    gen = torch.Generator().manual_seed(int(seed) + 1)
    best_dice, best_epoch, best_state = -math.inf, -1, None
    history: list[float] = []
    for epoch in range(epochs):
        decoder.train()
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            logits = decoder(toks["train"][idx].to(dev).float())
            loss = loss_fn(logits, masks["train"][idx].to(dev))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        val_dice, _ = _scores(_predict(decoder, toks["val"], batch_size, dev), masks["val"], threshold)
        score = float(np.nanmean(val_dice)) if np.isfinite(val_dice).any() else -math.inf
        history.append(score)
        if best_state is None or score > best_dice:
            best_dice, best_epoch, best_state = score, epoch, copy.deepcopy(decoder.state_dict())
    decoder.load_state_dict(best_state)
    probs = _predict(decoder, toks["test"], batch_size, dev)
    dice, iou = _scores(probs, masks["test"], threshold)
    out: dict[str, Any] = {
        "seed": int(seed),
        **_dice_iou(dice, iou),
        "val_dice_history": history,
        "selected_epoch": best_epoch,
    }
    if return_probs:
        out["test_probs"] = probs.numpy()
    return out


def segmentation_probe(
    tokens_by_split: Mapping[str, np.ndarray],
    masks_by_split: Mapping[str, np.ndarray],
    patch_size: int,
    seeds: Sequence[int] = (0,),
    n_resamples: int = 1000,
    confidence_level: float = 0.95,
    ci_method: str = "percentile",
    bootstrap_seed: int = 0,
    **probe_kwargs: Any,
) -> dict[str, Any]:
    """Segmentation probe over seeds with per-image scores and bootstrap CIs over images.

    Args:
        tokens_by_split: ``{"train", "val", "test"}`` patch tokens (N, L, D).
        masks_by_split: masks for the same splits.
        patch_size: the encoder's patch size.
        seeds: one decoder per seed.
        n_resamples: bootstrap resamples (0 skips the CIs).
        confidence_level: of the CIs.
        ci_method: ``"percentile"`` or ``"BCa"``.
        bootstrap_seed: seed of the bootstrap.
        **probe_kwargs: passed to :func:`train_segmentation_probe`.

    Returns:
        dict with ``dice`` and ``iou`` (mean over test images of the per-image values
        averaged over seeds), ``dice_per_image`` / ``iou_per_image`` (seed averages, for
        paired comparison), ``ci`` (``{"dice": [lo, hi], "iou": [lo, hi]}``), ``per_seed``
        (``{"dice", "iou", "selected_epoch"}`` per seed), ``mean`` and ``std`` over seeds.
    """
    for split in ("train", "val", "test"):
        if split not in tokens_by_split or split not in masks_by_split:
            raise ValueError(f"tokens_by_split and masks_by_split need 'train', 'val' and 'test'; missing {split!r}")
    if not seeds:
        raise ValueError("seeds must not be empty")
    runs = [
        train_segmentation_probe(
            tokens_by_split["train"], masks_by_split["train"], tokens_by_split["val"], masks_by_split["val"],
            tokens_by_split["test"], masks_by_split["test"], patch_size, seed=int(s), **probe_kwargs,
        )
        for s in seeds
    ]
    dice = np.mean([r["dice_per_image"] for r in runs], axis=0)
    iou = np.mean([r["iou_per_image"] for r in runs], axis=0)
    ci: dict[str, list[float]] = {}
    if n_resamples:
        for name, values in (("dice", dice), ("iou", iou)):
            interval = bootstrap_ci(
                mean_statistic(values), len(values), n_resamples, confidence_level, ci_method, bootstrap_seed
            )
            ci[name] = list(interval)
    per_seed = [{"dice": r["dice"], "iou": r["iou"], "selected_epoch": r["selected_epoch"]} for r in runs]
    spread = {k: seed_mean_std([p[k] for p in per_seed]) for k in ("dice", "iou")}
    return {
        "seeds": [int(s) for s in seeds],
        **_dice_iou(dice, iou),
        "ci": ci,
        "confidence_level": confidence_level,
        "per_seed": per_seed,
        "mean": {k: mean for k, (mean, _) in spread.items()},
        "std": {k: std for k, (_, std) in spread.items()},
    }


def compare_segmentation(
    result_a: Mapping[str, Any],
    result_b: Mapping[str, Any],
    metric: str = "dice",
    n_resamples: int = 1000,
    confidence_level: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Paired bootstrap of the mean per-image ``metric`` difference (A - B) on the same test images.

    Args:
        result_a: :func:`segmentation_probe` result of encoder A.
        result_b: result of encoder B on the same test images.
        metric: ``"dice"`` or ``"iou"``.
        n_resamples: bootstrap resamples.
        confidence_level: of the interval of the difference.
        seed: bootstrap seed.

    Returns:
        dict with ``a``, ``b``, ``difference``, ``ci_low``, ``ci_high`` and ``p_value``.
    """
    if metric not in ("dice", "iou"):
        raise ValueError(f"metric must be 'dice' or 'iou', got {metric!r}")
    a = np.asarray(result_a[f"{metric}_per_image"], dtype=np.float64)
    b = np.asarray(result_b[f"{metric}_per_image"], dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"per-image values differ in length: {a.shape} and {b.shape}")
    return paired_bootstrap(mean_statistic(a), mean_statistic(b), len(a), n_resamples, confidence_level, seed=seed)
