"""What every stage recipe shares: the data roots, trainer settings and skip-if-done markers.

A stage writes under ``<out>/<stage>/`` and finishes by writing ``done.json`` holding the hash of
the configuration it depends on (:func:`stage_dependencies`). :func:`stage_is_done` compares
that hash, so a rerun with the same configuration skips a finished stage and a changed
configuration reruns it. The stages themselves are the recipes (``recipes/*.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pacx.data.synthetic import make_cohort, make_cxr_corpus
from pacx.distributed import barrier, is_main_process
from pacx.engine import TrainerConfig
from pacx.io import load_json, save_json
from pacx.nets import PaCXDistiller

from .config import config_hash
from .ranks import main_process_first

__all__ = [
    "TEACHER_SPLITS",
    "build_distiller",
    "data_root",
    "mark_done",
    "pretraining_root",
    "probe_root",
    "stage_dependencies",
    "stage_is_done",
    "trainer_config",
]

TEACHER_SPLITS = ("train", "val", "test")


def stage_dependencies(cfg: Mapping[str, Any], stage: str) -> dict[str, Any]:
    """The part of the configuration a stage's outputs depend on (its skip key).

    ``data``: data; ``mae``: data and mae; ``teacher_<name>``: data and that teacher's section; ``teachers`` (the
    embedding cache): data and the configured teachers; ``distill`` and every variant: data, mae,
    the configured teachers and distill; anything else: the whole configuration but ``trainer``.
    """
    teachers = {n: cfg["teachers"][n] for n in cfg["distill"]["teachers"]}
    if stage == "data":
        deps: dict[str, Any] = {"data": cfg["data"]}
    elif stage == "mae":
        deps = {"data": cfg["data"], "mae": cfg["mae"]}
    elif stage.startswith("teacher_"):
        name = stage[len("teacher_"):]
        deps = {"data": cfg["data"], "teacher": cfg["teachers"][name]}
    elif stage == "teachers":
        deps = {"data": cfg["data"], "teachers": teachers}
    elif stage == "distill" or stage.startswith("variant_"):
        deps = {k: cfg[k] for k in ("data", "mae", "distill")} | {"teachers": teachers}
    else:
        deps = {k: v for k, v in cfg.items() if k != "trainer"}
    return {"seed": cfg["seed"], **deps}


def _stage_key(cfg: Mapping[str, Any], stage: str) -> str:
    return config_hash(stage_dependencies(cfg, stage))


def stage_is_done(out: str | Path, stage: str, cfg: Mapping[str, Any]) -> bool:
    """True when ``<out>/<stage>/done.json`` exists and was written for this configuration."""
    marker = Path(out) / stage / "done.json"
    return marker.is_file() and load_json(marker).get("config_hash") == _stage_key(cfg, stage)


def mark_done(out: str | Path, stage: str, cfg: Mapping[str, Any], info: Mapping[str, Any]) -> None:
    """Write ``<out>/<stage>/done.json`` (rank 0) with the stage's configuration hash and ``info``."""
    if is_main_process():
        save_json({"stage": stage, "config_hash": _stage_key(cfg, stage), **info}, Path(out) / stage / "done.json")
    barrier()


def trainer_config(cfg: Mapping[str, Any], section: Mapping[str, Any], name: str) -> TrainerConfig:
    """The :class:`TrainerConfig` of one stage: its section's optimisation keys plus ``cfg["trainer"]``.

    Args:
        cfg: the run configuration.
        section: the stage's section (``epochs``, ``lr``, ``weight_decay`` and optionally
            ``betas``, ``warmup_fraction``, ``min_lr_ratio``, ``grad_clip``).
        name: the stage name shown on progress bars.
    """
    tr, epochs = cfg["trainer"], max(1, int(section["epochs"]))
    kwargs: dict[str, Any] = dict(
        epochs=epochs,
        lr=float(section["lr"]),
        weight_decay=float(section["weight_decay"]),
        betas=tuple(section.get("betas", (0.9, 0.999))),
        warmup_epochs=float(section.get("warmup_fraction", 0.0)) * epochs,
        min_lr_ratio=float(section.get("min_lr_ratio", 0.0)),
        grad_clip=section.get("grad_clip"),
        amp=tr["amp"],
        compile=bool(tr["compile"]),
        log_every=int(tr["log_every"]),
        save_every=int(tr["save_every"]) or None,
        keep_last=int(tr["keep_last"]),
        seed=int(cfg["seed"]),
        deterministic=False,
    )
    if "name" in {f.name for f in dataclasses.fields(TrainerConfig)}:
        kwargs["name"] = name
    return TrainerConfig(**kwargs)


