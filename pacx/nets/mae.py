"""Masked autoencoder (MAE) whose encoder is a plain timm ``VisionTransformer``.

The encoder is a stock :class:`timm.models.vision_transformer.VisionTransformer` (class
token, ``qkv_bias=True``, LayerNorm eps 1e-6, ``num_classes=0``, ``global_pool="token"``), so
``mae.encoder.state_dict()`` loads strictly into ``timm.create_model(**mae.timm_config)``.
Only the positional embeddings differ from a freshly built timm ViT: they are fixed 2-D
sin-cos tables (kept in the state dict, never trained), as in the MAE paper.

During pretraining the encoder sees only the visible patches, so its cost falls with the
mask ratio; the light decoder reconstructs every patch from the visible tokens plus a
shared mask token, and the loss is the per-patch MSE averaged over masked patches only.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from timm.layers import LayerNorm
from timm.models import checkpoint_seq
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

__all__ = [
    "MAE_PRESETS",
    "MAEOutput",
    "MaskedAutoencoderViT",
    "create_mae",
    "list_mae_presets",
    "mae_vit_base_patch16",
    "mae_vit_small_patch8_96",
    "mae_vit_tiny_patch8_64",
    "sincos_2d_pos_embed",
]

# Architecture name handed to ``timm.create_model``; every size is then set by keyword
# arguments, which override this entry's defaults.
_TIMM_ARCHITECTURE = "vit_base_patch16_224"


class MAEOutput(NamedTuple):
    """What :meth:`MaskedAutoencoderViT.forward` returns.

    Attributes:
        loss: scalar reconstruction loss over the masked patches.
        pred: (B, L, patch_size**2 * in_chans) reconstruction of every patch, in
            :meth:`MaskedAutoencoderViT.patchify` layout.
        mask: (B, L) float32, 1 where the patch was masked (hidden from the encoder), 0 where visible.
    """

    loss: torch.Tensor
    pred: torch.Tensor
    mask: torch.Tensor


def sincos_2d_pos_embed(embed_dim: int, grid_size: int | tuple[int, int], cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sin-cos positional table in the MAE channel convention.

    For the patch at grid row ``r`` and column ``c`` (row-major patch order) the vector is
    ``[sin(c * w), cos(c * w), sin(r * w), cos(r * w)]`` with ``w_k = 10000 ** (-k / (D / 4))``,
    ``k = 0 .. D/4 - 1``: the column half comes first, which is what the released MAE weights
    hold. With ``cls_token`` a leading row of zeros is added for the class token.

    Args:
        embed_dim: width ``D``; must be a positive multiple of 4.
        grid_size: patches per side, or ``(rows, cols)``.
        cls_token: prepend a zero row for the class token.

    Returns:
        float32 tensor of shape ``(cls_token + rows * cols, embed_dim)``.

    Raises:
        ValueError: when ``embed_dim`` is not a positive multiple of 4 or the grid is empty.

    Example:
        >>> sincos_2d_pos_embed(8, 2).shape
        torch.Size([5, 8])
    """
    if embed_dim <= 0 or embed_dim % 4 != 0:
        raise ValueError(f"embed_dim must be a positive multiple of 4 for a 2-D sin-cos table, got {embed_dim}")
    rows, cols = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
    if rows <= 0 or cols <= 0:
        raise ValueError(f"grid_size must be positive, got {grid_size}")
    quarter = embed_dim // 4
    # float64 for the table itself so the values match a numpy float64 reference to float32 precision
    freqs = 1.0 / (10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    row_idx, col_idx = torch.meshgrid(
        torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64), indexing="ij"
    )
    col_angles = col_idx.reshape(-1, 1) * freqs
    row_angles = row_idx.reshape(-1, 1) * freqs
    table = torch.cat([col_angles.sin(), col_angles.cos(), row_angles.sin(), row_angles.cos()], dim=1)
    if cls_token:
        table = torch.cat([torch.zeros(1, embed_dim, dtype=torch.float64), table], dim=0)
    return table.float()


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_mask_ratio(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name} must be a float in the open interval (0, 1), got {value!r}")
    return float(value)


