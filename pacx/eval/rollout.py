"""Attention rollout for timm ViTs, and case selection with trained probes.

Attention rollout (Abnar & Zuidema 2020): for every block, average the attention
probabilities over heads, add the identity for the residual path, renormalise the rows and
multiply the layers together; the class-token row over the patch tokens is the map.

The probabilities are captured without patching timm: for the duration of the call each
block's ``attn.fused_attn`` is set to ``False`` so timm takes its explicit path
``softmax(q k^T * scale) -> attn_drop -> @ v``, and a forward hook on ``attn.attn_drop``
(identity in eval mode) records its input. Flags and hooks are restored in a ``finally``.

The reference selected its "rescue" cases with untrained random heads;
:func:`select_rescue_cases` takes the probabilities of the *trained* probes
(``probe_task(...)["test_probs"]``) instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

__all__ = ["attention_maps", "attention_rollout", "select_rescue_cases", "upsample_maps"]


def _check_vit(vit: VisionTransformer) -> None:
    blocks = getattr(vit, "blocks", None)
    if blocks is None or not all(hasattr(b, "attn") and hasattr(b.attn, "attn_drop") for b in blocks):
        raise ValueError(
            f"expected a timm VisionTransformer whose blocks have attn.attn_drop, got {type(vit).__name__}"
        )


@torch.no_grad()
def attention_maps(vit: VisionTransformer, images: torch.Tensor) -> list[torch.Tensor]:
    """Attention probabilities of every block.

    Args:
        vit: timm ``VisionTransformer``.
        images: (B, C, H, W) normalised as the encoder expects.

    Returns:
        One (B, heads, N, N) tensor per block, N including prefix tokens.

    Raises:
        ValueError: for a model without timm attention blocks or a wrong image rank.
    """
    _check_vit(vit)
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    captured: list[torch.Tensor] = []
    handles = []
    saved = [(blk.attn, getattr(blk.attn, "fused_attn", False)) for blk in vit.blocks]
    was_training = vit.training

    def hook(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        captured.append(inputs[0].detach())

    try:
        vit.eval()
        for attn, _ in saved:
            attn.fused_attn = False
            handles.append(attn.attn_drop.register_forward_hook(hook))
        vit.forward_features(images.to(next(vit.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
        for attn, fused in saved:
            attn.fused_attn = fused
        vit.train(was_training)
    if len(captured) != len(vit.blocks):
        raise RuntimeError(f"captured {len(captured)} attention maps for {len(vit.blocks)} blocks")
    return captured


@torch.no_grad()
def attention_rollout(
    vit: VisionTransformer, images: torch.Tensor, start_layer: int = 0, head_fusion: str = "mean"
) -> torch.Tensor:
    """Attention rollout maps from the class token to the patch grid.

    Args:
        vit: timm ``VisionTransformer`` with a class token.
        images: (B, C, H, W).
        start_layer: first block included (reference: 0, all blocks).
        head_fusion: ``"mean"`` (reference), ``"max"`` or ``"min"`` over heads.

    Returns:
        (B, h, w) float32 maps (each row of the rollout sums to one, so a map sums to at most 1).

    Raises:
        ValueError: for bad options or an encoder without class token.

    Example:
        >>> vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0)
        >>> attention_rollout(vit, torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 4, 4])
    """
    if head_fusion not in ("mean", "max", "min"):
        raise ValueError(f"head_fusion must be 'mean', 'max' or 'min', got {head_fusion!r}")
    if getattr(vit, "cls_token", None) is None:
        raise ValueError("attention_rollout needs a class token")
    maps = attention_maps(vit, images)
    if not 0 <= start_layer < len(maps):
        raise ValueError(f"start_layer must be in [0, {len(maps) - 1}], got {start_layer}")
    joint = None
    for attn in maps[start_layer:]:
        a = attn.float()
        a = a.mean(dim=1) if head_fusion == "mean" else a.amax(dim=1) if head_fusion == "max" else a.amin(dim=1)
        a = a + torch.eye(a.shape[-1], device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)
        joint = a if joint is None else a @ joint
    n_prefix = int(getattr(vit, "num_prefix_tokens", 1))
    cls_to_patches = joint[:, 0, n_prefix:]
    h, w = vit.patch_embed.grid_size if hasattr(vit.patch_embed, "grid_size") else (None, None)
    if h is None or h * w != cls_to_patches.shape[1]:
        side = int(round(cls_to_patches.shape[1] ** 0.5))
        h = w = side
    return cls_to_patches.reshape(-1, h, w).cpu()


def upsample_maps(maps: torch.Tensor | np.ndarray, size: int | Sequence[int], normalize: bool = True) -> np.ndarray:
    """Bilinearly upsample (B, h, w) maps to the image size, min-max normalised per image.

    Args:
        maps: (B, h, w) rollout maps.
        size: output size S or (H, W).
        normalize: rescale every map to [0, 1].

    Returns:
        float32 (B, H, W).
    """
    m = torch.as_tensor(np.asarray(maps) if not isinstance(maps, torch.Tensor) else maps).float()
    if m.ndim != 3:
        raise ValueError(f"maps must have shape (B, h, w), got {tuple(m.shape)}")
    hw = (int(size), int(size)) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
    up = F.interpolate(m[:, None], size=hw, mode="bilinear", align_corners=False)[:, 0]
    if normalize:
        lo = up.amin(dim=(1, 2), keepdim=True)
        hi = up.amax(dim=(1, 2), keepdim=True)
        up = (up - lo) / (hi - lo).clamp_min(1e-12)
    return up.numpy()


def select_rescue_cases(
    labels: np.ndarray | Sequence[int],
    probs_reference: np.ndarray,
    probs_candidate: np.ndarray,
    k: int = 3,
    candidate_threshold: float = 0.5,
    reference_threshold: float = 0.5,
) -> np.ndarray:
    """Test positives the candidate's trained probe finds and the reference's misses.

    A case qualifies when ``label == 1``, ``probs_candidate >= candidate_threshold`` and
    ``probs_reference < reference_threshold``; qualifying cases are ranked by the margin
    ``probs_candidate - probs_reference`` (largest first), so the choice is deterministic and
    shows the clearest disagreements rather than random ones.

    Args:
        labels: binary test labels (N,).
        probs_reference: trained-probe probabilities of the reference encoder (e.g. MAE), (N,).
        probs_candidate: trained-probe probabilities of the candidate (e.g. PaCX), (N,).
        k: maximum number of cases.
        candidate_threshold: confidence the candidate must reach (e.g. a tuned threshold).
        reference_threshold: the reference must stay below this.

    Returns:
        int64 indices (at most k).

    Raises:
        ValueError: for mismatched lengths or k < 1.
    """
    y = np.asarray(labels).reshape(-1)
    pr = np.asarray(probs_reference, dtype=np.float64).reshape(-1)
    pc = np.asarray(probs_candidate, dtype=np.float64).reshape(-1)
    if not (len(y) == len(pr) == len(pc)):
        raise ValueError(f"labels and probabilities must have the same length, got {len(y)}, {len(pr)}, {len(pc)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ok = np.flatnonzero((y == 1) & (pc >= candidate_threshold) & (pr < reference_threshold))
    order = np.argsort(-(pc[ok] - pr[ok]), kind="stable")
    return ok[order[:k]].astype(np.int64)
