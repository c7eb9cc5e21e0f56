"""pacx.pipeline: the generic machinery of the recipes (the method itself is ``recipes/``).

Profiles (``quick``, ``cpu``, ``gpu``, ``paper``, ``prior``) and configuration resolution, the
stage markers (each stage writes under ``<out>/<stage>/`` and a ``done.json`` keyed by the
configuration it depends on), the Stage-2 variants, and the evaluation and report of a run.
"""

from __future__ import annotations

from .cli import parse_recipe_args, run_stage
from .config import config_hash, load_config, merge_config
from .evaluation import evaluate_run
from .profiles import PROFILES, get_profile
from .report import check_claims, write_report
from .stages import (
    TEACHER_SPLITS,
    build_distiller,
    data_root,
    mark_done,
    pretraining_root,
    probe_root,
    stage_dependencies,
    stage_is_done,
    trainer_config,
)
from .variants import EACH_TEACHER_ONLY, available_variants, resolve_variants, variant_config

__all__ = [
    "EACH_TEACHER_ONLY",
    "PROFILES",
    "TEACHER_SPLITS",
    "available_variants",
    "build_distiller",
    "check_claims",
    "config_hash",
    "data_root",
    "evaluate_run",
    "get_profile",
    "load_config",
    "mark_done",
    "merge_config",
    "parse_recipe_args",
    "pretraining_root",
    "probe_root",
    "resolve_variants",
    "run_stage",
    "stage_dependencies",
    "stage_is_done",
    "trainer_config",
    "variant_config",
    "write_report",
]
