"""Stage 3: setting checks, linear probes, low-data, segmentation, alignment and figures; the report.

Evaluates ``<out>/backbones/{random,mae,pacx}`` and every Stage-2 variant finished for this
configuration (the shuffled-teacher control, regression-only, ...) on one cached-feature
protocol, then writes ``<out>/results.json`` and ``<out>/results.md``. Run alone, it gives the
same report as ``pacx_full.py`` (timings come from each stage's ``done.json``).

Example:
    python recipes/evaluate.py --profile quick --out runs/demo
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pacx.distributed import is_main_process
from pacx.engine import load_backbone
from pacx.eval import evaluate_montgomery
from pacx.io import load_json
from pacx.pipeline import (
    available_variants,
    evaluate_run,
    parse_recipe_args,
    stage_is_done,
    variant_config,
    write_report,
)
from pacx.pipeline.evaluation import ENCODERS, summarize_metric
from pacx.pipeline.ranks import as_single_process, patient_barrier


def finished_variants(cfg: dict[str, Any], out: Path) -> dict[str, dict[str, Any]]:
    """The Stage-2 variants whose training finished for this configuration: ``{name: overrides}``."""
    known = available_variants(cfg["distill"]["teachers"])
    return {n: o for n, o in known.items() if stage_is_done(out, f"variant_{n}", variant_config(cfg, n))}


def real_data_rows(cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    """Montgomery TB AUROC and lung Dice/IoU of the three encoders (real radiographs)."""
    encoders = {n: load_backbone(out / "backbones" / n).eval() for n in ENCODERS}
    size, ev = encoders["mae"].patch_embed.img_size[0], cfg["eval"]
    res = evaluate_montgomery(encoders, image_size=size, seeds=tuple(ev["seeds"]), cache_dir=out / "eval" / "features",
                              n_resamples=int(ev["bootstrap_resamples"]))
    summary: dict[str, Any] = {"data": res.get("data", {}), "comparisons": res.get("comparisons", {})}
    summary["tb_auroc"] = {n: summarize_metric(r, "auroc") for n, r in res["classification"].items()}
    for metric in ("dice", "iou"):
        summary[f"lung_{metric}"] = {n: {"mean": float(r[metric]), "ci": [float(v) for v in r["ci"].get(metric, [])]}
                                     for n, r in res["segmentation"].items()}
    return summary


def stage_timings(out: Path) -> dict[str, float]:
    """Seconds of every finished stage of the run, from the ``done.json`` markers."""
    return {p.parent.name: round(float(load_json(p)["seconds"]), 2) for p in sorted(out.glob("*/done.json"))
            if "seconds" in load_json(p)}


def run(cfg: dict[str, Any], out: str | Path, real_eval: bool = False) -> dict[str, Any]:
    """Evaluate the run in ``out`` and write its report.

    Under ``torchrun`` rank 0 evaluates alone (:func:`pacx.pipeline.ranks.as_single_process`)
    while the other ranks wait for it without a deadline (:func:`pacx.pipeline.ranks.patient_barrier`)
    and return ``{}``.
    """
    try:
        if not is_main_process():
            return {}
        with as_single_process():  # MONAI's metrics would otherwise gather from ranks that are not there
            return _evaluate(cfg, Path(out), real_eval)
    finally:
        patient_barrier()


def _evaluate(cfg: dict[str, Any], out: Path, real_eval: bool) -> dict[str, Any]:
    """Stage 3 and the report, on this process."""
    results = evaluate_run(cfg, out, finished_variants(cfg, out))
    if real_eval:
        results["real_data"] = real_data_rows(cfg, out)
    mae = load_json(out / "mae" / "done.json")
    results = {"profile": cfg["profile"], "seed": cfg["seed"], "mask_ratio": mae.get("mask_ratio"),
               "timings": {**stage_timings(out), "evaluate": round(results["eval_seconds"], 2)},
               **results, "config": cfg}
    write_report(results, out)
    return results


def _extra(parser: Any) -> None:
    parser.add_argument("--real-eval", action="store_true",
                        help="add Montgomery TB AUROC and lung Dice/IoU on real radiographs (../shared/data/montgomery "
                             "or $PACX_SAMPLE_DATA/montgomery)")


if __name__ == "__main__":
    args, cfg = parse_recipe_args(__doc__.splitlines()[0], extra=_extra, resume="none")
    if run(cfg, args.out, real_eval=args.real_eval):
        print((Path(args.out) / "results.md").read_text())
