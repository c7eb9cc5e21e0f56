"""Mask-aware denoising autoencoder over lab-test percentiles: the lab teacher of PaCX-MAE.

The network sees the lab values *and* which of them were measured (``labs_observed``). Missing
positions are always zeroed before the encoder, both in training and when extracting embeddings,
so whatever placeholder a dataset stores there (Symile-MIMIC stores the training-mean
percentile) never leaks into the embedding. The authors' extraction fed the mean-imputed values
instead, which differs from what the encoder saw in training; this module does not repeat that.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["LabDAE", "masked_mse"]

_EPS = 1e-6


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the entries where ``mask`` is 1: ``sum((p - t)^2 * m) / (sum(m) + 1e-6)``.

    Args:
        prediction: (B, L) reconstruction.
        target: (B, L) reference values (anything, including NaN, where ``mask`` is 0 is ignored).
        mask: (B, L) 0/1 weights.

    Returns:
        A scalar tensor; 0 when the mask is empty.
    """
    diff = torch.where(mask > 0, prediction - target, torch.zeros_like(prediction))
    return (diff.pow(2) * mask).sum() / (mask.sum() + _EPS)


class LabDAE(nn.Module):
    """Denoising autoencoder over ``cat[values * observed, observed]`` with observed-entry dropout.

    Encoder: Linear(2L -> hidden) -> LayerNorm -> GELU -> Linear(hidden -> latent); the latent
    (no activation) is the teacher embedding. Decoder: Linear(latent -> hidden) -> GELU ->
    Linear(hidden -> L) -> Sigmoid, reconstructing the percentiles only. In training mode
    ``forward`` drops each observed entry with probability ``corruption_prob`` (value and mask
    set to 0) and scores the reconstruction against the clean values on every originally
    observed entry, so the model learns to impute what was hidden.

    Args:
        num_labs: number of lab tests L (50 for Symile-MIMIC).
        latent_dim: embedding size (256 in the paper).
        hidden_dim: width of the hidden layers (512).
        corruption_prob: probability of dropping each observed entry in training, in [0, 1).

    Raises:
        ValueError: when a size is not positive or ``corruption_prob`` is outside [0, 1).

    Example:
        >>> dae = LabDAE(num_labs=50)
        >>> values, observed = torch.rand(4, 50), (torch.rand(4, 50) > 0.3).float()
        >>> loss, recon, details = dae(values, observed)
        >>> recon.shape, dae.encode(values, observed).shape
        (torch.Size([4, 50]), torch.Size([4, 256]))
    """

    def __init__(
        self,
        num_labs: int = 50,
        latent_dim: int = 256,
        hidden_dim: int = 512,
        corruption_prob: float = 0.15,
    ) -> None:
        super().__init__()
        for arg, value in (("num_labs", num_labs), ("latent_dim", latent_dim), ("hidden_dim", hidden_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LabDAE: {arg} must be a positive int, got {value!r}")
        if not 0.0 <= corruption_prob < 1.0:
            raise ValueError(f"LabDAE: corruption_prob must be in [0, 1), got {corruption_prob!r}")
        self.num_labs = num_labs
        self.latent_dim = latent_dim
        self.hidden_dim = hidden_dim
        self.corruption_prob = float(corruption_prob)
        self.encoder = nn.Sequential(
            nn.Linear(2 * num_labs, hidden_dim),
            nn.LayerNorm(hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, num_labs),
            nn.Sigmoid(),
        )

    def config(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-serialisable dict."""
        return {
            "num_labs": self.num_labs,
            "latent_dim": self.latent_dim,
            "hidden_dim": self.hidden_dim,
            "corruption_prob": self.corruption_prob,
        }

    def prepare_inputs(self, values: torch.Tensor, observed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate a batch and zero its missing positions.

        Args:
            values: (B, L) floating percentiles in [0, 1] at observed positions; anything
                (a placeholder, NaN) at missing positions.
            observed: (B, L) bool or 0/1 tensor, 1 = observed.

        Returns:
            ``(values * observed, observed)``, both in ``values``' dtype, with NaN at missing positions replaced by 0.

        Raises:
            ValueError: on a wrong type, shape or dtype, an ``observed`` entry other than 0/1, or a
                non-finite or out-of-[0, 1] value at an observed position (row and column named).
        """
        if not isinstance(values, torch.Tensor) or not isinstance(observed, torch.Tensor):
            raise ValueError(
                "LabDAE: values and observed must be tensors, got "
                f"{type(values).__name__} and {type(observed).__name__}"
            )
        expected = f"(B, {self.num_labs})"
        if values.ndim != 2 or values.shape[1] != self.num_labs or values.shape[0] < 1:
            raise ValueError(f"LabDAE: values must have shape {expected} with B >= 1, got {tuple(values.shape)}")
        if observed.shape != values.shape:
            raise ValueError(
                f"LabDAE: observed must have the shape of values {tuple(values.shape)}, got {tuple(observed.shape)}"
            )
        if not values.is_floating_point():
            raise ValueError(f"LabDAE: values must be floating point, got dtype {values.dtype}")
        if observed.is_complex():
            raise ValueError(f"LabDAE: observed must be bool or 0/1 numbers, got dtype {observed.dtype}")
        if observed.dtype != torch.bool:
            invalid = (observed != 0) & (observed != 1)
            if bool(invalid.any()):
                row, col = (int(i) for i in invalid.nonzero()[0])
                raise ValueError(
                    f"LabDAE: observed must contain only 0/1, got {observed[row, col].item()!r} "
                    f"at row {row}, column {col}"
                )
        is_observed = observed.bool()
        bad = is_observed & ~torch.isfinite(values)
        if bool(bad.any()):
            row, col = (int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"LabDAE: values has a non-finite entry ({values[row, col].item()}) at observed position "
                f"row {row}, column {col}; mark it missing (observed=0) or fix the value"
            )
        out_of_range = is_observed & ((values < 0) | (values > 1))
        if bool(out_of_range.any()):
            row, col = (int(i) for i in out_of_range.nonzero()[0])
            raise ValueError(
                f"LabDAE: observed values must be percentiles in [0, 1], got {values[row, col].item()} "
                f"at row {row}, column {col}"
            )
        # torch.where, not a product: NaN * 0 is NaN, and missing positions may hold NaN.
        clean = torch.where(is_observed, values, torch.zeros_like(values))
        return clean, is_observed.to(values.dtype)

    def corrupt(
        self,
        values: torch.Tensor,
        observed: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Drop each observed entry with probability ``corruption_prob``.

        A dropped entry gets value 0 and mask 0; missing entries stay missing (value 0, mask 0).

        Args:
            values: (B, L) percentiles (see :meth:`prepare_inputs`).
            observed: (B, L) 0/1 observed mask.
            generator: optional ``torch.Generator`` for reproducible corruption.

        Returns:
            ``(corrupted_values, corrupted_observed)``.
        """
        clean, mask = self.prepare_inputs(values, observed)
        if self.corruption_prob == 0.0:
            return clean, mask
        device = generator.device if generator is not None else clean.device
        draws = torch.rand(clean.shape, generator=generator, device=device).to(clean.device)
        keep = (draws >= self.corruption_prob).to(clean.dtype)
        new_mask = mask * keep
        return clean * new_mask, new_mask

    def _encode_prepared(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(torch.cat([values * mask, mask], dim=1))

    def encode(self, values: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """Teacher embedding (B, latent_dim) of a clean batch, missing positions zeroed as in training.

        Gradients are not disabled here; wrap in ``torch.no_grad()`` (as ``LabTeacher`` does) for extraction.
        """
        clean, mask = self.prepare_inputs(values, observed)
        return self._encode_prepared(clean, mask)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Reconstructed percentiles (B, num_labs) in (0, 1) from a latent (B, latent_dim)."""
        if latent.ndim != 2 or latent.shape[1] != self.latent_dim:
            raise ValueError(f"LabDAE: latent must have shape (B, {self.latent_dim}), got {tuple(latent.shape)}")
        return self.decoder(latent)

    def forward(
        self,
        values: torch.Tensor,
        observed: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Reconstruct a batch; corrupt it first in training mode.

        Args:
            values: (B, L) percentiles.
            observed: (B, L) 0/1 observed mask.
            generator: optional generator for the corruption draws.

        Returns:
            ``(loss, reconstruction, details)``: ``loss`` is the masked MSE against the clean values
            over all originally observed entries; ``details`` holds detached scalars
            ``imputation_mse`` (over the entries dropped by corruption; 0 when none),
            ``num_dropped``, ``dropped_fraction`` (of the observed entries) and ``latent_std``
            (a collapse check).
        """
        clean, mask = self.prepare_inputs(values, observed)
        if self.training and self.corruption_prob > 0:
            inputs, input_mask = self.corrupt(clean, mask, generator=generator)
        else:
            inputs, input_mask = clean, mask
        latent = self._encode_prepared(inputs, input_mask)
        reconstruction = self.decoder(latent)
        loss = masked_mse(reconstruction, clean, mask)
        dropped = mask - input_mask
        with torch.no_grad():
            details = {
                "imputation_mse": masked_mse(reconstruction.detach(), clean, dropped),
                "num_dropped": dropped.sum(),
                "dropped_fraction": dropped.sum() / (mask.sum() + _EPS),
                "latent_std": latent.detach().std() if latent.numel() > 1 else latent.new_zeros(()),
            }
        return loss, reconstruction, details