def _synthetic(cfg: Mapping[str, Any], out: str | Path, make: Any, *args: Any, **kwargs: Any) -> Path:
    """Generate a synthetic dataset once (rank 0 first, then the others find it cached)."""
    cache = Path(cfg["data"].get("cache_dir") or Path(out) / "data")
    return main_process_first(make, cache, *args, **kwargs)  # no deadline: generation can be long


def data_root(cfg: Mapping[str, Any], out: str | Path) -> Path:
    """The cohort root: the synthetic cohort (generated once, cached by its parameters) or Symile-MIMIC."""
    data = cfg["data"]
    if data["source"] == "symile":
        return Path(data["root"])
    return _synthetic(cfg, out, make_cohort, n_patients=int(data["n_patients"]),
                      image_size=int(data["image_size"]), seed=int(cfg["seed"]))


def probe_root(cfg: Mapping[str, Any], out: str | Path) -> Path:
    """Where the probe splits (``probe_train``/``probe_val``/``probe_test``) live.

    A synthetic run with ``data.probe_sizes`` draws its own CXR-only probe patients from the
    cohort's generator (a random stream of their own, generated once and cached); otherwise the
    probe splits are those of the cohort root.
    """
    data = cfg["data"]
    if data["source"] != "synthetic" or not data.get("probe_sizes"):
        return data_root(cfg, out)
    return _synthetic(cfg, out, make_cxr_corpus, dict(data["probe_sizes"]), image_size=int(data["image_size"]),
                      seed=int(cfg["seed"]), kind="probe")


def pretraining_root(cfg: Mapping[str, Any], out: str | Path) -> Path:
    """The images Stage 1 learns from: an unpaired CXR-only corpus of its own (``mae.corpus``) or the cohort."""
    corpus = cfg["mae"].get("corpus")
    if not corpus:
        return data_root(cfg, out)
    return _synthetic(cfg, out, make_cxr_corpus, {"train": int(corpus["n_train"])},
                      image_size=int(corpus["image_size"]), seed=int(corpus["seed"]), kind="prior")


def build_distiller(section: Mapping[str, Any], student: Any, teacher_dims: Mapping[str, int]) -> PaCXDistiller:
    """The Stage-2 module of a ``distill`` section around ``student`` (LoRA applied inside).

    The loss weights come from the named preset ``loss_weights`` (one source:
    :data:`pacx.nets.LOSS_WEIGHT_PRESETS`) unless ``lambda_c`` / ``lambda_r`` override them.
    """
    lora = {"r": section["lora"]["r"], "alpha": section["lora"]["alpha"], "dropout": section["lora"]["dropout"],
            "targets": tuple(section["lora"]["targets"])}
    weights = {k: None if section.get(k) is None else float(section[k]) for k in ("lambda_c", "lambda_r")}
    return PaCXDistiller(
        student, dict(teacher_dims), shared_dim=int(section["shared_dim"]),
        loss_weights=section.get("loss_weights", "authors_training"), **weights,
        temperature=float(section["temperature"]), label_smoothing=float(section["label_smoothing"]),
        head_dropout=float(section["head_dropout"]), tuning=section["tuning"], lora=lora,
        trainable_norms=section["trainable_norms"],
    )
