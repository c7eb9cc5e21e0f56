"""Argument checks and small helpers shared by the synthetic-cohort modules."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["check_image_size", "check_positive_int", "check_seed", "take"]


def check_positive_int(name: str, value) -> int:
    """Return ``value`` as an ``int``, or raise a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_image_size(image_size) -> int:
    """A CXR side length: a positive integer >= 16."""
    size = check_positive_int("image_size", image_size)
    if size < 16:
        raise ValueError(f"image_size must be >= 16, got {size}")
    return size


def check_seed(seed) -> int:
    """A random seed: a non-negative integer."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def take(state: Mapping[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """The rows ``idx`` of every per-patient array of ``state``."""
    return {k: v[idx] for k, v in state.items()}