def _check_mae_config(config: dict[str, Any]) -> None:
    """Every constructor argument of :class:`MaskedAutoencoderViT` except the mask ratio.

    The mask ratio is checked against the patch count by ``_validated_ratio`` afterwards.
    """
    for name in (
        "img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads",
        "decoder_embed_dim", "decoder_depth", "decoder_num_heads",
    ):  # fmt: skip
        _check_positive_int(name, config[name])
    img_size, patch_size = config["img_size"], config["patch_size"]
    if img_size % patch_size != 0:
        raise ValueError(f"img_size must be divisible by patch_size, got img_size={img_size}, patch_size={patch_size}")
    for dim_name, heads_name in (("embed_dim", "num_heads"), ("decoder_embed_dim", "decoder_num_heads")):
        dim, heads = config[dim_name], config[heads_name]
        if dim % heads != 0:
            raise ValueError(
                f"{dim_name} must be divisible by {heads_name}, got {dim_name}={dim}, {heads_name}={heads}"
            )
        if dim % 4 != 0:
            raise ValueError(f"{dim_name} must be a multiple of 4 for the 2-D sin-cos position table, got {dim}")
    mlp_ratio = config["mlp_ratio"]
    if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or mlp_ratio <= 0:
        raise ValueError(f"mlp_ratio must be a positive number, got {mlp_ratio!r}")
    if not isinstance(config["norm_pix_loss"], bool):
        raise ValueError(f"norm_pix_loss must be a bool, got {config['norm_pix_loss']!r}")


