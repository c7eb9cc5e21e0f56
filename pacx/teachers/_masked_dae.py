"""Shared plug-in logic of mask-aware tabular teachers (a :class:`pacx.nets.LabDAE` over values + observed mask)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from pacx.nets import LabDAE, LabTeacher

from .base import TeacherPlugin

__all__ = ["MaskedDAETeacher"]


class MaskedDAETeacher(TeacherPlugin):
    """A teacher that is a mask-aware denoising autoencoder over ``values`` and their observed mask.

    Subclasses set ``value_key`` / ``observed_key`` (the dataset item keys) and implement
    :meth:`num_features` and :meth:`~pacx.teachers.TeacherPlugin.dataset`. Section keys:
    ``latent_dim``, ``hidden_dim``, ``corruption_prob`` and the training keys.
    """

    value_key: ClassVar[str] = ""
    observed_key: ClassVar[str] = ""

    def num_features(self, root: Path) -> int:
        """Number of tabular features L of the cohort at ``root``."""
        raise NotImplementedError(f"{type(self).__name__} must implement num_features(root)")

    def build(self, root: Path) -> nn.Module:
        s = self.section
        return LabDAE(num_labs=self.num_features(root), latent_dim=int(s["latent_dim"]),
                      hidden_dim=int(s["hidden_dim"]), corruption_prob=float(s["corruption_prob"]))

    def frozen(self, net: nn.Module) -> LabTeacher:
        return LabTeacher(net, value_key=self.value_key, observed_key=self.observed_key)

    def loss(self, net: nn.Module, batch: Mapping[str, Any]) -> tuple[torch.Tensor, Mapping[str, Any]]:
        loss, _, details = net(batch[self.value_key], batch[self.observed_key])
        return loss, {"imputation_mse": details["imputation_mse"], "latent_std": details["latent_std"]}
