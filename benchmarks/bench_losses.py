"""Time and memory of GlobalInfoNCE against a plain two-matmul symmetric InfoNCE (one process).

The plain version builds ``a @ b.T`` and ``b @ a.T`` explicitly and calls ``F.cross_entropy`` on
each, which is what a direct transcription of the formula does (per direction one matmul forward
and two backward, and one saved log-softmax output). ``GlobalInfoNCE`` in one process computes
one logits matrix, reads it row-wise and column-wise with one ``log_softmax`` each, and runs its
backward as one hand-written autograd node: half the matmuls, one saved (B, B) matrix, one more
(B, B) gradient buffer in backward, and no host synchronisation.

Timing: one forward + backward per call, both candidates timed interleaved round by round
(``benchmarks/_timing.py``); ``ours / plain`` is the median of the per-round ratios (target
<= 1.05 at B >= 1024), ``spread`` = (max - min) / median of each candidate's rounds.

Other columns:

* ``ops``: aten operators dispatched by one forward + backward, views excluded (counted with a
  ``TorchDispatchMode``). On a GPU at these sizes each is about one kernel launch, which is
  what bounds the time of a launch-bound loss, so the count is a device-independent proxy.
* ``host reads``: aten operators in one forward + backward that make the host wait for the
  device on an accelerator (``item``/``bool``, data-dependent sizes, host-built tensors).
* ``saved MiB`` (every device): bytes of the distinct tensor storages autograd keeps between
  forward and backward, recorded with ``torch.autograd.graph.saved_tensors_hooks``: what a loss
  adds to activation memory during a training step, without temporaries.
* ``peak MiB`` (CUDA only): ``torch.cuda.max_memory_allocated`` over one forward + backward minus
  the memory allocated before it (inputs), so it does include the temporaries.

Run (CPU): ``python benchmarks/bench_losses.py --threads 1 --sizes 1024,4096``
Run (GPU): ``python benchmarks/bench_losses.py --device cuda --sizes 256,1024,4096,16384 --json losses.json``
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import (  # noqa: E402
    MIB,
    add_common_args,
    measure,
    paired_ratio,
    print_header,
    print_table,
    setup,
    sync,
    write_json,
)

from pacx.losses import GlobalInfoNCE  # noqa: E402

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
TARGET = 1.05
# Shape-only aten operators: no kernel runs for them.
_VIEWS = {"alias", "as_strided", "detach", "diagonal", "expand", "narrow", "permute", "select", "slice", "squeeze",
          "t", "transpose", "unsqueeze", "view", "_unsafe_view", "promote_types"}
# aten operators that make the host wait for an accelerator.
_HOST_READS = ("_local_scalar_dense", "lift_fresh", "nonzero", "masked_select", "unique", "is_nonzero", "equal")


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


class _CountOps(TorchDispatchMode):
    """Counts dispatched aten operators by name."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        self.counts[func.__name__.split(".")[0]] += 1
        return func(*args, **(kwargs or {}))


def _step(loss_fn: LossFn, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a.grad = b.grad = None
    loss = loss_fn(a, b)
    loss.backward()
    return loss.detach()


def profile_step(loss_fn: LossFn, a: torch.Tensor, b: torch.Tensor) -> dict[str, Any]:
    """One forward + backward (also a warm-up run): saved bytes, op and host-read counts, and the loss."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _CountOps() as ops:
        loss = _step(loss_fn, a, b)
    return {
        "saved": sum(storages.values()),
        "ops": sum(n for name, n in ops.counts.items() if name not in _VIEWS),
        "host reads": sum(n for name, n in ops.counts.items() if any(bad in name for bad in _HOST_READS)),
        "loss": loss.item(),
    }


def cuda_peak_bytes(loss_fn: LossFn, a: torch.Tensor, b: torch.Tensor) -> int | None:
    """Peak CUDA memory of one forward + backward above what was allocated before it (None off CUDA)."""
    if a.device.type != "cuda":
        return None
    a.grad = b.grad = None
    sync(a.device)
    torch.cuda.reset_peak_memory_stats(a.device)
    before = torch.cuda.memory_allocated(a.device)
    _step(loss_fn, a, b)
    sync(a.device)
    return torch.cuda.max_memory_allocated(a.device) - before


def _mib(num_bytes: int | None) -> float | None:
    return None if num_bytes is None else num_bytes / MIB


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--sizes", default="256,1024,4096", help="comma-separated batch sizes B")
    parser.add_argument("--dim", type=int, default=256, help="embedding size D (default: 256, the shared space)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 2 or args.dim < 1:
        parser.error(f"need batch sizes >= 2 and dim >= 1, got {sizes}, {args.dim}")
    device = setup(args, repeats=(7, 20), warmup=(1, 3))
    print_header("bench_losses", device, args, f"D={args.dim} sizes={sizes}")

    fn = GlobalInfoNCE().to(device)
    candidates: dict[str, LossFn] = {"ours": fn, "plain": plain_two_matmul_infonce(fn)}
    rows = []
    for batch in sizes:
        a = torch.randn(batch, args.dim, device=device, requires_grad=True)
        b = (a.detach() + torch.randn(batch, args.dim, device=device)).requires_grad_(True)
        prof = {name: profile_step(loss, a, b) for name, loss in candidates.items()}
        if abs(prof["ours"]["loss"] - prof["plain"]["loss"]) > 1e-3 * max(1.0, abs(prof["plain"]["loss"])):
            raise RuntimeError(f"the two implementations disagree at B={batch}: {prof}")
        times = measure({name: (lambda loss=loss: _step(loss, a, b)) for name, loss in candidates.items()},
                        device, args.repeats, args.warmup)
        peak = {name: cuda_peak_bytes(loss, a, b) for name, loss in candidates.items()}
        ratio = paired_ratio(times["ours"], times["plain"])
        rows.append({
            "B": batch,
            "ours ms": 1e3 * times["ours"].median,
            "plain ms": 1e3 * times["plain"].median,
            "ours / plain": ratio,
            "spread ours": times["ours"].spread,
            "spread plain": times["plain"].spread,
            f"<= {TARGET}": "yes" if ratio <= TARGET else "NO",
            "ops ours": prof["ours"]["ops"],
            "ops plain": prof["plain"]["ops"],
            "host reads ours": prof["ours"]["host reads"],
            "saved MiB ours": _mib(prof["ours"]["saved"]),
            "saved MiB plain": _mib(prof["plain"]["saved"]),
            "peak MiB ours": _mib(peak["ours"]),
            "peak MiB plain": _mib(peak["plain"]),
        })
    print_table(f"GlobalInfoNCE vs plain two-matmul InfoNCE, fwd+bwd, D={args.dim}, median of {args.repeats} "
                "interleaved rounds", list(rows[0]), rows)
    write_json(args.json, "bench_losses", device, args, {"losses": rows})


if __name__ == "__main__":
    main()
