"""Stage 1b: the ECG teacher: Net1D pretrained on the cohort's ECG diagnostic labels, or ECGFounder weights (--ecgfounder-checkpoint).

Example:
    python recipes/train_ecg_teacher.py --profile quick --out runs/demo
"""

from pacx.pipeline import train_ecg_teacher, parse_recipe_args, run_stage

if __name__ == "__main__":
    args, cfg = parse_recipe_args(__doc__.splitlines()[0])
    run_stage("ecg_teacher", train_ecg_teacher, cfg, args.out, force=args.force, resume=args.resume)