class MaskedAutoencoderViT(nn.Module):
    """MAE with a timm ViT encoder and a light ViT decoder (He et al., 2022; PaCX-MAE Stage 1).

    Decoder attributes use the MAE checkpoint names (``decoder_embed``, ``mask_token``,
    ``decoder_pos_embed``, ``decoder_blocks``, ``decoder_norm``, ``decoder_pred``) and the
    encoder sits under ``encoder.``, so a full MAE checkpoint maps onto this module by
    prefixing its encoder keys with ``encoder.`` (see :mod:`pacx.nets.mae_checkpoints`).

    Args:
        img_size: square input side in pixels; must be divisible by ``patch_size``.
        patch_size: square patch side in pixels.
        in_chans: input channels (1 for raw grayscale CXR, 3 for replicated grayscale).
        embed_dim: encoder width; divisible by ``num_heads`` and by 4 (sin-cos table).
        depth: encoder blocks.
        num_heads: encoder attention heads.
        decoder_embed_dim: decoder width; divisible by ``decoder_num_heads`` and by 4.
        decoder_depth: decoder blocks.
        decoder_num_heads: decoder attention heads.
        mlp_ratio: MLP hidden width over block width, for encoder and decoder.
        mask_ratio: fraction of patches hidden from the encoder, in (0, 1). Defaults to
            0.90 (the paper's ratio). ``forward`` uses it unless given an explicit override;
            the ratio of the last forward is kept in :attr:`last_mask_ratio`.
        norm_pix_loss: normalise each target patch by its own mean and variance (eps 1e-6).

    Raises:
        ValueError: on a non-positive size, ``img_size`` not divisible by ``patch_size``, a
            width not divisible by its heads or by 4, or a mask ratio outside (0, 1) or one
            that leaves no visible or no masked patch.

    Example:
        >>> mae = MaskedAutoencoderViT(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
        ...                            decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
        >>> out = mae(torch.randn(2, 3, 32, 32))
        >>> out.pred.shape, out.mask.shape, int(out.mask[0].sum())
        (torch.Size([2, 16, 192]), torch.Size([2, 16]), 15)
        >>> mae.forward_features(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 17, 32])
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        mask_ratio: float = 0.9,
        norm_pix_loss: bool = False,
    ) -> None:
        super().__init__()
        # One dict holds the arguments: it is validated by name and becomes ``self.config``.
        config: dict[str, Any] = {
            "img_size": img_size,
            "patch_size": patch_size,
            "in_chans": in_chans,
            "embed_dim": embed_dim,
            "depth": depth,
            "num_heads": num_heads,
            "decoder_embed_dim": decoder_embed_dim,
            "decoder_depth": decoder_depth,
            "decoder_num_heads": decoder_num_heads,
            "mlp_ratio": mlp_ratio,
            "mask_ratio": mask_ratio,
            "norm_pix_loss": norm_pix_loss,
        }
        _check_mae_config(config)

        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.decoder_embed_dim = decoder_embed_dim
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2
        self.norm_pix_loss = norm_pix_loss
        self.mask_ratio = self._validated_ratio("mask_ratio", mask_ratio)
        # The ratio the last forward pass actually used; logs and checkpoints read it so a
        # silently ignored setting (the reference code trained at 0.75 while configured 0.90)
        # cannot go unnoticed.
        self.last_mask_ratio: float | None = None
        self.config = {**config, "mlp_ratio": float(mlp_ratio), "mask_ratio": self.mask_ratio}
        self._timm_kwargs: dict[str, Any] = {
            "img_size": img_size,
            "patch_size": patch_size,
            "in_chans": in_chans,
            "num_classes": 0,
            "global_pool": "token",
            "embed_dim": embed_dim,
            "depth": depth,
            "num_heads": num_heads,
            "mlp_ratio": float(mlp_ratio),
            "qkv_bias": True,
            "class_token": True,
        }

        # weight_init="skip": MAE's own initialisation follows below, timm's would be overwritten.
        self.encoder = VisionTransformer(**self._timm_kwargs, weight_init="skip")
        self.encoder.pos_embed.requires_grad_(False)
        self._build_decoder(decoder_depth, decoder_num_heads, float(mlp_ratio))
        self.initialize_weights()

    # ------------------------------------------------------------------ construction helpers
    def _build_decoder(self, depth: int, num_heads: int, mlp_ratio: float) -> None:
        """The decoder modules, under the MAE checkpoint's attribute names."""
        width = self.decoder_embed_dim
        self.decoder_embed = nn.Linear(self.embed_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, width), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            [Block(width, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True) for _ in range(depth)]
        )
        self.decoder_norm = LayerNorm(width)
        self.decoder_pred = nn.Linear(width, self.patch_size * self.patch_size * self.in_chans)

    def initialize_weights(self) -> None:
        """(Re)apply the MAE initialisation.

        Sin-cos tables into both position embeddings, xavier-uniform on the flattened
        patch-embedding kernel (it acts as a Linear on a patch), N(0, 0.02) class and mask
        tokens, xavier-uniform Linear weights with zero bias, LayerNorm weight 1 and bias 0.
        """
        with torch.no_grad():
            self.encoder.pos_embed.copy_(sincos_2d_pos_embed(self.embed_dim, self.grid_size).unsqueeze(0))
            self.decoder_pos_embed.copy_(sincos_2d_pos_embed(self.decoder_embed_dim, self.grid_size).unsqueeze(0))
        proj = self.encoder.patch_embed.proj.weight
        nn.init.xavier_uniform_(proj.data.view(proj.shape[0], -1))
        nn.init.normal_(self.encoder.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def encoder_timm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments that rebuild :attr:`encoder` with ``timm.create_model``.

        Returns:
            A fresh dict, to be used as ``timm.create_model("vit_base_patch16_224", **kwargs)``.
        """
        return dict(self._timm_kwargs)

    @property
    def timm_config(self) -> dict[str, Any]:
        """JSON-ready description of the encoder in timm's hub ``config.json`` layout.

        ``timm.create_model(cfg["architecture"], **cfg["model_args"])`` rebuilds an encoder
        into which ``mae.encoder.state_dict()`` loads strictly.
        """
        return {
            "architecture": _TIMM_ARCHITECTURE,
            "num_classes": 0,
            "num_features": self.embed_dim,
            "global_pool": "token",
            "model_args": self.encoder_timm_kwargs(),
        }

    def num_visible(self, mask_ratio: float | None = None) -> int:
        """Patches the encoder sees per image at ``mask_ratio`` (default: :attr:`mask_ratio`)."""
        ratio = self.mask_ratio if mask_ratio is None else self._validated_ratio("mask_ratio", mask_ratio)
        return int(self.num_patches * (1.0 - ratio))

    def _validated_ratio(self, name: str, value: Any) -> float:
        ratio = _check_mask_ratio(name, value)
        keep = int(self.num_patches * (1.0 - ratio))
        if keep < 1:
            raise ValueError(
                f"{name}={ratio} leaves no visible patch out of {self.num_patches} "
                f"(int(L * (1 - ratio)) = {keep}); expected at least 1"
            )
        if keep >= self.num_patches:
            raise ValueError(f"{name}={ratio} masks no patch out of {self.num_patches}; expected at least 1 masked")
        return ratio

    # ------------------------------------------------------------------ input checks
    def _check_images(self, imgs: Any, name: str = "imgs") -> None:
        if not isinstance(imgs, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(imgs).__name__}")
        expected = (self.in_chans, self.img_size, self.img_size)
        if imgs.ndim != 4 or tuple(imgs.shape[1:]) != expected:
            raise ValueError(f"{name} must have shape (B, {', '.join(map(str, expected))}), got {tuple(imgs.shape)}")
        if imgs.shape[0] == 0:
            raise ValueError(f"{name} must hold at least one image, got batch size 0")
        if not imgs.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {imgs.dtype}")

    # ------------------------------------------------------------------ patches
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """Cut images into flattened patches, channel-last inside each patch.

        Args:
            imgs: (B, C, H, W) with ``C == in_chans`` and ``H == W == img_size``.

        Returns:
            (B, L, p * p * C): row-major patch order, values ordered (row p, column q, channel c).
        """
        self._check_images(imgs)
        p, g, c = self.patch_size, self.grid_size, self.in_chans
        x = imgs.reshape(imgs.shape[0], c, g, p, g, p)
        x = x.permute(0, 2, 4, 3, 5, 1)  # (B, rows, cols, p, q, c)
        return x.reshape(imgs.shape[0], g * g, p * p * c)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`patchify`: (B, L, p * p * C) -> (B, C, H, W)."""
        p, g, c = self.patch_size, self.grid_size, self.in_chans
        if not isinstance(patches, torch.Tensor) or patches.ndim != 3 or tuple(patches.shape[1:]) != (g * g, p * p * c):
            got = tuple(patches.shape) if isinstance(patches, torch.Tensor) else type(patches).__name__
            raise ValueError(f"patches must have shape (B, {g * g}, {p * p * c}), got {got}")
        x = patches.reshape(patches.shape[0], g, g, p, p, c)
        x = x.permute(0, 5, 1, 3, 2, 4)  # (B, c, rows, p, cols, q)
        return x.reshape(patches.shape[0], c, g * p, g * p)

    # ------------------------------------------------------------------ masking
    def random_masking(
        self, tokens: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep a random subset of ``int(L * (1 - mask_ratio))`` tokens per sample.

        Each sample gets its own permutation (argsort of uniform noise drawn on the tokens'
        device); the first ``keep`` shuffled positions stay visible.

        Args:
            tokens: (B, L, D) patch tokens (position embedding already added).
            mask_ratio: fraction to hide, in (0, 1).
            generator: optional generator on the tokens' device, for reproducible masks.

        Returns:
            ``(visible, mask, ids_restore)``: visible tokens (B, keep, D) in shuffled order;
            mask (B, L) float with 1 = masked in the original patch order; ``ids_restore``
            (B, L) long such that gathering ``cat([visible, masked])`` with it restores the
            original order.
        """
        ratio = self._validated_ratio("mask_ratio", mask_ratio)
        if tokens.ndim != 3 or tokens.shape[1] != self.num_patches:
            raise ValueError(f"tokens must have shape (B, {self.num_patches}, D), got {tuple(tokens.shape)}")
        if generator is not None and generator.device.type != tokens.device.type:
            raise ValueError(
                f"generator must live on the input's device type {tokens.device.type!r}, got {generator.device.type!r}"
            )
        batch, length, dim = tokens.shape
        keep = int(length * (1.0 - ratio))
        noise = torch.rand(batch, length, device=tokens.device, generator=generator)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :keep]
        visible = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
        # float32 whatever the autocast dtype: mask.sum() over a large batch overflows float16
        mask = torch.ones(batch, length, device=tokens.device, dtype=torch.float32)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return visible, mask, ids_restore

    # ------------------------------------------------------------------ encoder / decoder
    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the visible patches only.

        Args:
            imgs: (B, in_chans, img_size, img_size) float images.
            mask_ratio: override of :attr:`mask_ratio` for this call (recorded in
                :attr:`last_mask_ratio`).
            generator: optional generator for the masking noise.

        Returns:
            ``(latent, mask, ids_restore)``: latent (B, 1 + keep, D) after the final norm
            (class token first), and the mask and restore indices of :meth:`random_masking`.
        """
        self._check_images(imgs)
        ratio = self.mask_ratio if mask_ratio is None else self._validated_ratio("mask_ratio", mask_ratio)
        enc = self.encoder
        x = enc.patch_embed(imgs)
        # positions are added before masking so every kept token carries its own location
        x = x + enc.pos_embed[:, 1:, :]
        x, mask, ids_restore = self.random_masking(x, ratio, generator=generator)
        cls = (enc.cls_token + enc.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = enc.pos_drop(x)
        x = enc.norm_pre(x)
        if enc.grad_checkpointing and torch.is_grad_enabled():
            # honour ``mae.encoder.set_grad_checkpointing()`` as timm's own forward does
            x = checkpoint_seq(enc.blocks, x)
        else:
            x = enc.blocks(x)
        x = enc.norm(x)
        self.last_mask_ratio = ratio
        return x, mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predict every patch from the encoded visible tokens.

        Args:
            latent: (B, 1 + keep, D) from :meth:`forward_encoder`.
            ids_restore: (B, L) from :meth:`forward_encoder`.

        Returns:
            (B, L, p * p * in_chans) predicted patches in :meth:`patchify` layout.
        """
        x = self.decoder_embed(latent)
        batch, tokens, dim = x.shape
        num_masked = self.num_patches + 1 - tokens
        patches = torch.cat([x[:, 1:, :], self.mask_token.expand(batch, num_masked, -1)], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))
        x = torch.cat([x[:, :1, :], patches], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_norm(x)
        return self.decoder_pred(x)[:, 1:, :]

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-patch MSE averaged over masked patches only.

        Args:
            imgs: (B, C, H, W) the input images (the target).
            pred: (B, L, p * p * C) predicted patches.
            mask: (B, L), 1 = masked.

        Returns:
            Scalar loss. With ``norm_pix_loss`` each target patch is standardised by its own
            mean and (unbiased) variance plus 1e-6 first.
        """
        # float32 arithmetic so the loss and its normalisation are exact under mixed precision
        target = self.patchify(imgs).float()
        pred = pred.float()
        mask = mask.float()
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6).sqrt()
        per_patch = (pred - target).pow(2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float | None = None, generator: torch.Generator | None = None
    ) -> MAEOutput:
        """Mask, encode, decode and score one batch.

        Args:
            imgs: (B, in_chans, img_size, img_size) float images.
            mask_ratio: override of :attr:`mask_ratio` for this call; the ratio used is
                stored in :attr:`last_mask_ratio`.
            generator: optional generator for the masking noise.

        Returns:
            :class:`MAEOutput` ``(loss, pred, mask)``.

        Raises:
            ValueError: on a wrong input shape, channel count or dtype, or an invalid ratio.
        """
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio=mask_ratio, generator=generator)
        pred = self.forward_decoder(latent, ids_restore)
        loss = self.forward_loss(imgs, pred, mask)
        return MAEOutput(loss, pred, mask)

    # ------------------------------------------------------------------ inference
    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """All tokens of the unmasked image after the final norm: (B, 1 + L, D)."""
        self._check_images(imgs)
        return self.encoder.forward_features(imgs)

    def embed(self, imgs: torch.Tensor, pool: str = "token") -> torch.Tensor:
        """Pooled embedding (B, D) of unmasked images.

        Args:
            imgs: (B, in_chans, img_size, img_size) float images.
            pool: ``"token"`` for the class token after the final norm (the paper's choice),
                or ``"mean"`` for the mean of the normalised patch tokens.

        Raises:
            ValueError: on an unknown ``pool`` or a bad input.
        """
        if pool not in ("token", "mean"):
            raise ValueError(f"pool must be 'token' or 'mean', got {pool!r}")
        tokens = self.forward_features(imgs)
        return tokens[:, 0] if pool == "token" else tokens[:, 1:].mean(dim=1)

    def extra_repr(self) -> str:
        return f"mask_ratio={self.mask_ratio}, norm_pix_loss={self.norm_pix_loss}"


# ---------------------------------------------------------------------- presets
# Sizes of each preset; every other argument keeps its default (mlp_ratio 4, mask ratio 0.90).
_PRESET_SIZES: dict[str, dict[str, int]] = {
    "mae_vit_base_patch16": dict(
        img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12,
        decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16,
    ),
    "mae_vit_small_patch8_96": dict(
        img_size=96, patch_size=8, embed_dim=192, depth=6, num_heads=3,
        decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4,
    ),
    "mae_vit_tiny_patch8_64": dict(
        img_size=64, patch_size=8, embed_dim=128, depth=4, num_heads=4,
        decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4,
    ),
}  # fmt: skip


def _build_preset(name: str, overrides: dict[str, Any]) -> MaskedAutoencoderViT:
    return MaskedAutoencoderViT(**{**_PRESET_SIZES[name], **overrides})


def mae_vit_base_patch16(**overrides: Any) -> MaskedAutoencoderViT:
    """The paper's MAE: ViT-B/16 at 224 px (768/12/12) with the 512/8/16 decoder, ratio 0.90."""
    return _build_preset("mae_vit_base_patch16", overrides)


def mae_vit_small_patch8_96(**overrides: Any) -> MaskedAutoencoderViT:
    """CPU-sized MAE: 96 px, 8 px patches (144 patches), encoder 192/6/3, decoder 128/2/4."""
    return _build_preset("mae_vit_small_patch8_96", overrides)


def mae_vit_tiny_patch8_64(**overrides: Any) -> MaskedAutoencoderViT:
    """Smallest CPU MAE for tests and smoke runs: 64 px, 8 px patches (64 patches), 128/4/4, decoder 128/2/4."""
    return _build_preset("mae_vit_tiny_patch8_64", overrides)


MAE_PRESETS: dict[str, Callable[..., MaskedAutoencoderViT]] = {
    "mae_vit_base_patch16": mae_vit_base_patch16,
    "mae_vit_small_patch8_96": mae_vit_small_patch8_96,
    "mae_vit_tiny_patch8_64": mae_vit_tiny_patch8_64,
}


def list_mae_presets() -> list[str]:
    """Names accepted by :func:`create_mae`, sorted."""
    return sorted(MAE_PRESETS)


def create_mae(name: str, **overrides: Any) -> MaskedAutoencoderViT:
    """Build a preset MAE, with any constructor argument overridden.

    Args:
        name: one of :func:`list_mae_presets`.
        **overrides: constructor arguments of :class:`MaskedAutoencoderViT`, e.g. ``in_chans=1``.

    Raises:
        ValueError: on an unknown preset name or an unknown/invalid override.

    Example:
        >>> mae = create_mae("mae_vit_tiny_patch8_64", in_chans=1)
        >>> mae.config["mask_ratio"], mae.num_visible()
        (0.9, 6)
    """
    if name not in MAE_PRESETS:
        raise ValueError(f"name must be one of {list_mae_presets()}, got {name!r}")
    allowed = set(inspect.signature(MaskedAutoencoderViT.__init__).parameters) - {"self"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(f"overrides must be MaskedAutoencoderViT arguments {sorted(allowed)}, got unknown {unknown}")
    return MAE_PRESETS[name](**overrides)

