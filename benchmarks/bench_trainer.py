"""End-to-end ``Trainer.fit`` throughput of Stage 1 (MAE) and Stage 2 (distillation) on a synthetic cohort.

Unlike the other benchmarks this runs the real training path: :class:`pacx.data.SymileMIMIC`
reading the memory-mapped ``train`` split of a synthetic cohort (generated once at
``--cohort-size`` into ``--cache-dir``), the stage's training transform
(:func:`stage1_train_transform` / :func:`stage2_train_transform`), :func:`pacx.engine.make_loader`
with ``--workers`` processes and pinned memory, and :class:`pacx.engine.Trainer` (bf16 autocast
on CUDA, optional ``torch.compile``, AdamW, warmup-cosine schedule, final safetensors export).
Stage 2 reads random cached teacher embeddings through :class:`pacx.data.EmbeddingDataset`, as
the pipeline reads ``<out>/teachers/train/<name>.npy``; no teacher runs. The train split is
repeated as needed so one epoch spans every step.

A wrapper around the step function records the wall time at which each step starts; the
interval between two starts is one whole iteration (waiting for the loader, host-to-device copy,
forward, backward, optimiser, logging). Reported after ``--skip`` warm-up steps (compilation,
worker start-up, cuDNN autotuning): images/s over the remaining wall time and from the median
interval, MFU (``benchmarks/_flops.py``), peak CUDA memory, and the loader's own images/s
(a fresh pass over the same loader with no model) with the headroom loader / trainer: near 1
means the run is loader-bound.

Run (CPU, small): ``python benchmarks/bench_trainer.py --threads 1``
Run (GPU, paper): ``python benchmarks/bench_trainer.py --device cuda --paper --workers 12 [--compile] --json trainer.json``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _flops import distiller_flops, lookup_peak_tflops, mae_flops, mfu  # noqa: E402
from _timing import add_common_args, fmt_mib, print_header, print_table, repeat_dataset, setup, write_json  # noqa: E402

from pacx.data import EmbeddingDataset, SymileMIMIC, stage1_train_transform, stage2_train_transform  # noqa: E402
from pacx.data.synthetic import make_cohort  # noqa: E402
from pacx.engine import Trainer, TrainerConfig, make_loader, move_to_device  # noqa: E402
from pacx.nets import PaCXDistiller, create_mae  # noqa: E402

TEACHER_DIMS = {"ecg": 1024, "labs": 256}


class StepClock:
    """Wrap a step function and record ``time.perf_counter()`` at the start of every call."""

    def __init__(self, step_fn: Callable[[Any, Any], Any]) -> None:
        self.step_fn, self.starts = step_fn, []

    def __call__(self, model: Any, batch: Any) -> Any:
        self.starts.append(time.perf_counter())
        return self.step_fn(model, batch)


def mae_step(model: Any, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    return model(batch["cxr"]).loss, {}


def distill_step(model: Any, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    return model(batch["cxr"], batch["teacher_embeddings"])


def loader_images_per_second(loader: Any, fill: int, batches: int, device: torch.device) -> float:
    it = iter(loader)
    for _ in range(fill):
        next(it)
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        batch = move_to_device(next(it), device, non_blocking=device.type == "cuda")
        images += batch["cxr"].shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return images / (time.perf_counter() - start)


def run_stage(stage: str, args: argparse.Namespace, root: Path, device: torch.device, peak: float | None) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    mae = create_mae(args.preset)
    size = mae.img_size
    need = (args.steps + 2) * args.batch
    if stage == "mae":
        model: torch.nn.Module = mae
        base: Dataset = SymileMIMIC(root, "train", modalities=("cxr",), image_size=size,
                                    cxr_transform=stage1_train_transform(size))
        step_fn, flops = mae_step, mae_flops(mae, args.batch, mae.mask_ratio).training()
        cfg = dict(lr=1.5e-4, weight_decay=0.05, betas=(0.9, 0.95), grad_clip=None)
    else:
        model = PaCXDistiller(mae.encoder, TEACHER_DIMS, shared_dim=args.shared_dim, loss_weights="authors_training")
        sym = SymileMIMIC(root, "train", modalities=("cxr",), image_size=size, cxr_transform=stage2_train_transform(size))
        rng = np.random.default_rng(args.seed)
        embeddings = {n: rng.standard_normal((len(sym), d), dtype=np.float32) for n, d in TEACHER_DIMS.items()}
        base = EmbeddingDataset(sym, embeddings)
        step_fn, flops = distill_step, distiller_flops(model, args.batch)
        cfg = dict(lr=1e-4, weight_decay=0.05, betas=(0.9, 0.999), grad_clip=1.0)
    dataset = repeat_dataset(base, need)
    loader = make_loader(dataset, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=args.workers,
                         seed=args.seed, pin_memory=device.type == "cuda")
    config = TrainerConfig(epochs=1, max_steps=args.steps, warmup_steps=min(10, args.steps), amp=args.amp,
                           compile=args.compile, log_every=args.steps, device=str(device), progress=False,
                           tensorboard=False, seed=args.seed, **cfg)
    clock = StepClock(step_fn)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory(prefix=f"pacx_bench_{stage}_") as out:
        start = time.perf_counter()
        result = Trainer(config, out).fit(model, loader, clock)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        end = time.perf_counter()  # after the final export: the last step has surely finished
        peak_bytes = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    starts = clock.starts[args.skip:]
    if len(starts) < 3:
        raise SystemExit(f"--steps must exceed --skip by at least 3, got steps={args.steps}, skip={args.skip}")
    intervals = np.diff(starts)
    wall_ips = args.batch * (len(starts) - 1) / (starts[-1] - starts[0])
    median_s = float(statistics.median(intervals))
    loader_ips = loader_images_per_second(loader, max(1, args.workers), args.loader_batches, device)
    del loader
    return {
        "stage": stage,
        "steps": result["step"],
        "timed steps": len(starts) - 1,
        "images/s (wall)": wall_ips,
        "images/s (median step)": args.batch / median_s,
        "MFU %": mfu(flops, args.batch / wall_ips, peak),
        "peak MiB": fmt_mib(peak_bytes),
        "loader images/s": loader_ips,
        "loader headroom": loader_ips / wall_ips,
        "first-step s": (clock.starts[1] - clock.starts[0]) if len(clock.starts) > 1 else None,
        "fit s": end - start,
        "final loss": result["metrics"].get("loss"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--stages", default="mae,distill", help="comma-separated: mae, distill")
    parser.add_argument("--preset", default=None, help="MAE preset (default mae_vit_tiny_patch8_64; --paper mae_vit_base_patch16)")
    parser.add_argument("--batch", type=int, default=None, help="batch (default 16; --paper 256)")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps per stage (default 8; --paper 150)")
    parser.add_argument("--skip", type=int, default=None, help="warm-up steps left out of the rates (default 2; --paper 20)")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default 0; --paper min(12, cpus - 2))")
    parser.add_argument("--shared-dim", type=int, default=None, help="Stage-2 shared space (default 128; --paper 256)")
    parser.add_argument("--compile", action="store_true", help="TrainerConfig(compile=True)")
    parser.add_argument("--cache-dir", default=os.environ.get("PACX_BENCH_CACHE", "/tmp/pacx_bench_cache"))
    parser.add_argument("--n-patients", type=int, default=600, help="synthetic cohort size (train = 50%%)")
    parser.add_argument("--cohort-size", type=int, default=None, help="cohort image size (default: the model's)")
    parser.add_argument("--loader-batches", type=int, default=None, help="batches of the loader-alone pass (default 4; --paper 10)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the card for MFU")
    args = parser.parse_args(argv)
    device = setup(args, repeats=(1, 1), warmup=(0, 0))
    paper = args.paper
    args.preset = args.preset or ("mae_vit_base_patch16" if paper else "mae_vit_tiny_patch8_64")
    args.batch = args.batch or (256 if paper else 16)
    args.steps = args.steps or (150 if paper else 8)
    args.skip = args.skip if args.skip is not None else (20 if paper else 2)
    args.workers = args.workers if args.workers is not None else (min(12, max(0, (os.cpu_count() or 2) - 2)) if paper else 0)
    args.shared_dim = args.shared_dim or (256 if paper else 128)
    args.loader_batches = args.loader_batches or (10 if paper else 4)
    args.cohort_size = args.cohort_size or create_mae(args.preset).img_size
    peak = lookup_peak_tflops(device, args.peak_tflops)
    print_header("bench_trainer", device, args, f"preset={args.preset} batch={args.batch} steps={args.steps} "
                 f"workers={args.workers} compile={args.compile} peak_tflops={peak}")
    start = time.perf_counter()
    root = make_cohort(Path(args.cache_dir) / "cohorts", n_patients=args.n_patients, image_size=args.cohort_size,
                       seed=args.seed)
    print(f"cohort {root} ({args.cohort_size} px) ready in {time.perf_counter() - start:.1f} s")
    rows = []
    for stage in [s.strip() for s in args.stages.split(",") if s.strip()]:
        if stage not in ("mae", "distill"):
            raise SystemExit(f"--stages must name mae and/or distill, got {stage!r}")
        rows.append(run_stage(stage, args, root, device, peak))
        print(f"stage {stage} done: {rows[-1]['images/s (wall)']:.1f} images/s", flush=True)
    print_table(f"Trainer.fit, batch {args.batch}, {args.workers} workers", list(rows[0]), rows)
    write_json(args.json, "bench_trainer", device, args, {"trainer": rows})


if __name__ == "__main__":
    main()
