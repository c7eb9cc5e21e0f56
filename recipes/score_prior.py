"""Score Stage-1 prior candidates on the prior setting check, on validation data only.

For each candidate MAE checkpoint (a Trainer checkpoint folder, a ``model.safetensors`` or a
``prior:<name>``), the class-token linear probe AUROC on ``probe_val`` (probe trained on
``probe_train``) is compared with the same architecture at random initialisation, and with a
linear probe on 32 x 32 raw pixels. This is how the shipped prior was chosen among its
checkpoints (docs/protocol.md).

Example:
    python recipes/score_prior.py --profile cpu --out runs/prior_scores \\
        --candidates runs/prior/mae/checkpoints/step_1560 runs/prior/mae/final
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: make the sibling recipes importable as `recipes.*`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pacx.eval import extract_features, train_linear_probe  # noqa: E402
from pacx.io import save_json  # noqa: E402
from pacx.nets import MAE_DECODER_PREFIXES, load_mae_checkpoint  # noqa: E402
from pacx.pipeline import parse_recipe_args  # noqa: E402
from pacx.pipeline.evaluation import PROBE_SPLITS, EvaluationContext  # noqa: E402
from pacx.pretrained import resolve_mae_checkpoint  # noqa: E402
from recipes.pretrain_mae import build_mae  # noqa: E402


def _weights(candidate: str) -> Path:
    path = Path(candidate)
    return path / "model.safetensors" if path.is_dir() else resolve_mae_checkpoint(candidate)


def score(cfg: dict[str, Any], out: Path, candidates: list[str]) -> dict[str, Any]:
    """Validation AUROC of random init, pixels and every candidate, per probe task."""
    torch.manual_seed(int(cfg["seed"]))
    encoders = {"random": build_mae(cfg).encoder.eval()}
    for candidate in candidates:
        mae = build_mae(cfg)
        load_mae_checkpoint(mae, _weights(candidate), allow_missing=MAE_DECODER_PREFIXES)
        encoders[candidate] = mae.encoder.eval()
    ctx = EvaluationContext(cfg, out, encoders)
    splits = {k: PROBE_SPLITS[k] for k in ("train", "val")}
    inputs = {n: {k: ctx.features(n, s) for k, s in splits.items()} for n in encoders}
    inputs["pixels"] = {k: ctx.pixels(s) for k, s in splits.items()}
    table: dict[str, dict[str, float]] = {}
    for task in ctx.tasks():
        y = {k: ctx.labels(s, task) for k, s in splits.items()}
        for name, x in inputs.items():
            probe = train_linear_probe(x["train"], y["train"], x["val"], y["val"], x["val"], y["val"],
                                       method=cfg["eval"]["probe_method"])
            table.setdefault(name, {})[task] = float(probe["val_auroc"])
    gains = {n: {t: v - table["random"][t] for t, v in row.items()} for n, row in table.items()}
    return {"auroc_val": table, "gain_over_random": gains, "n_val": len(ctx.dataset("probe_val"))}


def _extra(parser: Any) -> None:
    parser.add_argument("--candidates", nargs="+", required=True, help="checkpoint folders, weight files or prior:<name>")


if __name__ == "__main__":
    args, cfg = parse_recipe_args(__doc__.splitlines()[0], extra=_extra, resume="none")
    result = score(cfg, Path(args.out), args.candidates)
    save_json(result, Path(args.out) / "prior_scores.json")
    for name, row in result["auroc_val"].items():
        print(f"{name}: " + ", ".join(f"{t} {v:.3f} ({result['gain_over_random'][name][t]:+.3f})" for t, v in row.items()))
