"""Stage 1b: train the mask-aware lab denoising autoencoder (the lab teacher).

Example:
    python recipes/train_lab_dae.py --profile quick --out runs/demo
"""

from pacx.pipeline import train_lab_dae, parse_recipe_args, run_stage

if __name__ == "__main__":
    args, cfg = parse_recipe_args(__doc__.splitlines()[0])
    run_stage("lab_dae", train_lab_dae, cfg, args.out, force=args.force, resume=args.resume)
