"""Fixtures shared by the evaluation tests."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer


def make_tiny_vit(seed: int = 0, img_size: int = 32, patch_size: int = 8) -> VisionTransformer:
    """A tiny timm ViT (class token, num_classes=0) with seeded weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VisionTransformer(
            img_size=img_size, patch_size=patch_size, embed_dim=32, depth=2, num_heads=2, num_classes=0
        )


@pytest.fixture
def tiny_vit() -> VisionTransformer:
    return make_tiny_vit()


@pytest.fixture
def make_vit():
    """Factory fixture: ``make_vit(seed=0, img_size=32, patch_size=8)``."""
    return make_tiny_vit
