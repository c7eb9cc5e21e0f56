"""PaCX-MAE end to end: data, MAE prior, teachers, distillation, the control, evaluation and report.

On a fresh machine with no data and no GPU this runs the whole method on the synthetic cohort
(profile ``cpu``, about 24 minutes on 2 cores) and writes results.json, results.md, figures,
checkpoints and the exported backbones under --out (and its log in log.txt). A finished stage
is skipped when its outputs exist for the same configuration (--force reruns everything); after
an interruption, --resume latest continues each interrupted training stage from its own latest
checkpoint. The configuration is checked as a whole first (--print-config shows it).

Examples:
    python recipes/pacx_full.py                                   # synthetic cohort, CPU
    python recipes/pacx_full.py --profile quick --out runs/quick  # about a minute
    python recipes/pacx_full.py --profile quick --out runs/quick --resume latest  # after a crash
    torchrun --nproc_per_node 2 recipes/pacx_full.py --profile paper --data symile \\
        --data-root /data/symile-mimic --ecgfounder-checkpoint 12_lead_ECGFounder.pth
"""

from __future__ import annotations

import logging
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a script: make the sibling recipes importable as `recipes.*`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pacx.pipeline import (  # noqa: E402
    available_variants,
    data_root,
    mark_done,
    parse_recipe_args,
    probe_root,
    resolve_variants,
    run_stage,
    stage_is_done,
    variant_config,
)
from pacx.pipeline.console import StagePlan  # noqa: E402
from recipes import cache_teachers, distill, evaluate, pretrain_mae, train_teachers  # noqa: E402

log = logging.getLogger("pacx.recipes.pacx_full")


def prepare_data(cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    """The cohort and the probe patients (generated once and cached for synthetic runs; restartable)."""
    start, data = time.perf_counter(), cfg["data"]
    if data["source"] == "synthetic":
        log.info("[pacx] data: synthetic cohort of %s patients at %s px", data["n_patients"], data["image_size"])
    info = {"cohort": str(data_root(cfg, out))}
    log.info("[pacx] data: cohort ready in %s (%.1f s)", info["cohort"], time.perf_counter() - start)
    if data["source"] == "synthetic" and data.get("probe_sizes"):
        log.info("[pacx] data: probe patients %s", dict(data["probe_sizes"]))
    info["probes"] = str(probe_root(cfg, out))
    log.info("[pacx] data: probe splits ready in %s (%.1f s)", info["probes"], time.perf_counter() - start)
    mark_done(out, "data", cfg, {**info, "seconds": time.perf_counter() - start})
    return info


def run(cfg: dict[str, Any], out: str | Path, force: bool = False, variants: Sequence[str] | None = None,
        real_eval: bool = False, resume: str | None = None) -> dict[str, Any]:
    """Every stage in order (each skipped when finished for this configuration), then the report.

    Args:
        cfg: the validated run configuration.
        out: the run folder.
        force: rerun finished stages.
        variants: the Stage-2 variants to train beside the full objective (default: ``cfg["variants"]``).
        real_eval: add the real-radiograph rows to the report.
        resume: ``"latest"``: every training stage interrupted earlier continues from its own latest
            checkpoint (the other stages restart: they are idempotent).
    """
    out = Path(out)
    variants = resolve_variants(cfg["variants"] if variants is None else variants, cfg["distill"]["teachers"])
    train = {"resume": resume}  # what the training stages (and only they) are given
    stages: list[tuple[str, Any, dict[str, Any], dict[str, Any]]] = [
        ("data", prepare_data, cfg, {}), ("mae", pretrain_mae.run, cfg, train)]
    stages += [(f"teacher_{n}", partial(train_teachers.train_teacher, name=n), cfg, train)
               for n in cfg["distill"]["teachers"]]
    stages += [("teachers", cache_teachers.run, cfg, {}), ("distill", distill.run, cfg, train)]
    stages += [(f"variant_{n}", partial(distill.run, stage=f"variant_{n}", backbone=n), variant_config(cfg, n), train)
               for n in variants]  # Stage-2 variants: the shuffled-teacher control and the ablations
    configs = {name: stage_cfg for name, _, stage_cfg, _ in stages}
    plan = StagePlan([*configs, "evaluate"], cfg["profile"],
                     is_done=lambda s: not force and s in configs and stage_is_done(out, s, configs[s]))
    for name, fn, stage_cfg, kwargs in stages:
        run_stage(name, fn, stage_cfg, out, force=force, plan=plan, **kwargs)
    return plan.timed("evaluate", evaluate.run, cfg, out, real_eval=real_eval)


def _extra(parser: Any) -> None:
    parser.add_argument("--ablations", action="store_true",
                        help=f"train and report every Stage-2 variant ({', '.join(available_variants([]))} and "
                        "<teacher>_only per teacher); by default those of the profile's `variants` list")
    evaluate._extra(parser)


if __name__ == "__main__":
    args, cfg = parse_recipe_args(__doc__.splitlines()[0], extra=_extra, resume="latest")
    variants = tuple(available_variants(cfg["distill"]["teachers"])) if args.ablations else None
    if run(cfg, args.out, force=args.force, variants=variants, real_eval=args.real_eval, resume=args.resume):
        print((Path(args.out) / "results.md").read_text())
