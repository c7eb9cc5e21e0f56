"""Stage-2 variants trained beside the full objective: the ablations and the shuffled-teacher control."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["EACH_TEACHER_ONLY", "available_variants", "resolve_variants", "variant_config"]

# Overrides of the ``distill`` section. ``<teacher>_only`` is added for every configured teacher.
_FIXED: dict[str, dict[str, Any]] = {
    "shuffled_teachers": {"shuffle_teachers": True},  # the control: no patient correspondence
    "regression_only": {"lambda_c": 0.0},
    "contrastive_only": {"lambda_r": 0.0},
    "last_4_blocks": {"tuning": "last_n_blocks"},
    "full_tuning": {"tuning": "full", "lr_scale": 0.1},  # a tenth of the adapter learning rate
}
# In a ``variants`` list, this entry stands for ``<teacher>_only`` of every configured teacher.
EACH_TEACHER_ONLY = "<teacher>_only"


def available_variants(teachers: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Every variant for a run with these teachers: ``{name: distill overrides}``."""
    only = {f"{t}_only": {"teachers": [t]} for t in teachers} if len(teachers) > 1 else {}
    return {**_FIXED, **only}


def variant_config(cfg: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The run configuration of variant ``name`` (its overrides applied to ``distill``).

    Raises:
        ValueError: for a variant that does not exist for the configured teachers.
    """
    known = available_variants(cfg["distill"]["teachers"])
    if name not in known:
        raise ValueError(f"unknown Stage-2 variant {name!r}; expected one of {sorted(known)}")
    variant = copy.deepcopy(dict(cfg))
    for key, value in known[name].items():
        if key == "lr_scale":
            variant["distill"]["lr"] = cfg["distill"]["lr"] * value
        else:
            variant["distill"][key] = value
    return variant


def resolve_variants(names: Sequence[str], teachers: Sequence[str]) -> list[str]:
    """Expand a ``variants`` list (``"<teacher>_only"`` becomes one entry per teacher) and check every name.

    Raises:
        ValueError: for a name that is not a variant of a run with these teachers.
    """
    known = available_variants(teachers)
    out: list[str] = []
    for name in names:
        expanded = [f"{t}_only" for t in teachers if f"{t}_only" in known] if name == EACH_TEACHER_ONLY else [name]
        for item in expanded:
            if item not in known:
                raise ValueError(f"unknown Stage-2 variant {item!r}; expected one of {sorted(known)} or "
                                 f"{EACH_TEACHER_ONLY!r}")
            out += [item] if item not in out else []
    return out
