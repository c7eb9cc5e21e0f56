"""Validation of a resolved run configuration, as a whole, before any stage runs.

The schema is the profiles themselves: every key that some profile (:data:`PROFILES`) has is
known, and a value must have one of the types that key holds in the profiles (a key that is
``null`` somewhere may be ``null``). Integers are accepted where a number is expected, and a
numeric string (YAML 1.1 reads ``1e-4`` as a string) is read as a float. On top of the types,
:data:`RULES` gives the allowed values and ranges where they matter (positive epochs and batch
sizes, probabilities in [0, 1], the named options of the library), and a few checks look at
several keys together (the configured teachers are registered and have a section, the
Stage-2 variants exist, a Symile-MIMIC run names its root, the MAE has a preset or an
architecture).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pacx.adapters.tuning import TRAINABLE_NORM_OPTIONS, TUNING_STRATEGIES
from pacx.engine.config import AMP_MODES
from pacx.eval.linear_probe import PROBE_METHODS
from pacx.nets import LOSS_WEIGHT_PRESETS
from pacx.nets.mae import MAE_PRESETS
from pacx.teachers import list_teachers

from .profiles import PROFILES
from .variants import resolve_variants

__all__ = ["RULES", "ConfigError", "validate_config"]


class ConfigError(ValueError):
    """A configuration value (named by its dotted ``key``) that the schema does not allow."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


Rule = Callable[[Any], "str | None"]  # None when the value is allowed, else what was expected


def _between(low: float | None = None, high: float | None = None, open_low: bool = False,
             open_high: bool = False, each: bool = False) -> Rule:
    """A range on a number (or on every item of a list with ``each``)."""
    lo = "" if low is None else f"{'>' if open_low else '>='} {low:g}"
    hi = "" if high is None else f"{'<' if open_high else '<='} {high:g}"
    text = ("every item " if each else "") + " and ".join(t for t in (lo, hi) if t)

    def check(value: Any) -> str | None:
        for v in (value if each else [value]):
            if v is None:
                continue
            if low is not None and (v <= low if open_low else v < low):
                return text
            if high is not None and (v >= high if open_high else v > high):
                return text
        return None

    return check


def _one_of(options: Sequence[Any] | Callable[[], Sequence[Any]]) -> Rule:
    def check(value: Any) -> str | None:
        allowed = list(options() if callable(options) else options)
        return None if value is None or value in allowed else f"one of {allowed}"

    return check


def _length(n: int | None = None, each: Rule | None = None) -> Rule:
    """A list of exactly ``n`` items (any non-empty length when None), each passing ``each``."""
    def check(value: Any) -> str | None:
        if value is None:
            return None
        if (n is None and not value) or (n is not None and len(value) != n):
            return f"a list of {n} items" if n is not None else "a non-empty list"
        return each(value) if each is not None else None

    return check


_POSITIVE_INT, _NON_NEGATIVE, _POSITIVE = _between(1), _between(0), _between(0, open_low=True)
_PROBABILITY = _between(0, 1)

# Allowed values beyond the type, by dotted key; ``*`` matches any part, the first match applies.
RULES: dict[str, Rule] = {
    "profile": _one_of(sorted(PROFILES)),
    "seed": _NON_NEGATIVE,
    "data.source": _one_of(("synthetic", "symile")),
    "data.num_workers": _NON_NEGATIVE,
    "mae.preset": _one_of(lambda: sorted(MAE_PRESETS)),
    "mae.arch.mlp_ratio": _POSITIVE,
    "mae.mask_ratio": _between(0, 1, open_low=True, open_high=True),
    "mae.corpus.seed": _NON_NEGATIVE,
    "teachers.*.epochs": _NON_NEGATIVE,  # 0: weights loaded from teachers.<name>.checkpoint
    "*.epochs": _POSITIVE_INT,
    "*.lr": _POSITIVE,
    "*.weight_decay": _NON_NEGATIVE,
    "*.betas": _length(2, _between(0, 1, open_high=True, each=True)),
    "*.warmup_fraction": _PROBABILITY,
    "*.min_lr_ratio": _PROBABILITY,
    "*.grad_clip": _POSITIVE,
    "*.corruption_prob": _PROBABILITY,
    "*dropout": _PROBABILITY,
    "distill.label_smoothing": _between(0, 1, open_high=True),
    "distill.loss_weights": _one_of(lambda: sorted(LOSS_WEIGHT_PRESETS)),
    "distill.lambda_*": _NON_NEGATIVE,
    "distill.temperature": _POSITIVE,
    "distill.tuning": _one_of(TUNING_STRATEGIES),
    "distill.trainable_norms": _one_of(TRAINABLE_NORM_OPTIONS),
    "distill.lora.alpha": _POSITIVE,
    "distill.lora.targets": _length(),
    "distill.export": _one_of(("best", "final")),
    "distill.teachers": _length(),
    "eval.seeds": _length(None, _between(0, each=True)),
    "eval.probe_method": _one_of(PROBE_METHODS),
    "eval.low_data_fractions": _length(None, _between(0, 1, open_low=True, each=True)),
    "eval.segmentation_sizes": _length(3, _between(1, each=True)),
    "eval.bootstrap_resamples": _NON_NEGATIVE,
    "eval.rollout_cases": _NON_NEGATIVE,
    "trainer.amp": _one_of(AMP_MODES),
    "trainer.save_every": _NON_NEGATIVE,
    # Every other integer is a size or a count (patients, pixels, dims, batch, steps): >= 1.
}

# Types of keys that are null in every profile (every other key's types come from the profiles).
_DECLARED_TYPES: dict[str, tuple[type, ...]] = {
    "data.root": (str,),
    "data.cache_dir": (str,),
    "mae.checkpoint": (str,),
    "teachers.*.checkpoint": (str,),
    "distill.lambda_c": (float,),
    "distill.lambda_r": (float,),
}
_TYPE_NAMES = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
               dict: "a mapping", type(None): "null"}


