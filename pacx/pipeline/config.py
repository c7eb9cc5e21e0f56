"""Configuration of pipeline runs: profile + config file + command-line overrides."""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .profiles import PROFILES, get_profile

__all__ = ["add_common_arguments", "config_from_args", "config_hash", "load_config", "merge_config"]


def merge_config(base: dict[str, Any], update: Mapping[str, Any], path: str = "") -> dict[str, Any]:
    """Deep-merge ``update`` into a copy of ``base``; unknown keys are an error.

    Raises:
        ValueError: when ``update`` names a key that ``base`` does not have.
    """
    out = copy.deepcopy(base)
    for key, value in update.items():
        where = f"{path}{key}"
        if key not in out:
            raise ValueError(f"unknown configuration key {where!r}; known keys here: {sorted(out)}")
        if isinstance(out[key], dict) and isinstance(value, Mapping):
            out[key] = merge_config(out[key], value, where + ".")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _parse_override(item: str) -> dict[str, Any]:
    if "=" not in item:
        raise ValueError(f"--set expects section.key=value, got {item!r}")
    dotted, raw = item.split("=", 1)
    value = yaml.safe_load(raw)
    nested: dict[str, Any] = {}
    cursor = nested
    keys = dotted.strip().split(".")
    for key in keys[:-1]:
        cursor = cursor.setdefault(key, {})
    cursor[keys[-1]] = value
    return nested


def load_config(
    profile: str = "cpu", config_file: str | Path | None = None, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """Resolve a run configuration.

    Args:
        profile: ``"quick"``, ``"cpu"`` or ``"paper"``; a config file may also name it as ``profile``.
        config_file: optional YAML or JSON file whose (nested) keys override the profile.
        overrides: ``"section.key=value"`` strings (values parsed as YAML), applied last.

    Returns:
        The nested configuration dict, with ``profile`` recorded in it.
    """
    file_cfg: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        file_cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(file_cfg, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        profile = file_cfg.pop("profile", profile)
    cfg = get_profile(profile)
    cfg = merge_config(cfg, file_cfg)
    for item in overrides:
        cfg = merge_config(cfg, _parse_override(item))
    cfg["profile"] = profile
    return cfg


def config_hash(obj: Any) -> str:
    """Short stable hash of a JSON-serialisable object (used to skip finished stages)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def add_common_arguments(parser: argparse.ArgumentParser, default_out: str) -> argparse.ArgumentParser:
    """Add the options every recipe shares."""
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu",
                        help="quick (about 2 min, tests), cpu (default, <=15 min on 2 cores), paper (GPUs)")
    parser.add_argument("--config", default=None, help="YAML or JSON file overriding the profile")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one value, e.g. --set distill.epochs=5 (repeatable)")
    parser.add_argument("--out", default=default_out, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="global seed")
    parser.add_argument("--data", choices=["synthetic", "symile"], default=None,
                        help="data source (None: the profile's, synthetic for quick/cpu)")
    parser.add_argument("--data-root", default=None, help="Symile-MIMIC root holding data_npy/ (with --data symile)")
    parser.add_argument("--force", action="store_true", help="rerun even if outputs exist for this configuration")
    return parser


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Build the run configuration from parsed recipe arguments."""
    cfg = load_config(args.profile, args.config, args.overrides)
    if args.data is not None:
        cfg["data"]["source"] = args.data
    if args.data_root is not None:
        cfg["data"]["root"] = args.data_root
    if cfg["data"]["source"] == "symile" and not cfg["data"]["root"]:
        raise ValueError("--data symile needs --data-root PATH (the folder that holds data_npy/)")
    for flag, (section, key) in {
        "mae_checkpoint": ("mae", "checkpoint"),
        "ecgfounder_checkpoint": ("ecg_teacher", "checkpoint"),
    }.items():
        value = getattr(args, flag, None)
        if value is not None:
            cfg[section][key] = value
    cfg["seed"] = args.seed
    return cfg
