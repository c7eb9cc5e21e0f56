"""Analytic FLOP counts of the pacx ViTs, for model FLOP utilisation (MFU).

Convention (PaLM / nanoGPT style "model FLOPs"): only matrix multiplications count, at 2 FLOPs
per multiply-add; LayerNorm, softmax, GELU, bias adds and the optimiser are left out, and
nothing is counted twice for activation recomputation. Per transformer block on ``n`` tokens of
width ``d`` with MLP ratio ``m``:

* weight matmuls (qkv, proj, fc1, fc2): ``2 * n * (3d^2 + d^2 + 2 m d^2)``;
* attention (``Q K^T`` and ``A V``): ``4 * n^2 * d``.

The MAE encoder runs its patch embedding on all ``L`` patches (masking happens after it, so
the positional embedding is added first) and its blocks on the ``1 + keep`` visible tokens;
the decoder embeds the ``1 + keep`` tokens and runs its blocks and prediction layer on all
``1 + L`` tokens.

Backward: a weight matmul costs 2x its forward (input gradient + weight gradient), or 1x when
the weight is frozen (input gradient only); an activation-activation matmul (attention) costs
2x its forward whenever anything before it needs a gradient. The patch embedding of a frozen
student gets no backward at all (its input, the image, needs no gradient). So a full training
step of the MAE is ~3x its forward, and a LoRA step on a frozen ViT is ~2x (plus 3x on the
small adapter and head matmuls).

MFU = counted FLOPs per second / the card's dense bf16 peak. Peaks are the vendor's dense
(not 2:4 sparse) tensor-core numbers; override with ``--peak-tflops``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "FlopCount",
    "PEAK_BF16_TFLOPS",
    "distiller_flops",
    "lookup_peak_tflops",
    "mae_encoder_flops",
    "mae_flops",
    "mfu",
    "vit_blocks_flops",
    "vit_flops",
]

# (substring of torch.cuda.get_device_name, dense bf16 TFLOP/s); first match wins, so the
# specific H100 variants come before the generic "H100" (SXM).
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)


@dataclass(frozen=True)
class FlopCount:
    """Forward FLOPs of one batch, split by how their backward is counted.

    Attributes:
        linear: weight matmuls (transformer blocks, heads, adapters, decoder embed/pred).
        attention: activation-activation matmuls (``Q K^T``, ``A V``).
        patch_embed: the patch-embedding convolution (a matmul per patch).
    """

    linear: float = 0.0
    attention: float = 0.0
    patch_embed: float = 0.0

    def __add__(self, other: FlopCount) -> FlopCount:
        return FlopCount(self.linear + other.linear, self.attention + other.attention,
                         self.patch_embed + other.patch_embed)

    @property
    def forward(self) -> float:
        """Forward FLOPs."""
        return self.linear + self.attention + self.patch_embed

    def training(self, frozen_weights: bool = False) -> float:
        """Forward + backward FLOPs.

        Args:
            frozen_weights: the weights get no gradient (a frozen base under LoRA): weight
                matmuls then cost 1x backward and the patch embedding none.
        """
        if frozen_weights:
            return self.forward + self.linear + 2.0 * self.attention
        return self.forward + 2.0 * self.linear + 2.0 * self.attention + self.patch_embed


def vit_blocks_flops(batch: int, tokens: int, dim: int, depth: int, mlp_ratio: float) -> FlopCount:
    """Forward FLOPs of ``depth`` pre-norm ViT blocks on ``tokens`` tokens of width ``dim``."""
    hidden = int(dim * mlp_ratio)
    per_token = 2.0 * (3 * dim * dim + dim * dim + 2 * dim * hidden)
    linear = batch * depth * tokens * per_token
    attention = batch * depth * 4.0 * tokens * tokens * dim
    return FlopCount(linear=linear, attention=attention)


def _mlp_ratio(block: nn.Module) -> float:
    fc1 = block.mlp.fc1
    fc1 = getattr(fc1, "base_layer", fc1)  # a LoRALinear keeps the original layer there
    return fc1.out_features / fc1.in_features


def vit_flops(vit: nn.Module, batch: int, image_size: int | None = None) -> FlopCount:
    """Forward FLOPs of a timm ``VisionTransformer`` on all tokens (inference / Stage 2)."""
    pe = vit.patch_embed
    size = image_size or pe.img_size[0]
    patch = pe.patch_size[0]
    in_chans = pe.proj.in_channels
    patches = (size // patch) ** 2
    tokens = patches + getattr(vit, "num_prefix_tokens", 1)
    dim = vit.embed_dim
    count = vit_blocks_flops(batch, tokens, dim, len(vit.blocks), _mlp_ratio(vit.blocks[0]))
    return count + FlopCount(patch_embed=2.0 * batch * patches * patch * patch * in_chans * dim)


def mae_flops(mae: nn.Module, batch: int, mask_ratio: float) -> FlopCount:
    """Forward FLOPs of one :class:`pacx.nets.MaskedAutoencoderViT` training forward."""
    cfg = mae.config
    L, p, c = mae.num_patches, mae.patch_size, mae.in_chans
    keep = mae.num_visible(mask_ratio)
    d, dd = cfg["embed_dim"], cfg["decoder_embed_dim"]
    encoder = vit_blocks_flops(batch, 1 + keep, d, cfg["depth"], cfg["mlp_ratio"])
    encoder = encoder + FlopCount(patch_embed=2.0 * batch * L * p * p * c * d)
    decoder = vit_blocks_flops(batch, 1 + L, dd, cfg["decoder_depth"], cfg["mlp_ratio"])
    embed_pred = 2.0 * batch * ((1 + keep) * d * dd + (1 + L) * dd * p * p * c)
    return encoder + decoder + FlopCount(linear=embed_pred)


def mae_encoder_flops(mae: nn.Module, batch: int, mask_ratio: float) -> FlopCount:
    """Forward FLOPs of the MAE encoder alone on the visible tokens (patch embedding included)."""
    cfg = mae.config
    keep = mae.num_visible(mask_ratio)
    count = vit_blocks_flops(batch, 1 + keep, cfg["embed_dim"], cfg["depth"], cfg["mlp_ratio"])
    return count + FlopCount(patch_embed=2.0 * batch * mae.num_patches * mae.patch_size**2 * mae.in_chans * cfg["embed_dim"])


def distiller_flops(distiller: nn.Module, batch: int) -> float:
    """Training FLOPs of one PaCXDistiller step: frozen ViT (2x fwd) + trainable adapters and heads (3x fwd).

    LoRA adapters add ``2 * r * (in + out)`` per token per wrapped layer; heads and the InfoNCE
    logits (``2 * B * B * shared_dim`` per teacher, both directions share one matrix) are counted
    as trainable matmuls.
    """
    from pacx.adapters import LoRALinear

    vit = distiller.student
    frozen = vit_flops(vit, batch)
    tokens = (vit.patch_embed.img_size[0] // vit.patch_embed.patch_size[0]) ** 2 + getattr(vit, "num_prefix_tokens", 1)
    adapters = sum(2.0 * m.r * (m.in_features + m.out_features) for m in vit.modules() if isinstance(m, LoRALinear))
    trainable = adapters * batch * tokens
    for head in list(distiller.proj.values()) + list(distiller.regress.values()):
        for layer in head.modules():
            if isinstance(layer, nn.Linear):
                trainable += 2.0 * batch * layer.in_features * layer.out_features
    trainable += len(distiller.teacher_dims) * 2.0 * batch * batch * distiller.shared_dim
    return frozen.training(frozen_weights=True) + 3.0 * trainable


def lookup_peak_tflops(device: torch.device, override: float | None = None) -> float | None:
    """Dense bf16 peak of the CUDA card (TFLOP/s), ``override`` when given, None when unknown/CPU."""
    if override:
        return float(override)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16_TFLOPS:
        if key in name:
            return peak
    return None


def mfu(flops_per_step: float, seconds_per_step: float, peak_tflops: float | None) -> float | None:
    """Model FLOP utilisation in percent of the peak, or None without a known peak (CPU)."""
    if not peak_tflops or seconds_per_step <= 0:
        return None
    return 100.0 * flops_per_step / seconds_per_step / (peak_tflops * 1e12)
