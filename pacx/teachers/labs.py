"""The lab teacher: a mask-aware denoising autoencoder over the 50 Symile-MIMIC lab percentiles."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from pacx.data import SymileMIMIC
from pacx.data.symile import NUM_LABS

from ._masked_dae import MaskedDAETeacher
from .base import register_teacher

__all__ = ["LabsTeacher"]


@register_teacher("labs")
class LabsTeacher(MaskedDAETeacher):
    """Lab DAE (Stage 1b) on ``labs`` (B, 50) percentiles in [0, 1] and ``labs_observed`` (B, 50).

    Trained from scratch on the cohort's training split (the authors' recipe: reconstruct the
    observed percentiles from a corrupted copy); the embedding is the 256-d latent in the paper.
    """

    modality = "50 lab-test percentiles and their observed mask"
    value_key, observed_key = "labs", "labs_observed"

    def num_features(self, root: Path) -> int:
        return NUM_LABS

    def dataset(self, root: Path, split: str, cache_dir: Path) -> Dataset:
        return SymileMIMIC(root, split, modalities=("labs",))
