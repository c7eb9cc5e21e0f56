"""Stage 2: tune the MAE encoder with LoRA towards the cached teacher embeddings and export the PaCX backbone.

Example:
    python recipes/distill.py --profile quick --out runs/demo
"""

from pacx.pipeline import distill, parse_recipe_args, run_stage

if __name__ == "__main__":
    args, cfg = parse_recipe_args(__doc__.splitlines()[0])
    run_stage("distill", distill, cfg, args.out, force=args.force, resume=args.resume)
