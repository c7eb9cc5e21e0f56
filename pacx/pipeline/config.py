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

import pacx

from .profiles import PROFILES, get_profile
from .schema import validate_config

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


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line: what went wrong and where (``line L, column C``)."""
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + str(getattr(err, "problem", None) or err).replace("\n", " ")


def _parse_override(item: str) -> dict[str, Any]:
    if "=" not in item:
        raise ValueError(f"--set expects section.key=value, got {item!r}")
    dotted, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ValueError(f"--set {item}: the value is not valid YAML ({_yaml_problem(err)})") from None
    nested: dict[str, Any] = {}
    cursor = nested
    keys = dotted.strip().split(".")
    for key in keys[:-1]:
        cursor = cursor.setdefault(key, {})
    cursor[keys[-1]] = value
    return nested


def load_config(
    profile: str = "cpu", config_file: str | Path | None = None, overrides: Sequence[str] = (),
    updates: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Resolve and validate a run configuration.

    Args:
        profile: a name of :data:`PROFILES`; a config file may also name it as ``profile``.
        config_file: optional YAML or JSON file whose (nested) keys override the profile; it may
            also hold ``seed`` (the output of ``--print-config`` is such a file).
        overrides: ``"section.key=value"`` strings (values parsed as YAML), applied after the file.
        updates: a nested mapping applied last, values taken as they are (``seed`` included);
            how the recipes apply flags such as ``--data-root``.

    Returns:
        The nested configuration dict, with ``profile`` and ``seed`` (default 0) recorded in it.

    Raises:
        FileNotFoundError: when ``config_file`` does not exist.
        ValueError: for a file that is not valid YAML/JSON (naming the file and the line), a
            malformed override, or a configuration the schema refuses
            (:class:`pacx.pipeline.schema.ConfigError`, naming the key).

    Example:
        >>> load_config("quick", overrides=["distill.epochs=5"])["distill"]["epochs"]
        5
    """
    file_cfg: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            file_cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML/JSON: {_yaml_problem(err)}") from None
        if not isinstance(file_cfg, dict):
            raise ValueError(f"{path}: expected a mapping at the top level, got {type(file_cfg).__name__}")
        profile = file_cfg.pop("profile", profile)
    seed = file_cfg.pop("seed", 0)
    cfg = get_profile(profile)
    cfg = merge_config(cfg, file_cfg)
    for item in overrides:
        cfg = merge_config(cfg, _parse_override(item))
    updates = dict(updates or {})
    seed = updates.pop("seed", seed)
    cfg = merge_config(cfg, updates)
    return validate_config({"profile": profile, "seed": seed, **cfg})


def config_hash(obj: Any) -> str:
    """Short stable hash of a JSON-serialisable object (used to skip finished stages)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def add_common_arguments(parser: argparse.ArgumentParser, default_out: str) -> argparse.ArgumentParser:
    """Add the options every recipe shares."""
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu",
                        help="quick (about 2 min, tests), cpu (default, about 24 min on 2 cores), gpu (one H100/H200), "
                             "paper (GPUs), prior (rebuilds the shipped Stage-1 prior)")
    parser.add_argument("--config", default=None, help="YAML or JSON file overriding the profile")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one value, e.g. --set distill.epochs=5 (repeatable)")
    parser.add_argument("--out", default=default_out, help="output folder")
    parser.add_argument("--seed", type=int, default=None, help="global seed (default: the config file's, else 0)")
    parser.add_argument("--data", choices=["synthetic", "symile"], default=None,
                        help="data source (None: the profile's, synthetic for quick/cpu)")
    parser.add_argument("--data-root", default=None, help="Symile-MIMIC root holding data_npy/ (with --data symile)")
    parser.add_argument("--force", action="store_true", help="rerun even if outputs exist for this configuration")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved, validated configuration as YAML (a valid --config file) and exit")
    parser.add_argument("--version", action="version", version=f"%(prog)s (pacx {pacx.__version__})")
    return parser


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Build the run configuration from parsed recipe arguments, validated as a whole.

    Raises:
        ValueError: see :func:`load_config`; the options given as flags are checked with the rest.
    """
    updates: dict[str, Any] = {"data": {}, "mae": {}}
    if args.data is not None:
        updates["data"]["source"] = args.data
    if args.data_root is not None:
        updates["data"]["root"] = args.data_root
    if getattr(args, "mae_checkpoint", None) is not None:
        updates["mae"]["checkpoint"] = args.mae_checkpoint
    if args.seed is not None:
        updates["seed"] = args.seed
    return load_config(args.profile, args.config, args.overrides, updates)
