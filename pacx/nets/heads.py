"""Projection and regression heads used by Stage 2."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ProjectionHead"]


class ProjectionHead(nn.Module):
    """Dropout -> Linear -> LayerNorm, with truncated-normal (std 0.02) weights and zero bias.

    The same head maps an embedding into the shared contrastive space and regresses the
    student's pooled embedding onto a teacher's raw embedding.

    Args:
        in_dim: input feature size.
        out_dim: output feature size.
        dropout: dropout probability on the input, in [0, 1). Defaults to 0.2.

    Raises:
        ValueError: when a size is not positive or ``dropout`` is outside [0, 1).

    Example:
        >>> head = ProjectionHead(768, 256)
        >>> head(torch.randn(4, 768)).shape
        torch.Size([4, 256])
    """

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.2) -> None:
        super().__init__()
        if in_dim <= 0 or out_dim <= 0:
            raise ValueError(f"in_dim and out_dim must be positive, got in_dim={in_dim}, out_dim={out_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim)
        nn.init.trunc_normal_(self.linear.weight, std=0.02)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, in_dim) to (B, out_dim)."""
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"ProjectionHead expects input of shape (B, {self.in_dim}), got {tuple(x.shape)}")
        return self.norm(self.linear(self.dropout(x)))
