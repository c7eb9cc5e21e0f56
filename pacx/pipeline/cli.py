"""Command-line plumbing shared by the recipes: parse, resolve the configuration, run stages."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pacx.distributed import init_distributed, is_main_process
from pacx.io import save_json

from .config import add_common_arguments, config_from_args
from .stages import stage_is_done

__all__ = ["parse_recipe_args", "run_stage"]

DEFAULT_OUT = "runs/pacx_full"


def parse_recipe_args(
    description: str,
    argv: Sequence[str] | None = None,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Parse a recipe's command line and resolve its configuration.

    Every recipe takes the same core options (``--profile``, ``--config``, ``--set``, ``--out``,
    ``--seed``, ``--data``, ``--data-root``, ``--force``) plus checkpoint options, so any stage can
    be rerun alone on the folder ``pacx_full.py`` wrote.
    """
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_arguments(parser, DEFAULT_OUT)
    parser.add_argument("--mae-checkpoint", default=None,
                        help="MAE weights to start from instead of pretraining (facebookresearch, timm, "
                             "Lightning or safetensors layout)")
    parser.add_argument("--ecgfounder-checkpoint", default=None,
                        help="ECGFounder 12_lead_ECGFounder.pth ({'state_dict': ...}) as the ECG teacher")
    parser.add_argument("--resume", default=None,
                        help="continue a stage's training from 'latest' or a checkpoint folder")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    return args, config_from_args(args)


def run_stage(stage: str, fn: Callable[..., dict[str, Any]], cfg: dict[str, Any], out: str | Path,
              force: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Run one stage unless it already finished for this configuration (``force`` reruns it)."""
    init_distributed()
    out = Path(out)
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        save_json(cfg, out / "run_config.json")
    if not force and stage_is_done(out, stage, cfg):
        if is_main_process():
            print(f"[pacx] {stage}: outputs for this configuration exist in {out / stage}, skipping (--force reruns)")
        return json.loads((out / stage / "done.json").read_text())
    start = time.perf_counter()
    if is_main_process():
        print(f"[pacx] {stage}: running (profile {cfg['profile']}, seed {cfg['seed']})", flush=True)
    info = fn(cfg, out, **kwargs)
    if is_main_process():
        print(f"[pacx] {stage}: done in {time.perf_counter() - start:.1f} s", flush=True)
    return info
