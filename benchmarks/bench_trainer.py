"""``Trainer.fit`` against its own step: trainer images/s / isolated-step images/s, same model, batch and data.

For Stage 1 (MAE) and Stage 2 (distillation) two candidates train the same model on the same
loader, interleaved round by round in one process (the order rotates every round, as
``_timing.measure`` does):

* **trainer**: :meth:`pacx.engine.Trainer.fit` for ``--steps`` steps (default ``TrainerConfig``
  logging every 10 steps, no progress bar, no TensorBoard);
* **isolated step**: the loop a user would write by hand around the same ``step_fn``: move the
  batch, forward under the same autocast, backward, the same clipping, the same fused AdamW
  and warmup-cosine schedule, ``zero_grad``; nothing else.

A wrapper around the step function records the wall time at which each step starts; images/s
come from the interval between the starts of step ``--skip`` and of the last step (every
iteration in between: loading, copy, step, and for the trainer its logging). The ratio
trainer / isolated is computed per round and its median, minimum and maximum are reported:
near 1 means the trainer adds nothing to the step. Two load-robust estimates sit beside it: the
ratio of each candidate's fastest round (interference only ever slows a round down), and on
CPU the ratio in this process's CPU time (what the work costs, whatever else the machine runs).
Also: MFU (``benchmarks/_flops.py``), peak CUDA memory, and the loader's own images/s with its
headroom over the trainer.

Data: ``--data memory`` (default; random tensors held in memory, so the ratio isolates the
trainer's own cost) or ``--data cohort`` (default with ``--paper``: a synthetic cohort read
through :class:`pacx.data.SymileMIMIC` with the stage's training transform, as the pipeline
reads it; Stage 2 gets random cached teacher embeddings through
:class:`pacx.data.EmbeddingDataset`).

Run (CPU): ``python benchmarks/bench_trainer.py --threads 1``
Run (toy, seconds): ``python benchmarks/bench_trainer.py --toy --repeats 1``
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

import torch
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _flops import distiller_flops, lookup_peak_tflops, mae_flops, mfu  # noqa: E402
from _timing import (  # noqa: E402
    add_common_args,
    amp_context,
    fmt_mib,
    print_header,
    print_table,
    repeat_dataset,
    setup,
    sync,
    write_json,
)

TEACHER_DIMS = {"ecg": 1024, "labs": 256}


class StepClock:
    """Wrap a step function and record the wall and process CPU time at the start of every call."""

    def __init__(self, step_fn: Callable[[Any, Any], Any]) -> None:
        self.step_fn, self.starts, self.cpu_starts = step_fn, [], []

    def __call__(self, model: Any, batch: Any) -> Any:
        self.starts.append(time.perf_counter())
        self.cpu_starts.append(time.process_time())
        return self.step_fn(model, batch)

    def images_per_second(self, batch: int, skip: int, cpu: bool = False) -> float:
        """Images/s between the start of step ``skip`` and the start of the last step, in wall time
        or in this process's CPU time (``cpu``: what the work costs, whatever else the machine runs)."""
        starts = (self.cpu_starts if cpu else self.starts)[skip:]
        if len(starts) < 3:
            raise SystemExit(f"--steps must exceed --skip by at least 3, got {len(self.starts)} steps, skip={skip}")
        return batch * (len(starts) - 1) / (starts[-1] - starts[0])


