"""A hand-written low-rank adapter (LoRA) around a frozen ``nn.Linear``."""

from __future__ import annotations

import math
from numbers import Real

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LoRALinear"]

_MERGED_KEY = "lora_merged"


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update (Hu et al., 2021).

    ``y = base_layer(x) + scaling * (dropout(x) @ lora_A.T) @ lora_B.T`` with ``lora_A`` of
    shape (r, in_features), Kaiming-uniform initialised (a = sqrt(5)), and ``lora_B`` of shape
    (out_features, r), zero initialised, so the wrapped layer starts out exactly equal to the
    base layer. ``scaling`` is ``alpha / r`` (or ``alpha / sqrt(r)`` with ``rslora=True``,
    Kalajdzievski 2023). Dropout acts on the adapter's input only, never on the base path.

    Merging is explicit: :meth:`merge` adds ``scaling * lora_B @ lora_A`` into the base weight
    and :meth:`unmerge` subtracts it again. ``eval()``/``train()`` never touch the weights, which
    avoids loralib's double-merge pitfall (an automatically merged weight saved in a full
    state dict and merged a second time on load). The merge state is part of the state dict
    (``lora_merged``, a 0-d bool tensor), so a merged layer saved and loaded into a fresh one
    stays merged instead of adding its update a second time; a state dict without that key
    (written before it existed) loads as unmerged, the only state pacx's training ever saved.
    While merged, ``forward`` runs the base layer
    only and the adapters receive no gradient, so unmerge before training again. The merge is
    computed in float32 and then cast to the weight's dtype, so a bfloat16 base loses precision
    on a merge/unmerge round trip; in float32 the round trip is exact to rounding.

    A fused timm ``qkv`` projection (Linear D -> 3D) receives ONE adapter covering q, k and v
    together, as peft does (one A of r x D, one B of 3D x r); loralib's per-slice
    ``MergedLinear`` is deliberately not reproduced.

    The adapter matrices are kept in float32 when the base layer is in half precision (peft's
    ``autocast_adapter_dtype`` behaviour), and inputs are cast to the adapter dtype, so the
    layer works both under ``torch.autocast`` (bfloat16 on CPU or CUDA) and with a bfloat16
    base layer without autocast.

    Args:
        base_layer: the ``nn.Linear`` to adapt. Its parameters are frozen (``requires_grad``
            set to False) and it is kept as ``self.base_layer``.
        r: rank of the update, a positive int. Defaults to 8.
        alpha: scale numerator, positive. Defaults to 16.
        dropout: dropout probability on the adapter input, in [0, 1). Defaults to 0.1.
        rslora: use the rank-stabilised scaling ``alpha / sqrt(r)``. Defaults to False.

    Raises:
        ValueError: when ``base_layer`` is not an ``nn.Linear``, ``r`` is not a positive int,
            ``alpha`` is not positive, or ``dropout`` is outside [0, 1).

    Example:
        >>> layer = LoRALinear(nn.Linear(16, 32), r=4, alpha=8)
        >>> layer(torch.randn(2, 16)).shape
        torch.Size([2, 32])
        >>> tuple(layer.lora_A.shape), tuple(layer.lora_B.shape), layer.scaling
        ((4, 16), (32, 4), 2.0)
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        r: int = 8,
        alpha: float = 16,
        dropout: float = 0.1,
        rslora: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise ValueError(f"base_layer must be an nn.Linear, got {type(base_layer).__name__}")
        # bool is an int subclass; a rank of True is almost certainly a mistake.
        if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
            raise ValueError(f"r must be a positive int, got {r!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, Real) or not alpha > 0:
            raise ValueError(f"alpha must be a positive number, got {alpha!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, Real) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")

        self.base_layer = base_layer
        self.base_layer.requires_grad_(False)
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.r = r
        self.alpha = float(alpha)
        self.rslora = bool(rslora)
        self.scaling = self.alpha / (math.sqrt(r) if rslora else r)
        self.dropout_p = float(dropout)
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

        weight = base_layer.weight
        # Half-precision adapters train poorly; keep them in float32 like peft does.
        adapter_dtype = weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32
        factory = {"device": weight.device, "dtype": adapter_dtype}
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, r, **factory))
        self.reset_lora_parameters()
        # Start in the wrapped layer's mode (a new module would otherwise be in train mode).
        self.train(base_layer.training)

    def reset_lora_parameters(self) -> None:
        """Re-initialise the adapter: Kaiming-uniform ``lora_A`` (a = sqrt(5)), zero ``lora_B``.

        Raises:
            RuntimeError: when the adapter is merged (the merged delta would be lost).
        """
        if self.merged:
            raise RuntimeError("cannot reset a merged LoRALinear; call unmerge() first")
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight (includes the update only while merged)."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        """The base layer's bias (LoRA adds no bias)."""
        return self.base_layer.bias

    def delta_weight(self) -> torch.Tensor:
        """The weight update ``scaling * lora_B @ lora_A`` in float32, shape (out, in), detached."""
        with torch.no_grad():
            return (self.lora_B.detach().float() @ self.lora_A.detach().float()) * self.scaling

    @torch.no_grad()
    def merge(self) -> LoRALinear:
        """Add the update into the base weight; a no-op when already merged.

        The sum is formed in float32 and cast back to the weight dtype. Because the ``merged``
        flag guards it, calling ``merge()`` twice never counts the update twice.

        Returns:
            self.
        """
        if not self.merged:
            weight = self.base_layer.weight
            merged = weight.float() + self.delta_weight().to(weight.device)
            weight.copy_(merged.to(weight.dtype))
            self.merged = True
        return self

    @torch.no_grad()
    def unmerge(self) -> LoRALinear:
        """Subtract the update from the base weight; a no-op when not merged.

        Returns:
            self.
        """
        if self.merged:
            weight = self.base_layer.weight
            restored = weight.float() - self.delta_weight().to(weight.device)
            weight.copy_(restored.to(weight.dtype))
            self.merged = False
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the base layer plus the low-rank update to ``x`` of shape (..., in_features)."""
        result = self.base_layer(x)
        if self.merged:
            return result
        # Cast to the adapter dtype so a half-precision base without autocast still matches
        # the float32 adapter; under autocast F.linear re-casts to the autocast dtype.
        h = self.dropout(x).to(self.lora_A.dtype)
        update = F.linear(F.linear(h, self.lora_A), self.lora_B) * self.scaling
        return result + update.to(result.dtype)

    # The merge state travels with the weights it describes: a plain Python flag in memory (read
    # on every forward, so never a device tensor), a 0-d tensor in the state dict.
    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + _MERGED_KEY] = torch.tensor(self.merged)

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        flag_key = prefix + _MERGED_KEY
        flag = state_dict.get(flag_key)
        # The flag describes the base weight: it only changes when that weight is loaded too.
        if prefix + "base_layer.weight" in state_dict:
            self.merged = bool(flag.item()) if isinstance(flag, torch.Tensor) else False
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if flag_key in unexpected_keys:
            unexpected_keys.remove(flag_key)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
            f"alpha={self.alpha:g}, scaling={self.scaling:g}, dropout={self.dropout_p:g}, "
            f"rslora={self.rslora}, merged={self.merged}"
        )
