"""pacx: physiology-augmented chest X-ray representation learning (PaCX-MAE).

Sub-packages:
    pacx.losses    contrastive and regression losses (GlobalInfoNCE, CosineRegressionLoss)
    pacx.nets      MAE ViT, lab DAE, Net1D (ECGFounder), heads, teachers, PaCXDistiller
    pacx.adapters  hand-written LoRA and tuning strategies
    pacx.data      real-format readers, transforms, splits and the synthetic cohort
    pacx.engine    training loop, checkpoints, export
    pacx.eval      probes, metrics, alignment, rollout, figures
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
