"""LoRA cost at inference and in training against the plain timm ViT (one process).

Inference (``eval()``, ``torch.no_grad``, bf16 autocast on CUDA), timed interleaved against the
plain timm ``VisionTransformer`` holding the same base weights:

* ``plain, 2nd copy``: a deep copy of the plain ViT, an A/A comparison whose ratio shows the
  timing noise floor of the machine;
* ``merged + unwrapped``: ``apply_lora`` with non-zero adapters, then ``unwrap_lora`` (merge and
  put the plain ``nn.Linear`` back). This is the exported PaCX encoder: architecturally a plain
  ViT, so the target is a ratio of 1.00 within 2%; what is left is timing noise.
* ``merged (wrapped)``: ``merge_lora`` only; each ``LoRALinear`` then returns its base layer's
  output (one Python branch per wrapped layer).
* ``unmerged``: the training-time form, base + ``B(A x)`` per wrapped layer.

Inference uses five times ``--repeats`` rounds (the calls are cheap and the target is tight).

The outputs of the merged and unmerged forms are compared too (max abs difference, float32).
Ratios are medians of per-round paired ratios; the ratio of the fastest runs is printed beside
them because on a loaded machine interference only slows runs down.

Training: one step of the unmerged LoRA ViT plus a linear head (forward, backward through the
frozen base into the adapters, AdamW on adapters + final norm + head) against a frozen-base
step that trains the head alone on ``no_grad`` features (the linear-probe cost).

Run (CPU, small): ``python benchmarks/bench_lora.py --threads 1``
Run (GPU, paper): ``python benchmarks/bench_lora.py --device cuda --paper --json lora.json``
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import (  # noqa: E402
    add_common_args,
    amp_context,
    measure,
    paired_ratio,
    print_header,
    print_table,
    resolve_amp,
    setup,
    write_json,
)

from pacx.adapters import apply_lora, merge_lora, unwrap_lora  # noqa: E402
from pacx.engine import build_optimizer  # noqa: E402
from pacx.nets import create_mae  # noqa: E402

NUM_CLASSES = 14  # a CheXpert-sized multi-label head
TOLERANCE = 0.02


def lora_copy(vit: nn.Module, seed: int) -> nn.Module:
    """A deep copy of ``vit`` with the default adapters (r=8 on qkv/fc1/fc2) made non-zero."""
    model = copy.deepcopy(vit)
    apply_lora(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("lora_B"):  # zero-initialised: make the update real so a merge changes weights
                param.copy_(0.01 * torch.randn(param.shape, generator=gen))
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--preset", default=None,
                        help="ViT = encoder of this MAE preset (default mae_vit_tiny_patch8_64; --paper mae_vit_base_patch16)")
    parser.add_argument("--batch", type=int, default=None, help="batch (default 32; --paper 256)")
    args = parser.parse_args(argv)
    device = setup(args, repeats=(7, 10), warmup=(1, 3))
    args.preset = args.preset or ("mae_vit_base_patch16" if args.paper else "mae_vit_tiny_patch8_64")
    args.batch = args.batch or (256 if args.paper else 32)
    amp_dtype = resolve_amp(args, device)
    print_header("bench_lora", device, args, f"preset={args.preset} batch={args.batch}")

    plain = create_mae(args.preset).encoder.eval()
    unmerged = lora_copy(plain, args.seed).eval()  # the same adapters in all three forms
    merged = merge_lora(copy.deepcopy(unmerged)).eval()
    unwrapped = unwrap_lora(copy.deepcopy(unmerged)).eval()
    plain_copy = copy.deepcopy(plain)  # an identical model: its ratio to plain is pure timing noise
    for model in (plain, plain_copy, unmerged, merged, unwrapped):
        model.to(device)
    size = plain.patch_embed.img_size[0]
    x = torch.randn(args.batch, 3, size, size, device=device)

    with torch.no_grad():
        ref = unmerged(x)
        diff_merged = (merged(x) - ref).abs().max().item()
        diff_unwrapped = (unwrapped(x) - ref).abs().max().item()
    if type(unwrapped.blocks[0].attn.qkv) is not nn.Linear:
        raise RuntimeError("unwrap_lora did not restore plain nn.Linear layers")

    def infer(model: nn.Module) -> Any:
        def run() -> None:
            with torch.no_grad(), amp_context(device, amp_dtype):
                model(x)
        return run

    # inference calls are cheap: five times the rounds, for a noise floor below the 2% target
    inference = measure(
        {"plain": infer(plain), "plain, 2nd copy (A/A noise floor)": infer(plain_copy),
         "merged + unwrapped": infer(unwrapped), "merged (wrapped)": infer(merged), "unmerged": infer(unmerged)},
        device, 5 * args.repeats, args.warmup,
    )
    rows = []
    for name, m in inference.items():
        rows.append({
            "inference": name, "ms": 1e3 * m.median, "images/s": args.batch / m.median,
            "time vs plain": paired_ratio(m, inference["plain"]),
            "fastest vs fastest plain": m.best / inference["plain"].best, "spread": m.spread,
        })
    ratio_unwrapped = paired_ratio(inference["merged + unwrapped"], inference["plain"])

    # ---- training: LoRA step vs frozen-base head-only step
    dim = plain.num_features
    lora_model = copy.deepcopy(unmerged).to(device).train()
    lora_net = nn.Sequential(lora_model, nn.Linear(dim, NUM_CLASSES)).to(device)
    lora_opt = build_optimizer(lora_net, lr=1e-4, weight_decay=0.05)
    frozen = copy.deepcopy(plain).to(device).eval().requires_grad_(False)
    head = nn.Linear(dim, NUM_CLASSES).to(device)
    head_opt = build_optimizer(head, lr=1e-3, weight_decay=0.0)
    target = torch.randint(0, 2, (args.batch, NUM_CLASSES), device=device).float()
    bce = nn.BCEWithLogitsLoss()

    def lora_step() -> None:
        with amp_context(device, amp_dtype):
            loss = bce(lora_net(x).float(), target)
        loss.backward()
        lora_opt.step()
        lora_opt.zero_grad(set_to_none=True)

    def head_step() -> None:
        with torch.no_grad(), amp_context(device, amp_dtype):
            feats = frozen(x)
        loss = bce(head(feats.float()), target)
        loss.backward()
        head_opt.step()
        head_opt.zero_grad(set_to_none=True)

    training = measure({"LoRA step": lora_step, "frozen base, head-only step": head_step}, device, args.repeats, args.warmup)
    train_rows = [{
        "training": name, "ms": 1e3 * m.median, "images/s": args.batch / m.median,
        "time vs head-only": paired_ratio(m, training["frozen base, head-only step"]), "spread": m.spread,
    } for name, m in training.items()]
    summary = {
        "merged+unwrapped / plain (paired median)": ratio_unwrapped,
        "merged+unwrapped / plain (fastest runs)": inference["merged + unwrapped"].best / inference["plain"].best,
        f"within {TOLERANCE:.0%}": abs(ratio_unwrapped - 1.0) <= TOLERANCE,
        "A/A noise floor: plain copy / plain": paired_ratio(inference["plain, 2nd copy (A/A noise floor)"],
                                                            inference["plain"]),
        "unmerged / plain": paired_ratio(inference["unmerged"], inference["plain"]),
        "LoRA step / head-only step": paired_ratio(training["LoRA step"], training["frozen base, head-only step"]),
        "max abs diff, merged vs unmerged": f"{diff_merged:.2e}",
        "max abs diff, unwrapped vs unmerged": f"{diff_unwrapped:.2e}",
        "trainable params LoRA (+head)": sum(p.numel() for p in lora_net.parameters() if p.requires_grad),
        "trainable params head-only": sum(p.numel() for p in head.parameters()),
    }
    print_table(f"Inference, batch {args.batch}", list(rows[0]), rows)
    print_table(f"Training step, batch {args.batch}", list(train_rows[0]), train_rows)
    print_table("LoRA summary", ["quantity", "value"], [{"quantity": k, "value": v} for k, v in summary.items()])
    write_json(args.json, "bench_lora", device, args, {"inference": rows, "training": train_rows, "summary": summary})


if __name__ == "__main__":
    main()
