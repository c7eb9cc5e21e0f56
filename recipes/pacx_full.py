"""PaCX-MAE end to end: data, MAE pretraining, teachers, distillation, evaluation and report.

On a fresh machine with no data and no GPU this runs the whole method on the synthetic cohort
(profile ``cpu``, about 15 minutes on 2 cores) and writes results.json, results.md, figures,
checkpoints and the exported backbones under --out. A finished stage is skipped when its
outputs exist for the same configuration (--force reruns everything).

Examples:
    python recipes/pacx_full.py                                   # synthetic cohort, CPU
    python recipes/pacx_full.py --profile quick --out runs/quick  # about 2 minutes
    torchrun --nproc_per_node 2 recipes/pacx_full.py --profile paper --data symile \\
        --data-root /data/symile-mimic --ecgfounder-checkpoint 12_lead_ECGFounder.pth
"""

from pathlib import Path

from pacx.pipeline import parse_recipe_args
from pacx.pipeline.full import ABLATIONS, DEFAULT_ABLATIONS, run_pipeline


def _extra(parser):
    parser.add_argument("--ablations", action="store_true",
                        help=f"add every ablation row ({', '.join(ABLATIONS)}); by default only "
                             f"{', '.join(DEFAULT_ABLATIONS)} runs")
    parser.add_argument("--real-eval", action="store_true",
                        help="add Montgomery TB AUROC and lung Dice/IoU on real radiographs (../shared/data/montgomery "
                             "or $PACX_SAMPLE_DATA/montgomery)")


if __name__ == "__main__":
    args, cfg = parse_recipe_args(__doc__.splitlines()[0], extra=_extra)
    ablations = tuple(ABLATIONS) if args.ablations else DEFAULT_ABLATIONS
    results = run_pipeline(cfg, args.out, force=args.force, ablations=ablations, real_eval=args.real_eval)
    if results:
        print(Path(args.out, "results.md").read_text())
