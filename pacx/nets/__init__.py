"""pacx.nets: the models of every stage."""

from __future__ import annotations

from .heads import ProjectionHead

__all__ = [
    "ProjectionHead",
]
