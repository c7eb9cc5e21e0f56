"""Cosine-distance regression of predicted embeddings onto fixed (teacher) embeddings."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["CosineRegressionLoss"]


class CosineRegressionLoss(nn.Module):
    """Mean over the batch of ``1 - cos(pred, target)``, with the target detached.

    PaCX-MAE regresses the student's embedding (through a regression head) onto each frozen
    teacher's raw embedding with this loss; the target never receives gradient, so a teacher
    embedding computed with gradient enabled is never updated by it.

    Each row is divided by ``max(||row||, eps)``, so a zero row gives a cosine of 0 (loss 1) and
    finite gradients instead of NaN. The loss runs in (at least) float32 with autocast disabled.

    Args:
        eps: lower bound of the row norms in the denominator, positive. Defaults to 1e-8.

    Raises:
        ValueError: when ``eps`` is not finite and positive.

    Example:
        >>> loss_fn = CosineRegressionLoss()
        >>> pred, target = torch.randn(4, 1024), torch.randn(4, 1024)
        >>> loss_fn(pred, target).shape
        torch.Size([])
        >>> float(loss_fn(target, 2 * target)) < 1e-6
        True
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a finite positive number, got {eps}")
        self.eps = float(eps)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cosine-distance loss between two (B, D) batches.

        Args:
            pred: (B, D) predicted embeddings (receive gradient).
            target: (B, D) target embeddings (detached inside).

        Returns:
            Scalar ``mean_i (1 - cos(pred_i, target_i))`` in [0, 2].

        Raises:
            ValueError: when an input is not a 2-D floating-point tensor with at least one row,
                the shapes differ, or an input holds NaN or Inf.
        """
        for name, x in (("pred", pred), ("target", target)):
            if not isinstance(x, torch.Tensor) or x.ndim != 2 or not x.is_floating_point():
                got = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(f"{name} must be a 2-D floating-point tensor (B, D), got {got}")
        if pred.shape != target.shape:
            raise ValueError(
                "pred and target must have the same shape, "
                f"got pred {tuple(pred.shape)} and target {tuple(target.shape)}"
            )
        if pred.shape[0] == 0:
            raise ValueError(f"pred and target need at least one row, got shape {tuple(pred.shape)}")
        target = target.detach()
        # One host sync for both checks; a NaN here would otherwise silently poison the whole loss.
        finite = torch.stack([torch.isfinite(pred.detach()).all(), torch.isfinite(target).all()]).tolist()
        for name, ok in zip(("pred", "target"), finite):
            if not ok:
                raise ValueError(f"{name} must contain only finite values, got NaN or Inf")

        dtype = torch.promote_types(torch.promote_types(pred.dtype, target.dtype), torch.float32)
        with torch.autocast(device_type=pred.device.type, enabled=False):
            pred = pred.to(dtype)
            target = target.to(dtype)
            pred_unit = pred / pred.norm(dim=1, keepdim=True).clamp_min(self.eps)
            target_unit = target / target.norm(dim=1, keepdim=True).clamp_min(self.eps)
            cosine = (pred_unit * target_unit).sum(dim=1)
            return (1.0 - cosine).mean()

    def extra_repr(self) -> str:
        return f"eps={self.eps}"
