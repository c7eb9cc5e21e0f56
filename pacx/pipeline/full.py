"""The whole PaCX-MAE method in order: data, Stage 1, teachers, Stage 2, ablations, Stage 3, report."""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pacx.distributed import barrier, init_distributed, is_main_process

from .cli import run_stage
from .evaluation import evaluate_encoders, evaluate_variant, summarize_metric
from .report import write_report
from .stages import STAGES, data_root, distill

__all__ = ["ABLATIONS", "DEFAULT_ABLATIONS", "run_pipeline"]

# Each ablation is a Stage-2 variant: overrides of the ``distill`` section.
ABLATIONS: dict[str, dict[str, Any]] = {
    "ecg_only": {"teachers": ["ecg"]},
    "labs_only": {"teachers": ["labs"]},
    "contrastive_only": {"lambda_r": 0.0},
    "regression_only": {"lambda_c": 0.0},
    "last_4_blocks": {"tuning": "last_n_blocks"},
    "full_tuning": {"tuning": "full", "lr": None},
}
# The paper's claim that regression alone is clearly worse is checked on every default run.
DEFAULT_ABLATIONS: tuple[str, ...] = ("regression_only",)


def _variant_config(cfg: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    variant = copy.deepcopy(dict(cfg))
    for key, value in overrides.items():
        if key == "lr" and value is None:  # full fine-tuning: a tenth of the adapter learning rate
            variant["distill"]["lr"] = cfg["distill"]["lr"] * 0.1
        else:
            variant["distill"][key] = value
    return variant


def run_pipeline(
    cfg: dict[str, Any],
    out: str | Path,
    force: bool = False,
    ablations: Sequence[str] = DEFAULT_ABLATIONS,
    real_eval: bool = False,
) -> dict[str, Any]:
    """Run every stage (skipping those finished for this configuration), evaluate, write the report.

    Returns:
        The ``results.json`` payload.
    """
    init_distributed()
    out = Path(out)
    unknown = [a for a in ablations if a not in ABLATIONS]
    if unknown:
        raise ValueError(f"unknown ablations {unknown}; expected a subset of {sorted(ABLATIONS)}")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    root = data_root(cfg, out)
    timings["data"] = time.perf_counter() - start
    stage_info: dict[str, Any] = {}
    for stage, fn in STAGES.items():
        t0 = time.perf_counter()
        stage_info[stage] = run_stage(stage, fn, cfg, out, force=force)
        timings[stage] = time.perf_counter() - t0

    ablation_rows: dict[str, Any] = {}
    for name in ablations:
        t0 = time.perf_counter()
        variant = _variant_config(cfg, ABLATIONS[name])
        stage = f"ablation_{name}"
        run_stage(stage, lambda c, o, s=stage: distill(c, o, stage=s, backbone_name=s), variant, out, force=force)
        if is_main_process():
            ablation_rows[name] = {"overrides": ABLATIONS[name], **evaluate_variant(variant, out, root, stage)}
        timings[stage] = time.perf_counter() - t0

    results: dict[str, Any] = {}
    if is_main_process():
        t0 = time.perf_counter()
        results = evaluate_encoders(cfg, out, root)
        timings["evaluate"] = time.perf_counter() - t0
        if ablation_rows:
            results["ablations"] = {
                "full_objective": {"physiology_auroc": {t: v["pacx"]["mean"] for t, v in results["tasks"].items()
                                                        if v["kind"] == "physiology"},
                                   "alignment": {t: v["pacx"] for t, v in results.get("alignment", {}).items()}},
                **ablation_rows,
            }
        if real_eval:
            t0 = time.perf_counter()
            results["real_data"] = _real_eval(cfg, out)
            timings["real_eval"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - start
        results = {
            "profile": cfg["profile"],
            "seed": cfg["seed"],
            "mask_ratio": float(stage_info["mae"]["mask_ratio"]),
            "timings": {k: round(v, 2) for k, v in timings.items()},
            **results,
            "config": cfg,
        }
        write_report(results, out)
    barrier()
    return results


def _real_eval(cfg: Mapping[str, Any], out: Path) -> dict[str, Any]:
    """Montgomery TB AUROC and lung Dice/IoU of the three encoders (real radiographs).

    The summary may hold numpy values; :func:`write_report` makes the whole payload JSON-safe.
    """
    from pacx.engine import load_backbone
    from pacx.eval import evaluate_montgomery

    encoders = {n: load_backbone(out / "backbones" / n).eval() for n in ("random", "mae", "pacx")}
    size = next(iter(encoders.values())).patch_embed.img_size[0]
    ev = cfg["eval"]
    res = evaluate_montgomery(encoders, image_size=size, seeds=tuple(ev["seeds"]), cache_dir=out / "eval" / "features",
                              n_resamples=int(ev["bootstrap_resamples"]))
    summary: dict[str, Any] = {"data": res.get("data", {})}
    summary["tb_auroc"] = {n: summarize_metric(r, "auroc") for n, r in res["classification"].items()}
    for metric in ("dice", "iou"):
        summary[f"lung_{metric}"] = {n: {"mean": float(r[metric]), "ci": [float(v) for v in r["ci"].get(metric, [])]}
                                     for n, r in res["segmentation"].items()}
    summary["comparisons"] = res.get("comparisons", {})
    return summary
