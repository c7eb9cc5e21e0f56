"""pacx.pipeline: the PaCX-MAE stages as functions of one configuration, used by ``recipes/``.

Profiles (``quick``, ``cpu``, ``paper``) live in :mod:`pacx.pipeline.profiles`; each stage writes
under ``<out>/<stage>/`` and a ``done.json`` keyed by the configuration it depends on.
"""

from __future__ import annotations

from .cli import parse_recipe_args, run_stage
from .config import config_hash, load_config, merge_config
from .profiles import PROFILES, get_profile
from .stages import (
    STAGES,
    cache_teachers,
    data_root,
    distill,
    pretrain_mae,
    stage_is_done,
    train_ecg_teacher,
    train_lab_dae,
)

__all__ = [
    "PROFILES",
    "STAGES",
    "cache_teachers",
    "config_hash",
    "data_root",
    "distill",
    "get_profile",
    "load_config",
    "merge_config",
    "parse_recipe_args",
    "pretrain_mae",
    "run_stage",
    "stage_is_done",
    "train_ecg_teacher",
    "train_lab_dae",
]
