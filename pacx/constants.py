"""Constants shared across sub-packages (one source each; importing this module is free)."""

from __future__ import annotations

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD"]

# Channel statistics of ImageNet: every CXR tensor in pacx is normalised with them, as the
# paper's timm ViT and the authors' code do.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
