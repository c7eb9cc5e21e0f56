"""Stage-2 throughput of ``Trainer.fit`` on 1 rank against N ranks (DDP, same global batch).

Each world size runs the Stage-2 training path as the pipeline runs it: a
:class:`pacx.nets.PaCXDistiller` (LoRA r 8 on qkv/fc1/fc2, two cached teachers, GlobalInfoNCE
whose negatives are gathered from every rank) trained by :class:`pacx.engine.Trainer` on a
:func:`pacx.engine.make_loader` loader whose ``batch_size`` is the global batch. With N ranks
each process gets ``batch // N`` rows per step, so images/s growing with N means the run scales.

Every process is limited to ``--threads`` threads (default 1), so N ranks use N cores: on a
machine with fewer free cores than ranks the ratio measures contention, not scaling. Timing:
the step function records a timestamp at each call on rank 0; the rate is the number of images
of the ``--steps`` steps after ``--warmup`` divided by the time from the first one's start to
the start of the step after the last, which includes the loader, the gradient all-reduce, the
optimiser and logging, but not the final checkpoint. World sizes are run alternately,
``--repeats`` times each, and the median rate is reported.

Run (CPU): ``python benchmarks/bench_ranks.py --world-sizes 1 2``
Run (GPUs, one process per card, NCCL): ``python benchmarks/bench_ranks.py --device cuda --world-sizes 1 2 4``
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import add_common_args, print_header, print_table, setup, write_json  # noqa: E402

from pacx.engine import Trainer, TrainerConfig, make_loader  # noqa: E402
from pacx.nets import PaCXDistiller, create_mae  # noqa: E402

TEACHER_DIMS = {"ecg": 128, "labs": 256}  # the cpu profile's teacher embedding sizes


class _Rows(torch.utils.data.Dataset):
    """Random CXRs and teacher embeddings, fixed per index (the pipeline reads cached ones)."""

    def __init__(self, n: int, size: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.cxr = torch.randn(n, 3, size, size, generator=g)
        self.emb = {k: torch.randn(n, d, generator=g) for k, d in TEACHER_DIMS.items()}

    def __len__(self) -> int:
        return len(self.cxr)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"cxr": self.cxr[i], "teacher_embeddings": {k: v[i] for k, v in self.emb.items()}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, result_file: str) -> None:
    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        student = create_mae(args.preset).encoder
        model = PaCXDistiller(student, TEACHER_DIMS, shared_dim=128, loss_weights="authors_training")
        size = student.patch_embed.img_size[0]
        steps = args.warmup + args.steps + 1
        data = _Rows(args.batch * steps, size)
        loader = make_loader(data, batch_size=args.batch, shuffle=True, drop_last=True, seed=0)
        stamps: list[float] = []

        def step(m: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
            stamps.append(time.perf_counter())
            return m(batch["cxr"], batch["teacher_embeddings"])

        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainerConfig(epochs=1, lr=1e-3, log_every=10, progress=False, tensorboard=False,
                                device="auto" if cuda else "cpu", name="bench")
            Trainer(cfg, tmp).fit(model, loader, step)
        if rank == 0:  # from the first timed step's start to the last step's start: no final save in it
            timed = stamps[args.warmup:]
            rate = args.batch * (len(timed) - 1) / (timed[-1] - timed[0])
            Path(result_file).write_text(repr(rate))
    finally:
        if world > 1:
            dist.destroy_process_group()


def run_world(world: int, args: argparse.Namespace) -> float:
    """Images/s of one ``Trainer.fit`` on ``world`` processes."""
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "rate")
        mp.spawn(_worker, args=(world, _free_port(), args, out), nprocs=world, join=True)
        return float(Path(out).read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[1, 2], help="numbers of ranks to compare")
    parser.add_argument("--batch", type=int, default=128, help="global batch, the cpu profile's (divisible by every world size)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--preset", default="mae_vit_tiny_patch8_64", help="student = encoder of this MAE preset")
    args = parser.parse_args(argv)
    args.threads = args.threads or 1
    device = setup(args, repeats=(3, 3), warmup=(3, 5))
    args.device = device.type
    if 1 not in args.world_sizes:
        raise SystemExit("--world-sizes must include 1, the baseline")
    bad = [w for w in args.world_sizes if w < 1 or args.batch % w]
    if bad:
        raise SystemExit(f"--batch {args.batch} must be divisible by every world size; not by {bad}")
    if device.type == "cuda" and max(args.world_sizes) > torch.cuda.device_count():
        raise SystemExit(f"{max(args.world_sizes)} ranks need as many GPUs; {torch.cuda.device_count()} visible")
    print_header("bench_ranks", device, args,
                 f"preset={args.preset} global batch={args.batch} threads/rank={args.threads} "
                 f"steps={args.steps} cpus={os.cpu_count()}")
    rates: dict[int, list[float]] = {w: [] for w in args.world_sizes}
    for _ in range(args.repeats):  # alternate, so a drift in the machine's load hits every world size
        for world in args.world_sizes:
            rates[world].append(run_world(world, args))
    base = statistics.median(rates[1])
    rows = [{
        "ranks": w,
        "images/s": statistics.median(r),
        "speed-up vs 1 rank": statistics.median(r) / base,
        "efficiency": statistics.median(r) / base / w,
        "per-rank batch": args.batch // w,
    } for w, r in rates.items()]
    print_table(f"Stage-2 Trainer.fit throughput, global batch {args.batch}", list(rows[0]), rows)
    write_json(args.json, "bench_ranks", device, args, {"rows": rows})


if __name__ == "__main__":
    main()
