"""GlobalInfoNCE on N ranks equals the one-process loss on the whole batch (torchrun; NCCL on GPUs).

Every rank first computes the one-process reference on the whole global batch (before the
process group exists, so nothing is gathered), then its own slice's loss and gradients with
the group initialised (NCCL when CUDA is available, else gloo). Checked, in float64:

* mean over ranks of the per-rank losses == the whole-batch loss;
* input gradients assembled over ranks and divided by the world size (DDP's averaging) == the
  whole-batch input gradients;
* mean over ranks of the temperature gradient == the whole-batch temperature gradient;
* two extra batches in bf16 autocast/float32 (looser tolerance, CUDA only): finite and close.

Rank 0 prints one line per check and the script exits non-zero on any mismatch.

Run: ``torchrun --standalone --nproc_per_node=2 benchmarks/dist_infonce_check.py [--per-rank 64 --dim 256]``
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist

from pacx.distributed import init_distributed
from pacx.losses import GlobalInfoNCE


def loss_and_grads(a: torch.Tensor, b: torch.Tensor, smoothing: float) -> tuple[torch.Tensor, ...]:
    fn = GlobalInfoNCE(temperature=0.1, label_smoothing=smoothing).to(device=a.device, dtype=a.dtype)
    a = a.detach().clone().requires_grad_(True)
    b = b.detach().clone().requires_grad_(True)
    loss = fn(a, b)
    loss.backward()
    return loss.detach(), a.grad, b.grad, fn.logit_scale.grad.detach().reshape(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-rank", type=int, default=64, help="rows per rank")
    parser.add_argument("--dim", type=int, default=256, help="embedding size")
    parser.add_argument("--backend", default=None, help="nccl or gloo (default: nccl with CUDA, else gloo)")
    args = parser.parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world < 2:
        print("dist_infonce_check: WORLD_SIZE < 2, nothing to compare (run it under torchrun --nproc_per_node=2)")
        return 0
    cuda = torch.cuda.is_available() and args.backend != "gloo"
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)

    gen = torch.Generator().manual_seed(0)  # the same global batch on every rank
    n = world * args.per_rank
    a_all = torch.randn(n, args.dim, generator=gen, dtype=torch.float64)
    b_all = 0.5 * a_all + 0.5 * torch.randn(n, args.dim, generator=gen, dtype=torch.float64)
    rows = slice(rank * args.per_rank, (rank + 1) * args.per_rank)
    smoothings = (0.0, 0.02)
    reference = {s: loss_and_grads(a_all.to(device), b_all.to(device), s) for s in smoothings}  # before init

    init_distributed(args.backend or ("nccl" if cuda else "gloo"))
    backend = dist.get_backend()
    failures = 0

    def report(name: str, ok: bool, detail: str) -> None:
        nonlocal failures
        failures += 0 if ok else 1
        if rank == 0:
            print(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}")

    for smoothing in smoothings:
        loss, ga, gb, gs = loss_and_grads(a_all[rows].to(device), b_all[rows].to(device), smoothing)
        losses = [torch.zeros_like(loss) for _ in range(world)]
        dist.all_gather(losses, loss)
        grads_a = [torch.zeros_like(ga) for _ in range(world)]
        grads_b = [torch.zeros_like(gb) for _ in range(world)]
        scale_grads = [torch.zeros_like(gs) for _ in range(world)]
        dist.all_gather(grads_a, ga)
        dist.all_gather(grads_b, gb)
        dist.all_gather(scale_grads, gs)
        ref_loss, ref_ga, ref_gb, ref_gs = reference[smoothing]
        mean_loss = torch.stack(losses).mean()
        ga_all = torch.cat(grads_a) / world
        gb_all = torch.cat(grads_b) / world
        gs_mean = torch.stack(scale_grads).mean()
        tag = f"{backend} world={world} B/rank={args.per_rank} eps={smoothing}"
        report(f"loss {tag}", torch.allclose(mean_loss, ref_loss, rtol=1e-10, atol=1e-12),
               f"{mean_loss.item():.12f} vs {ref_loss.item():.12f}")
        err_a = (ga_all - ref_ga).abs().max().item()
        err_b = (gb_all - ref_gb).abs().max().item()
        report(f"input grads {tag}", torch.allclose(ga_all, ref_ga, rtol=1e-9, atol=1e-12)
               and torch.allclose(gb_all, ref_gb, rtol=1e-9, atol=1e-12), f"max abs err a {err_a:.2e}, b {err_b:.2e}")
        report(f"temperature grad {tag}", torch.allclose(gs_mean, ref_gs.squeeze(), rtol=1e-9, atol=1e-12),
               f"{gs_mean.item():.10f} vs {ref_gs.item():.10f}")

    if cuda:  # mixed precision: the loss of bf16-autocast embeddings stays finite and near float32
        a32, b32 = a_all[rows].float().to(device), b_all[rows].float().to(device)
        fn = GlobalInfoNCE().to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = fn(a32, b32)
        high = fn(a32, b32)
        ok = bool(torch.isfinite(low)) and abs(low.item() - high.item()) <= 2e-2 * max(1.0, abs(high.item()))
        report(f"bf16 autocast {backend}", ok, f"{low.item():.5f} vs float32 {high.item():.5f}")

    dist.barrier()
    dist.destroy_process_group()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