@dataclass
class _Spec:
    """What one key may hold: its types, and the schema of its keys (mapping) or items (list)."""

    types: set[type] = field(default_factory=set)
    keys: dict[str, _Spec] = field(default_factory=dict)
    items: _Spec | None = None

    def expected(self) -> str:
        names = [_TYPE_NAMES[t] for t in (bool, int, float, str, list, dict, type(None)) if t in self.types]
        return " or ".join(n for n in names if not (n == "an integer" and float in self.types))


def _infer(values: Sequence[Any], key: str = "") -> _Spec:
    """The schema of ``key`` from its values in every profile."""
    spec = _Spec({type(v) for v in values})
    if spec.types == {type(None)}:
        declared = next((t for p, t in _DECLARED_TYPES.items() if fnmatch.fnmatchcase(key, p)), None)
        if declared is None:
            raise RuntimeError(f"profile key {key!r} is null in every profile: declare its type in _DECLARED_TYPES")
        spec.types |= set(declared)
    mappings = [v for v in values if isinstance(v, dict)]
    for name in dict.fromkeys(k for m in mappings for k in m):
        spec.keys[name] = _infer([m[name] for m in mappings if name in m], f"{key}.{name}" if key else name)
    lists = [item for v in values if isinstance(v, list) for item in v]
    if list in spec.types:
        spec.items = _infer(lists, key + "[]") if lists else None
    return spec


def _schema() -> _Spec:
    spec = _infer(list(PROFILES.values()))
    spec.keys["profile"] = _Spec({str})
    spec.keys["seed"] = _Spec({int})
    return spec


def _coerce(value: Any, spec: _Spec, key: str) -> Any:
    """``value`` checked against ``spec`` (recursively), with numbers and lists normalised."""
    kind = type(value)
    if kind is tuple and list in spec.types:
        value, kind = list(value), list
    if kind is int and kind not in spec.types and float in spec.types:
        return float(value)
    if kind is str and str not in spec.types and float in spec.types:
        try:
            return float(value)
        except ValueError:
            pass
    if kind not in spec.types:
        raise ConfigError(key, f"expected {spec.expected()}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise ConfigError(key, f"expected a finite number, got {value!r}")
    if kind is dict:
        unknown = sorted(str(k) for k in set(value) - set(spec.keys))
        if unknown:
            where = f"{key}." if key else ""
            raise ConfigError(where + unknown[0], f"unknown key; known keys here: {sorted(spec.keys)}")
        missing = [k for k in spec.keys if k not in value and k not in ("profile", "seed")]
        if missing:
            raise ConfigError(key, f"missing keys {missing}")
        return {k: _coerce(v, spec.keys[k], f"{key}.{k}" if key else k) for k, v in value.items()}
    if kind is list and spec.items is not None:
        return [_coerce(v, spec.items, f"{key}[{i}]") for i, v in enumerate(value)]
    return value


def _check_values(cfg: Any, key: str = "") -> None:
    """Apply :data:`RULES` to every key (and the >= 1 default to the other integers)."""
    rule = next((r for p, r in RULES.items() if fnmatch.fnmatchcase(key, p)), None)
    if rule is None and type(cfg) is int:
        rule = _POSITIVE_INT
    problem = rule(cfg) if rule is not None else None
    if problem is not None:
        raise ConfigError(key, f"expected {problem}, got {cfg!r}")
    if isinstance(cfg, dict):
        for k, v in cfg.items():
            _check_values(v, f"{key}.{k}" if key else k)


def _check_together(cfg: Mapping[str, Any]) -> None:
    """The checks that read several keys."""
    teachers = cfg["distill"]["teachers"]
    for i, name in enumerate(teachers):
        if name not in list_teachers():
            raise ConfigError(f"distill.teachers[{i}]",
                              f"expected a registered teacher {list_teachers()}, got {name!r}")
        if name not in cfg["teachers"]:
            raise ConfigError(f"distill.teachers[{i}]", f"teacher {name!r} has no section teachers.{name}")
    if len(set(teachers)) != len(teachers):
        raise ConfigError("distill.teachers", f"expected each teacher once, got {teachers}")
    if "variants" in cfg:
        try:
            resolve_variants(cfg["variants"], teachers)
        except ValueError as err:
            raise ConfigError("variants", str(err)) from None
    if cfg["data"]["source"] == "symile" and not cfg["data"]["root"]:
        raise ConfigError("data.root", "a Symile-MIMIC run (data.source: symile) needs the folder holding data_npy/ "
                                       "(--data-root PATH)")
    if not cfg["mae"]["preset"] and not cfg["mae"]["arch"]:
        raise ConfigError("mae", "expected mae.preset or mae.arch, both are null")


def validate_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Check a resolved run configuration against the profiles' schema.

    Args:
        cfg: the nested configuration (a profile with overrides applied).

    Returns:
        A checked copy, with integers given for numbers and numeric strings read as floats.

    Raises:
        ConfigError: (a ``ValueError``) for the first unknown key, wrong type or bad value,
            naming the dotted key, what was expected and what was given.

    Example:
        >>> from pacx.pipeline import get_profile
        >>> cfg = get_profile("quick")
        >>> validate_config(cfg)["distill"]["epochs"]
        2
        >>> cfg["distill"]["epochs"] = "three"
        >>> validate_config(cfg)
        Traceback (most recent call last):
        ...
        pacx.pipeline.schema.ConfigError: distill.epochs: expected an integer, got 'three'
    """
    checked = _coerce(dict(cfg), _schema(), "")
    _check_values(checked)
    _check_together(checked)
    return checked
