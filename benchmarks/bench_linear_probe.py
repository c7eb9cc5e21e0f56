"""Linear probe on cached features against re-running the frozen backbone every epoch.

The reference probe ran the frozen ViT over every training image in every epoch (and over
the validation set after each epoch, for model selection). ``pacx.eval`` extracts the
class-token features once (:func:`pacx.eval.extract_features`) and trains the head on them
(:func:`pacx.eval.train_linear_probe`, the paper's AdamW protocol). Both paths here use the
same head initialisation, shuffling order, optimiser, schedule and best-epoch selection; the
only difference is where the features come from. With augmentation off the features are the
same numbers, so the resulting AUROC is identical (up to float rounding of the backbone on
differently composed batches, reported as the largest probability difference); only the cost
changes. Expect a ratio near the number of epochs for a backbone that dominates the cost.

Run: ``python benchmarks/bench_linear_probe.py [--n-train 256] [--epochs 40] [--img-size 32]
[--embed-dim 128] [--depth 4] [--device cpu|cuda] [--threads N] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import add_common_args, print_header, print_table, setup, sync, write_json  # noqa: E402

from pacx.eval import extract_features, macro_auroc, train_linear_probe  # noqa: E402
from pacx.eval.linear_probe import _init_head, _loss_fn, _probs, _targets  # noqa: E402


def synthetic_images(n: int, size: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Noise images; positives carry a brighter disc in a random place (a learnable signal)."""
    gen = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, generator=gen) < 0.4).long()
    images = torch.randn(n, 1, size, size, generator=gen) * 0.5
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for i in torch.nonzero(labels).flatten().tolist():
        cy, cx = torch.randint(size // 4, 3 * size // 4, (2,), generator=gen).tolist()
        images[i, 0] += 1.0 * (((yy - cy) ** 2 + (xx - cx) ** 2) < (size // 6) ** 2)
    return images.repeat(1, 3, 1, 1), labels.numpy()


@torch.no_grad()
def _tokens(encoder: VisionTransformer, images: torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    chunks = [images[i : i + batch].to(device) for i in range(0, len(images), batch)]
    return torch.cat([encoder.forward_features(chunk)[:, 0] for chunk in chunks])


def probe_rerunning_backbone(
    encoder: VisionTransformer,
    data: dict,
    epochs: int,
    lr: float,
    wd: float,
    batch: int,
    seed: int,
    device: torch.device,
) -> dict:
    """The reference's cost model: frozen backbone forward inside every step and every validation."""
    encoder.eval().to(device)
    x_tr, y_tr_np = data["train"]
    y_tr = _targets(y_tr_np, "binary", 1).to(device)
    head = _init_head(encoder.embed_dim, 1, seed).to(device)
    groups = [{"params": [head.weight], "weight_decay": wd}, {"params": [head.bias], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=0.0)
    loss_fn = _loss_fn("binary")
    gen = torch.Generator().manual_seed(seed + 1)
    best, best_state = None, None
    for _ in range(epochs):
        order = torch.randperm(len(x_tr), generator=gen)
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            feats = _tokens(encoder, x_tr[idx], batch, device)
            loss = loss_fn(head(feats), y_tr[idx.to(device)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        with torch.no_grad():
            val_probs = _probs(head(_tokens(encoder, data["val"][0], batch, device)), "binary")
            val = macro_auroc(val_probs, data["val"][1], warn=False)
        key = (1, val) if not math.isnan(val) else (0, 0.0)
        if best is None or key > best:
            best, best_state = key, copy.deepcopy(head.state_dict())
    head.load_state_dict(best_state)
    with torch.no_grad():
        probs = _probs(head(_tokens(encoder, data["test"][0], batch, device)), "binary")
    return {"test_probs": probs, "auroc": macro_auroc(probs, data["test"][1], warn=False)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--n-train", type=int, default=256)
    parser.add_argument("--n-eval", type=int, default=64, help="validation and test images each")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument(
        "--batch-size", type=int, default=64,
        help="probe batch (paper: 512; smaller so a few hundred images give several steps per epoch)",
    )
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--embed-dim", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    args = parser.parse_args(argv)
    device = setup(args, repeats=(1, 1), warmup=(0, 0))
    print_header("bench_linear_probe", device, args, f"n_train={args.n_train} epochs={args.epochs}")

    torch.manual_seed(args.seed)
    encoder = VisionTransformer(
        img_size=args.img_size, patch_size=args.patch_size, embed_dim=args.embed_dim, depth=args.depth,
        num_heads=max(1, args.embed_dim // 32), num_classes=0,
    ).to(device)
    data = {
        split: synthetic_images(n, args.img_size, seed)
        for split, n, seed in (("train", args.n_train, 1), ("val", args.n_eval, 2), ("test", args.n_eval, 3))
    }
    kw = {"epochs": args.epochs, "lr": args.lr, "weight_decay": 0.01, "batch_size": args.batch_size, "seed": args.seed}

    # One run of each path (``--repeats`` does not apply): a probe is seconds long, not a kernel.
    start = time.perf_counter()
    feats = {s: extract_features(encoder, x, batch_size=args.batch_size, device=device) for s, (x, _) in data.items()}
    cached = train_linear_probe(
        feats["train"], data["train"][1], feats["val"], data["val"][1], feats["test"], data["test"][1],
        device=device, **kw,
    )
    sync(device)
    t_cached = time.perf_counter() - start
    start = time.perf_counter()
    rerun = probe_rerunning_backbone(encoder, data, args.epochs, args.lr, 0.01, args.batch_size, args.seed, device)
    sync(device)
    t_rerun = time.perf_counter() - start

    ratio = t_rerun / t_cached
    max_dp = float(np.abs(cached["test_probs"] - rerun["test_probs"]).max())
    rows = [
        {
            "path": "cached features (extract once + probe)",
            "seconds": t_cached,
            "test AUROC": cached["metrics"]["auroc"],
        },
        {"path": "backbone re-run every epoch", "seconds": t_rerun, "test AUROC": rerun["auroc"]},
    ]
    print_table("linear probe, same protocol", ["path", "seconds", "test AUROC"], rows, digits=4)
    same = cached["metrics"]["auroc"] == rerun["auroc"]
    print(f"\ntime ratio (re-run / cached): {ratio:.1f}x")
    print(f"AUROC identical: {same} (augmentation off: same features, same head, same order); "
          f"max |test prob difference| = {max_dp:.2e}")
    write_json(args.json, "bench_linear_probe", device, args,
               {"rows": rows, "ratio": ratio, "auroc_identical": same, "max_prob_diff": max_dp})


if __name__ == "__main__":
    main()
