"""pacx.losses."""

from __future__ import annotations

from .cosine_regression import CosineRegressionLoss
from .global_infonce import GlobalInfoNCE

__all__: list[str] = ["CosineRegressionLoss", "GlobalInfoNCE"]