def mae_step(model: Any, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    return model(batch["cxr"]).loss, {}


def distill_step(model: Any, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    return model(batch["cxr"], batch["teacher_embeddings"])


class MemoryCohort(Dataset):
    """Random CXR tensors (and teacher embeddings) held in memory: loading costs next to nothing."""

    def __init__(self, n: int, image_size: int, teachers: bool, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.cxr = torch.randn(n, 3, image_size, image_size, generator=g)
        self.embeddings = {k: torch.randn(n, d, generator=g) for k, d in TEACHER_DIMS.items()} if teachers else None

    def __len__(self) -> int:
        return len(self.cxr)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {"cxr": self.cxr[i]}
        if self.embeddings is not None:
            item["teacher_embeddings"] = {k: v[i] for k, v in self.embeddings.items()}
        return item


def build_dataset(stage: str, args: argparse.Namespace, size: int) -> Dataset:
    """The stage's training data, repeated so one epoch spans every step."""
    need = (args.steps + 2) * args.batch
    if args.data == "memory":
        return repeat_dataset(MemoryCohort(min(need, 256), size, stage == "distill", args.seed), need)
    import numpy as np

    from pacx.data import EmbeddingDataset, SymileMIMIC, stage1_train_transform, stage2_train_transform
    from pacx.data.synthetic import make_cohort

    start = time.perf_counter()
    root = make_cohort(Path(args.cache_dir) / "cohorts", n_patients=args.n_patients, image_size=args.cohort_size,
                       seed=args.seed)
    print(f"cohort {root} ({args.cohort_size} px) ready in {time.perf_counter() - start:.1f} s", flush=True)
    if stage == "mae":
        base: Dataset = SymileMIMIC(root, "train", modalities=("cxr",), image_size=size,
                                    cxr_transform=stage1_train_transform(size))
    else:
        sym = SymileMIMIC(root, "train", modalities=("cxr",), image_size=size, cxr_transform=stage2_train_transform(size))
        rng = np.random.default_rng(args.seed)
        embeddings = {n: rng.standard_normal((len(sym), d), dtype=np.float32) for n, d in TEACHER_DIMS.items()}
        base = EmbeddingDataset(sym, embeddings)
    return repeat_dataset(base, need)


def isolated_fit(model: torch.nn.Module, loader: Any, step_fn: Callable, config: Any, device: torch.device) -> None:
    """The hand-written loop around ``step_fn`` that ``Trainer.fit`` is measured against."""
    from pacx.engine import Trainer, build_optimizer, move_to_device, warmup_cosine

    amp = Trainer(config, tempfile.gettempdir()).amp_dtype(device)  # the trainer's autocast dtype
    model.to(device).train()
    optimizer = build_optimizer(model, config.lr, config.weight_decay, config.betas, config.eps)
    scheduler = warmup_cosine(optimizer, config.warmup_steps, config.max_steps, config.min_lr_ratio)
    params = [p for p in model.parameters() if p.requires_grad]
    runner = torch.compile(model, backend=config.compile_backend) if config.compile else model
    batches = iter(loader)
    for _ in range(config.max_steps):
        batch = move_to_device(next(batches), device, non_blocking=device.type == "cuda")
        with amp_context(device, amp):
            loss, _ = step_fn(runner, batch)
        loss.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    sync(device)


def loader_images_per_second(loader: Any, fill: int, batches: int, device: torch.device) -> float:
    from pacx.engine import move_to_device

    it = iter(loader)
    for _ in range(fill):
        next(it)
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        batch = move_to_device(next(it), device, non_blocking=device.type == "cuda")
        images += batch["cxr"].shape[0]
    sync(device)
    return images / (time.perf_counter() - start)


def build_stage(stage: str, args: argparse.Namespace, device: torch.device) -> tuple[Any, Callable, float, Any, Any]:
    """Model, step function, training FLOPs per step, loader and ``TrainerConfig`` of one stage."""
    from pacx.engine import TrainerConfig, make_loader
    from pacx.nets import PaCXDistiller, create_mae

    torch.manual_seed(args.seed)
    mae = create_mae(args.preset)
    if stage == "mae":
        model: torch.nn.Module = mae
        step_fn, flops = mae_step, mae_flops(mae, args.batch, mae.mask_ratio).training()
        cfg = dict(lr=1.5e-4, weight_decay=0.05, betas=(0.9, 0.95), grad_clip=None)
    else:
        model = PaCXDistiller(mae.encoder, TEACHER_DIMS, shared_dim=args.shared_dim, loss_weights="authors_training")
        step_fn, flops = distill_step, distiller_flops(model, args.batch)
        cfg = dict(lr=1e-4, weight_decay=0.05, betas=(0.9, 0.999), grad_clip=1.0)
    loader = make_loader(build_dataset(stage, args, mae.img_size), batch_size=args.batch, shuffle=True,
                         drop_last=True, num_workers=args.workers, seed=args.seed, pin_memory=device.type == "cuda")
    config = TrainerConfig(epochs=1, max_steps=args.steps, warmup_steps=min(10, args.steps), amp=args.amp,
                           compile=args.compile, device=str(device), progress=False, tensorboard=False,
                           seed=args.seed, name=stage, **cfg)
    return model, step_fn, flops, loader, config


def run_stage(stage: str, args: argparse.Namespace, device: torch.device, peak: float | None) -> dict[str, Any]:
    """Time the trainer and the isolated step of ``stage`` in interleaved rounds; one table row."""
    from pacx.engine import Trainer

    model, step_fn, flops, loader, config = build_stage(stage, args, device)
    clocks: dict[str, list[StepClock]] = {"trainer": [], "isolated": []}
    fit_seconds, result = [], {}

    def trainer_run() -> None:
        nonlocal result
        clock = StepClock(step_fn)
        with tempfile.TemporaryDirectory(prefix=f"pacx_bench_{stage}_") as out:
            start = time.perf_counter()
            result = Trainer(config, out).fit(model, loader, clock)
            sync(device)
            fit_seconds.append(time.perf_counter() - start)
        clocks["trainer"].append(clock)

    def isolated_run() -> None:
        clock = StepClock(step_fn)
        isolated_fit(model, loader, clock, config, device)
        clocks["isolated"].append(clock)

    candidates = {"trainer": trainer_run, "isolated": isolated_run}
    for _ in range(args.warmup):
        for fn in candidates.values():
            fn()
    for done in (*clocks.values(), fit_seconds):
        done.clear()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for round_index in range(args.repeats):  # interleaved, the order rotating every round
        order = list(candidates)[round_index % 2:] + list(candidates)[: round_index % 2]
        for name in order:
            candidates[name]()
    peak_bytes = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    rates = {name: [c.images_per_second(args.batch, args.skip) for c in cs] for name, cs in clocks.items()}
    ratios = [t / i for t, i in zip(rates["trainer"], rates["isolated"])]
    trainer_ips = statistics.median(rates["trainer"])
    loader_ips = loader_images_per_second(loader, max(1, args.workers), args.loader_batches, device)
    first = clocks["trainer"][0].starts
    cpu_ratio = None
    if device.type == "cpu":  # on CUDA the host's CPU time says nothing about the step
        cpu = {name: [c.images_per_second(args.batch, args.skip, cpu=True) for c in cs] for name, cs in clocks.items()}
        cpu_ratio = statistics.median(t / i for t, i in zip(cpu["trainer"], cpu["isolated"]))
    return {
        "stage": stage,
        "steps": result["step"],
        "timed steps": len(first) - args.skip - 1,
        "rounds": args.repeats,
        "trainer images/s": trainer_ips,
        "isolated images/s": statistics.median(rates["isolated"]),
        "trainer / isolated": statistics.median(ratios),
        "ratio min": min(ratios),
        "ratio max": max(ratios),
        "ratio of best rounds": max(rates["trainer"]) / max(rates["isolated"]),
        "ratio in CPU time": cpu_ratio,
        "MFU %": mfu(flops, args.batch / trainer_ips, peak),
        "peak MiB": fmt_mib(peak_bytes),
        "loader images/s": loader_ips,
        "loader headroom": loader_ips / trainer_ips,
        "first-step s": first[1] - first[0],
        "fit s": statistics.median(fit_seconds),
        "final loss": result["metrics"].get("loss"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--toy", action="store_true",
                        help="seconds-long run: Stage 1 only, batch 4, 5 steps, memory data, 1 thread")
    parser.add_argument("--stages", default=None, help="comma-separated: mae, distill (default both; --toy mae)")
    parser.add_argument("--data", choices=("memory", "cohort"), default=None,
                        help="in-memory random tensors, or the synthetic cohort's real path (default memory; --paper cohort)")
    parser.add_argument("--preset", default=None, help="MAE preset (default mae_vit_tiny_patch8_64; --paper mae_vit_base_patch16)")
    parser.add_argument("--batch", type=int, default=None, help="batch (default 16; --toy 4; --paper 256)")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps per run (default 24; --toy 5; --paper 150)")
    parser.add_argument("--skip", type=int, default=None, help="warm-up steps left out of the rates (default 3; --toy 1; --paper 20)")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default 0; --paper min(12, cpus - 2))")
    parser.add_argument("--shared-dim", type=int, default=None, help="Stage-2 shared space (default 128; --paper 256)")
    parser.add_argument("--compile", action="store_true", help="TrainerConfig(compile=True), and compile the isolated step")
    parser.add_argument("--cache-dir", default=os.environ.get("PACX_BENCH_CACHE", "/tmp/pacx_bench_cache"))
    parser.add_argument("--n-patients", type=int, default=600, help="synthetic cohort size (train = 50%%), --data cohort")
    parser.add_argument("--cohort-size", type=int, default=None, help="cohort image size (default: the model's)")
    parser.add_argument("--loader-batches", type=int, default=None, help="batches of the loader-alone pass (default 4; --paper 10)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the card for MFU")
    args = parser.parse_args(argv)
    if args.toy and args.threads == 0:
        args.threads = 1  # a loaded machine makes several threads crawl, and the toy run is a smoke test
    device = setup(args, repeats=(5, 1), warmup=(0, 0))
    paper, toy = args.paper, args.toy
    args.stages = args.stages or ("mae" if toy else "mae,distill")
    args.data = args.data or ("cohort" if paper else "memory")
    args.preset = args.preset or ("mae_vit_base_patch16" if paper else "mae_vit_tiny_patch8_64")
    args.batch = args.batch or (256 if paper else 4 if toy else 16)
    args.steps = args.steps or (150 if paper else 5 if toy else 24)
    args.skip = args.skip if args.skip is not None else (20 if paper else 1 if toy else 3)
    args.workers = args.workers if args.workers is not None else (min(12, max(0, (os.cpu_count() or 2) - 2)) if paper else 0)
    args.shared_dim = args.shared_dim or (256 if paper else 128)
    args.loader_batches = args.loader_batches or (10 if paper else 2 if toy else 4)
    from pacx.nets import create_mae

    args.cohort_size = args.cohort_size or create_mae(args.preset).img_size
    peak = lookup_peak_tflops(device, args.peak_tflops)
    print_header("bench_trainer", device, args, f"preset={args.preset} batch={args.batch} steps={args.steps} "
                 f"skip={args.skip} data={args.data} workers={args.workers} compile={args.compile} peak_tflops={peak}")
    rows = []
    for stage in [s.strip() for s in args.stages.split(",") if s.strip()]:
        if stage not in ("mae", "distill"):
            raise SystemExit(f"--stages must name mae and/or distill, got {stage!r}")
        rows.append(run_stage(stage, args, device, peak))
        print(f"stage {stage} done: trainer / isolated {rows[-1]['trainer / isolated']:.3f}", flush=True)
    print_table(f"Trainer.fit vs its isolated step, batch {args.batch}, {args.data} data, {args.workers} workers",
                list(rows[0]), rows, digits=3)
    write_json(args.json, "bench_trainer", device, args, {"trainer": rows})


if __name__ == "__main__":
    main()
