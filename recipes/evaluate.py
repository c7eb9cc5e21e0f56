"""Stage 3: linear probes, low-data, segmentation, alignment and figures for the exported encoders.

Reads <out>/backbones/{random,mae,pacx} and the cached teacher embeddings written by the
earlier stages and writes <out>/results.json and <out>/results.md.

Example:
    python recipes/evaluate.py --profile quick --out runs/demo
"""

from pathlib import Path

from pacx.io import load_json
from pacx.pipeline import data_root, parse_recipe_args
from pacx.pipeline.evaluation import evaluate_encoders
from pacx.pipeline.report import write_report

if __name__ == "__main__":
    args, cfg = parse_recipe_args(__doc__.splitlines()[0])
    results = evaluate_encoders(cfg, args.out, data_root(cfg, args.out))
    mae_done = Path(args.out) / "mae" / "done.json"  # the mask ratio Stage 1 actually used
    mask_ratio = load_json(mae_done).get("mask_ratio") if mae_done.is_file() else None
    results = {"profile": cfg["profile"], "seed": cfg["seed"], "mask_ratio": mask_ratio, **results, "config": cfg}
    write_report(results, args.out)
    print((Path(args.out) / "results.md").read_text())
