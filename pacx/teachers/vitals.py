"""The vitals teacher: a mask-aware denoising autoencoder over seven bedside vital signs."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from pacx.data.vitals import VITAL_NAMES, VitalsDataset

from ._masked_dae import MaskedDAETeacher
from .base import register_teacher

__all__ = ["VitalsTeacher"]


@register_teacher("vitals")
class VitalsTeacher(MaskedDAETeacher):
    """Vitals DAE on ``vitals`` (B, 7) percentiles in [0, 1] and ``vitals_observed`` (B, 7).

    Trained from scratch on the cohort's training split like the lab teacher (reconstruct the
    observed percentiles from a corrupted copy); the embedding is the DAE latent. Section keys:
    ``latent_dim``, ``hidden_dim``, ``corruption_prob`` and the training keys.

    Example:
        >>> from pacx.teachers import get_teacher
        >>> plugin = get_teacher("vitals", {"latent_dim": 16, "hidden_dim": 32, "corruption_prob": 0.15})
        >>> plugin.frozen(plugin.build(Path("."))).embed_dim
        16
    """

    modality = "7 bedside vital-sign percentiles and their observed mask"
    value_key, observed_key = "vitals", "vitals_observed"

    def num_features(self, root: Path) -> int:
        return len(VITAL_NAMES)

    def dataset(self, root: Path, split: str, cache_dir: Path) -> Dataset:
        return VitalsDataset(root, split)
