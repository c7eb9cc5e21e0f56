"""Stage 1a: pretrain the CXR ViT as a masked autoencoder (mask ratio 0.90 by default).

Example:
    python recipes/pretrain_mae.py --profile quick --out runs/demo
"""

from pacx.pipeline import pretrain_mae, parse_recipe_args, run_stage

if __name__ == "__main__":
    args, cfg = parse_recipe_args(__doc__.splitlines()[0])
    run_stage("mae", pretrain_mae, cfg, args.out, force=args.force, resume=args.resume)
