"""Compute every frozen teacher's embeddings once per split (Stage 2 never runs a teacher).

Example:
    python recipes/cache_teachers.py --profile quick --out runs/demo
"""

from pacx.pipeline import cache_teachers, parse_recipe_args, run_stage

if __name__ == "__main__":
    args, cfg = parse_recipe_args(__doc__.splitlines()[0])
    run_stage("teachers", cache_teachers, cfg, args.out, force=args.force)
