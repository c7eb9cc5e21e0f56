"""Stage-1 MAE training step: throughput against mask ratio, batch size and image size (one process).

A training step is forward + backward + AdamW step (pacx's own ``build_optimizer``, as the
Trainer uses), under bf16 autocast on CUDA (``--amp``). Tables:

1. **Mask ratio** (0.90, 0.75 and "~0"). The model refuses a ratio of 0 (no masked patch
   leaves the loss empty), so "~0" is the smallest ratio it accepts: ``0.5 / L``, one masked
   patch and ``L - 1`` visible ones, i.e. the encoder on (almost) all tokens. Columns: images/s,
   speed-up over ~0 next to the speed-up the FLOP count predicts; the encoder's fwd+bwd time relative to ~0 next to the visible-token
   fraction and the FLOP model's prediction (the encoder's cost falls with the visible
   tokens, faster than linearly because attention is quadratic); the share of the step taken
   by the encoder, by the decoder + loss (fwd+bwd minus encoder-only fwd+bwd) and by the
   optimiser; MFU and peak memory on CUDA.
2. **Batch size** at the first ratio: images/s relative to the reference batch.
3. **Image size** at the first ratio (same patch size, so L grows with the square).
4. **Optimiser**: AdamW steps on the same gradients with the per-tensor loop, ``foreach=True``
   and ``fused=True``, and which one the engine's ``build_optimizer`` picks.

With ``--compile`` the whole MAE is wrapped in ``torch.compile`` (as ``TrainerConfig.compile``
does) and table 1 compares compiled and eager steps instead (tables 2-4 are skipped: every new
shape recompiles).

MFU counts matmul FLOPs analytically (``benchmarks/_flops.py``; training = 3x forward) and
divides by the card's dense bf16 peak (H100 SXM / H200: 989 TFLOP/s; ``--peak-tflops``).

Run (CPU, small): ``python benchmarks/bench_mae.py --threads 1``
Run (GPU, paper): ``python benchmarks/bench_mae.py --device cuda --paper [--compile] --json mae.json``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _flops import lookup_peak_tflops, mae_encoder_flops, mae_flops, mfu  # noqa: E402
from _timing import (  # noqa: E402
    add_common_args,
    amp_context,
    fmt_mib,
    measure,
    paired_ratio,
    peak_memory_bytes,
    print_header,
    print_table,
    resolve_amp,
    setup,
    write_json,
)

from pacx.engine import build_optimizer  # noqa: E402
from pacx.nets import MaskedAutoencoderViT, create_mae  # noqa: E402

# The paper's Stage-1 optimiser (pacx/pipeline/profiles.py "paper": lr 1.5e-4, wd 0.05, betas 0.9/0.95).
LR, WEIGHT_DECAY, BETAS = 1.5e-4, 0.05, (0.9, 0.95)


def parse_ratios(text: str, mae: MaskedAutoencoderViT) -> list[tuple[str, float]]:
    """``"0.9,0.75,0"`` -> labelled ratios; 0 becomes the smallest accepted ratio (1 masked patch)."""
    out = []
    for item in text.split(","):
        value = float(item)
        if value == 0.0:
            out.append(("~0 (1 masked)", 0.5 / mae.num_patches))
        else:
            out.append((f"{value:.2f}", value))
    return out


class StepRunner:
    """The callables timed for one (model, batch, ratio): full step, fwd+bwd, encoder fwd+bwd."""

    def __init__(self, model: torch.nn.Module, base: MaskedAutoencoderViT, opt: torch.optim.Optimizer,
                 imgs: torch.Tensor, ratio: float, amp: Any) -> None:
        self.model, self.base, self.opt, self.imgs, self.ratio, self.amp = model, base, opt, imgs, ratio, amp

    def fwd_bwd(self) -> None:
        with self.amp():
            loss = self.model(self.imgs, mask_ratio=self.ratio).loss
        loss.backward()

    def step(self) -> None:
        self.fwd_bwd()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def fwd_bwd_only(self) -> None:
        self.fwd_bwd()
        self.opt.zero_grad(set_to_none=True)

    def encoder_only(self) -> None:
        # Encoder forward on the visible tokens (patch embedding, masking, blocks, norm) and its
        # backward from a stand-in scalar, so decoder and loss are left out.
        with self.amp():
            latent, _, _ = self.base.forward_encoder(self.imgs, mask_ratio=self.ratio)
        latent.float().square().mean().backward()
        self.opt.zero_grad(set_to_none=True)


def build(preset: str, image_size: int | None, device: torch.device) -> tuple[MaskedAutoencoderViT, torch.optim.Optimizer]:
    overrides = {"img_size": image_size} if image_size else {}
    mae = create_mae(preset, **overrides).to(device).train()
    return mae, build_optimizer(mae, LR, WEIGHT_DECAY, BETAS)


def images(batch: int, mae: MaskedAutoencoderViT, device: torch.device) -> torch.Tensor:
    return torch.randn(batch, mae.in_chans, mae.img_size, mae.img_size, device=device)


def ratio_table(args: argparse.Namespace, device: torch.device, amp: Any, peak: float | None) -> list[dict[str, Any]]:
    mae, opt = build(args.preset, None, device)
    imgs = images(args.batch, mae, device)
    ratios = parse_ratios(args.ratios, mae)
    runners = {label: StepRunner(mae, mae, opt, imgs, ratio, amp) for label, ratio in ratios}
    candidates = {}
    for label, run in runners.items():
        candidates[f"{label}/step"] = run.step
        candidates[f"{label}/fwdbwd"] = run.fwd_bwd_only
        candidates[f"{label}/encoder"] = run.encoder_only
    times = measure(candidates, device, args.repeats, args.warmup)
    ref_label = next((lab for lab, _ in ratios if lab.startswith("~0")), ratios[-1][0])
    ref_ratio = dict(ratios)[ref_label]
    rows = []
    for label, ratio in ratios:
        t = {kind: times[f"{label}/{kind}"] for kind in ("step", "fwdbwd", "encoder")}
        step = t["step"].median
        enc_share = paired_ratio(t["encoder"], t["step"])
        fwdbwd_share = paired_ratio(t["fwdbwd"], t["step"])
        flops = mae_flops(mae, args.batch, ratio).training()
        enc_flops = mae_encoder_flops(mae, args.batch, ratio).training()
        ref_enc_flops = mae_encoder_flops(mae, args.batch, ref_ratio).training()
        rows.append({
            "mask ratio": label,
            "visible tokens": 1 + mae.num_visible(ratio),
            "images/s": args.batch / step,
            "speed-up vs ~0": paired_ratio(times[f"{ref_label}/step"], t["step"]),
            "FLOP-model speed-up": mae_flops(mae, args.batch, ref_ratio).training() / flops,
            "encoder time vs ~0": paired_ratio(t["encoder"], times[f"{ref_label}/encoder"]),
            "encoder FLOPs vs ~0": enc_flops / ref_enc_flops,
            "visible fraction": (1 + mae.num_visible(ratio)) / (1 + mae.num_visible(ref_ratio)),
            "encoder share": enc_share,
            "decoder+loss share": max(fwdbwd_share - enc_share, 0.0),
            "optimizer share": max(1.0 - fwdbwd_share, 0.0),
            "step ms": 1e3 * step,
            "spread": t["step"].spread,
            "MFU %": mfu(flops, step, peak),
            "peak MiB": fmt_mib(peak_memory_bytes(runners[label].step, device)),
        })
    return rows


def compile_table(args: argparse.Namespace, device: torch.device, amp: Any, peak: float | None) -> list[dict[str, Any]]:
    mae, opt = build(args.preset, None, device)
    compiled = torch.compile(mae)
    imgs = images(args.batch, mae, device)
    rows = []
    for label, ratio in parse_ratios(args.ratios, mae):
        eager = StepRunner(mae, mae, opt, imgs, ratio, amp)
        comp = StepRunner(compiled, mae, opt, imgs, ratio, amp)
        times = measure({"eager": eager.step, "compiled": comp.step}, device, args.repeats, args.warmup)
        flops = mae_flops(mae, args.batch, ratio).training()
        rows.append({
            "mask ratio": label,
            "eager images/s": args.batch / times["eager"].median,
            "compiled images/s": args.batch / times["compiled"].median,
            "compile speed-up": paired_ratio(times["eager"], times["compiled"]),
            "eager MFU %": mfu(flops, times["eager"].median, peak),
            "compiled MFU %": mfu(flops, times["compiled"].median, peak),
            "eager peak MiB": fmt_mib(peak_memory_bytes(eager.step, device)),
            "compiled peak MiB": fmt_mib(peak_memory_bytes(comp.step, device)),
        })
    return rows


def batch_table(args: argparse.Namespace, device: torch.device, amp: Any, peak: float | None) -> list[dict[str, Any]]:
    mae, opt = build(args.preset, None, device)
    ratio = parse_ratios(args.ratios, mae)[0][1]
    sizes = sorted({args.batch, *[int(b) for b in args.batch_sizes.split(",") if b]})
    runners = {b: StepRunner(mae, mae, opt, images(b, mae, device), ratio, amp) for b in sizes}
    times = measure({str(b): r.step for b, r in runners.items()}, device, args.repeats, args.warmup)
    rows = []
    for b in sizes:
        rel = (b / args.batch) * paired_ratio(times[str(args.batch)], times[str(b)])  # images/s ratio
        rows.append({
            "batch": b, "images/s": b / times[str(b)].median, f"vs batch {args.batch}": rel,
            "MFU %": mfu(mae_flops(mae, b, ratio).training(), times[str(b)].median, peak),
            "peak MiB": fmt_mib(peak_memory_bytes(runners[b].step, device)),
        })
    return rows


def image_size_table(args: argparse.Namespace, device: torch.device, amp: Any, peak: float | None) -> list[dict[str, Any]]:
    ref_size = create_mae(args.preset).img_size
    sizes = sorted({ref_size, *[int(s) for s in args.image_sizes.split(",") if s]})
    runners, models = {}, {}
    for size in sizes:
        mae, opt = build(args.preset, size, device)
        ratio = parse_ratios(args.ratios, mae)[0][1]
        models[size] = (mae, ratio)
        runners[size] = StepRunner(mae, mae, opt, images(args.batch, mae, device), ratio, amp)
    times = measure({str(s): r.step for s, r in runners.items()}, device, args.repeats, args.warmup)
    rows = []
    for size in sizes:
        mae, ratio = models[size]
        rows.append({
            "image size": size, "patches L": mae.num_patches, "visible": 1 + mae.num_visible(ratio),
            "images/s": args.batch / times[str(size)].median, f"vs {ref_size} px": paired_ratio(times[str(ref_size)], times[str(size)]),
            "MFU %": mfu(mae_flops(mae, args.batch, ratio).training(), times[str(size)].median, peak),
            "peak MiB": fmt_mib(peak_memory_bytes(runners[size].step, device)),
        })
    return rows


def optimizer_table(args: argparse.Namespace, device: torch.device, amp: Any) -> list[dict[str, Any]]:
    mae, engine_opt = build(args.preset, None, device)
    # fresh groups: the engine's groups may carry "fused"/"foreach" entries that override the constructor's
    groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in engine_opt.param_groups]
    kinds = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    opts = {name: torch.optim.AdamW(groups, lr=LR, betas=BETAS, **kw) for name, kw in kinds.items()}
    runner = StepRunner(mae, mae, engine_opt, images(args.batch, mae, device), parse_ratios(args.ratios, mae)[0][1], amp)
    runner.fwd_bwd()  # gradients stay in place; every optimiser steps on them repeatedly
    times = measure({name: opt.step for name, opt in opts.items()}, device, args.repeats, args.warmup)
    group = engine_opt.param_groups[0]
    engine = "fused" if group.get("fused") else ("foreach" if group.get("foreach") else "default")
    params = sum(p.numel() for g in engine_opt.param_groups for p in g["params"])
    row: dict[str, Any] = {"params (M)": params / 1e6, "engine's choice": engine}
    row.update({f"{name} ms": 1e3 * m.median for name, m in times.items()})
    row["foreach / fused"] = paired_ratio(times["foreach"], times["fused"])
    row["for-loop / fused"] = paired_ratio(times["for-loop"], times["fused"])
    return [row]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--preset", default=None, help="MAE preset (default: mae_vit_tiny_patch8_64; --paper: mae_vit_base_patch16)")
    parser.add_argument("--batch", type=int, default=None, help="reference batch (default 16; --paper 256)")
    parser.add_argument("--ratios", default="0.90,0.75,0", help="mask ratios; 0 = smallest accepted (1 masked patch)")
    parser.add_argument("--batch-sizes", default=None, help="batch sweep (default 4,32; --paper 64,128)")
    parser.add_argument("--image-sizes", default=None, help="image-size sweep (default 32,96; --paper 160,320)")
    parser.add_argument("--no-sweeps", action="store_true", help="only the mask-ratio table")
    parser.add_argument("--compile", action="store_true", help="compare torch.compile'd and eager steps")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the card for MFU")
    args = parser.parse_args(argv)
    device = setup(args, repeats=(5, 10), warmup=(1, 3))
    paper = args.paper
    args.preset = args.preset or ("mae_vit_base_patch16" if paper else "mae_vit_tiny_patch8_64")
    args.batch = args.batch or (256 if paper else 16)
    args.batch_sizes = args.batch_sizes or ("64,128" if paper else "4,32")
    args.image_sizes = args.image_sizes or ("160,320" if paper else "32,96")
    amp_dtype = resolve_amp(args, device)

    def amp() -> Any:
        return amp_context(device, amp_dtype)

    peak = lookup_peak_tflops(device, args.peak_tflops)
    print_header("bench_mae", device, args, f"preset={args.preset} batch={args.batch} peak_tflops={peak}")
    tables: dict[str, Any] = {}
    if args.compile:
        tables["compile"] = compile_table(args, device, amp, peak)
        print_table("torch.compile vs eager, training step (fwd+bwd+AdamW)", list(tables["compile"][0]), tables["compile"])
    else:
        tables["mask_ratio"] = ratio_table(args, device, amp, peak)
        print_table(f"Mask ratio, batch {args.batch} (shares are of the full step)", list(tables["mask_ratio"][0]),
                    tables["mask_ratio"])
        if not args.no_sweeps:
            tables["batch"] = batch_table(args, device, amp, peak)
            print_table("Batch size (first ratio)", list(tables["batch"][0]), tables["batch"])
            tables["image_size"] = image_size_table(args, device, amp, peak)
            print_table("Image size (first ratio, same patch size)", list(tables["image_size"][0]), tables["image_size"])
            tables["optimizer"] = optimizer_table(args, device, amp)
            print_table("AdamW step alone (same gradients)", list(tables["optimizer"][0]), tables["optimizer"])
    write_json(args.json, "bench_mae", device, args, tables)


if __name__ == "__main__":
    main()
