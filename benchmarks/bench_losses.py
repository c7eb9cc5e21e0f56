"""Time and memory of GlobalInfoNCE against a plain two-matmul symmetric InfoNCE (one process).

The plain version builds ``a @ b.T`` and ``b @ a.T`` explicitly and calls ``F.cross_entropy`` on
each, which is what a direct transcription of the formula does (per direction one matmul forward
and two backward, and one saved log-softmax output). ``GlobalInfoNCE`` in one process
computes one logits matrix, reads it row-wise and column-wise in bounded row blocks and evaluates
the label-smoothing term in closed form: half the matmuls, one saved (B, B) matrix, and one more
(B, B) gradient buffer in backward.

Memory columns:

* ``saved MiB`` (every device): bytes of the distinct tensor storages autograd keeps between
  forward and backward, recorded with ``torch.autograd.graph.saved_tensors_hooks``. This is what a
  loss adds to activation memory during a training step. It does not count temporaries freed
  within forward or backward.
* ``peak MiB`` (CUDA only): ``torch.cuda.max_memory_allocated`` over one forward + backward, minus
  the memory allocated before it (inputs), so it does include those temporaries.

Run: ``python benchmarks/bench_losses.py [--device cpu|cuda] [--sizes 256,1024,4096] [--repeats 3] [--threads N]``.
Timings are medians over ``--repeats`` runs after one warm-up run (the memory run); ratios > 1 favour GlobalInfoNCE.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from pacx.losses import GlobalInfoNCE

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MIB = 2.0**20


def plain_two_matmul_infonce(fn: GlobalInfoNCE) -> LossFn:
    """The same loss as ``fn`` written directly: two matmuls, two ``F.cross_entropy`` calls."""

    def loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
        scale = fn.clamped_scale()
        logits_ab = scale * a @ b.T
        logits_ba = scale * b @ a.T
        targets = torch.arange(a.shape[0], device=a.device)
        eps = fn.label_smoothing
        return 0.5 * (
            F.cross_entropy(logits_ab, targets, label_smoothing=eps)
            + F.cross_entropy(logits_ba, targets, label_smoothing=eps)
        )

    return loss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(loss_fn: LossFn, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a.grad = b.grad = None
    loss = loss_fn(a, b)
    loss.backward()
    return loss.detach()


def saved_bytes_and_loss(loss_fn: LossFn, a: torch.Tensor, b: torch.Tensor) -> tuple[int, float]:
    """One forward + backward (also the warm-up run): bytes of distinct storages saved for backward, and the loss."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = _step(loss_fn, a, b)
    return sum(storages.values()), loss.item()


def median_seconds(loss_fn: LossFn, a: torch.Tensor, b: torch.Tensor, repeats: int) -> float:
    """Median wall time of one forward + backward (call after a warm-up run)."""
    _sync(a.device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _step(loss_fn, a, b)
        _sync(a.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cuda_peak_bytes(loss_fn: LossFn, a: torch.Tensor, b: torch.Tensor) -> int:
    """Peak CUDA memory of one forward + backward above what was allocated before it."""
    a.grad = b.grad = None
    torch.cuda.synchronize(a.device)
    torch.cuda.reset_peak_memory_stats(a.device)
    before = torch.cuda.memory_allocated(a.device)
    _step(loss_fn, a, b)
    torch.cuda.synchronize(a.device)
    return torch.cuda.max_memory_allocated(a.device) - before


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--sizes", default="256,1024,4096", help="comma-separated batch sizes B")
    parser.add_argument("--dim", type=int, default=256, help="embedding size D (default: 256)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (default: 3)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default: 0 = torch's choice)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.repeats < 1 or not sizes or min(sizes) < 2 or args.dim < 1:
        parser.error(f"need repeats >= 1, batch sizes >= 2 and dim >= 1, got {args.repeats}, {sizes}, {args.dim}")

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fn = GlobalInfoNCE().to(device)
    candidates: dict[str, LossFn] = {"global": fn, "plain": plain_two_matmul_infonce(fn)}
    cuda = device.type == "cuda"
    threads = torch.get_num_threads()
    print(f"device={device} D={args.dim} repeats={args.repeats} threads={threads} torch={torch.__version__}")
    header = "| B | GlobalInfoNCE ms | plain ms | time plain/ours "
    header += "| saved MiB ours | saved MiB plain | saved plain/ours |"
    if cuda:
        header += " peak MiB ours | peak MiB plain | peak plain/ours |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for batch in sizes:
        a = torch.randn(batch, args.dim, device=device, requires_grad=True)
        b = (a.detach() + torch.randn(batch, args.dim, device=device)).requires_grad_(True)
        saved, value = {}, {}
        for name, loss in candidates.items():  # doubles as the warm-up run
            saved[name], value[name] = saved_bytes_and_loss(loss, a, b)
        if abs(value["global"] - value["plain"]) > 1e-3 * max(1.0, abs(value["plain"])):
            raise RuntimeError(f"the two implementations disagree at B={batch}: {value}")
        seconds = {name: median_seconds(loss, a, b, args.repeats) for name, loss in candidates.items()}
        row = (
            f"| {batch} | {1e3 * seconds['global']:.2f} | {1e3 * seconds['plain']:.2f} | "
            f"{seconds['plain'] / seconds['global']:.2f} | {saved['global'] / MIB:.2f} | {saved['plain'] / MIB:.2f} | "
            f"{saved['plain'] / saved['global']:.2f} |"
        )
        if cuda:
            peak = {name: cuda_peak_bytes(loss, a, b) for name, loss in candidates.items()}
            row += f" {peak['global'] / MIB:.2f} | {peak['plain'] / MIB:.2f} | {peak['plain'] / peak['global']:.2f} |"
        print(row)


if __name__ == "__main__":
    main()
