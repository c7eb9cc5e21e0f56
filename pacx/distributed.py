"""Thin helpers over ``torch.distributed``.

Every collective here is guarded by :func:`is_distributed`, so code that calls these helpers
runs unchanged in a single process. Multi-process runs are started with ``torchrun``.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = [
    "all_gather_with_grad",
    "all_gather_object",
    "barrier",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
]


def is_distributed() -> bool:
    """Return True when ``torch.distributed`` is available and initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0, and always in a single process."""
    return get_rank() == 0


def barrier() -> None:
    """Synchronise all ranks; a no-op in a single process."""
    if is_distributed():
        dist.barrier()


def init_distributed(backend: str | None = None) -> bool:
    """Initialise the default process group from ``torchrun`` environment variables.

    Args:
        backend: ``"nccl"`` or ``"gloo"``; by default NCCL when CUDA is available, else gloo.

    Returns:
        True when a process group is (now) initialised, False when the environment does not
        describe a multi-process run (no ``WORLD_SIZE`` > 1).
    """
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, keeping autograd.

    The backward pass sends each rank the gradient of its own slice summed over all ranks,
    which is what makes a loss over gathered keys equal to the single-process loss.
    Single process: returns ``tensor`` unchanged.

    Args:
        tensor: (B, ...) tensor; B must be equal on every rank.

    Returns:
        (world_size * B, ...) tensor ordered by rank.
    """
    if not is_distributed() or get_world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor.contiguous())


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums each slice's gradient over ranks and returns this rank's.

    Written here rather than taken from ``torch.distributed.nn.functional.all_gather``, which
    torch 2.14 deprecates in favour of a private module. ``all_reduce`` (not ``reduce_scatter``)
    keeps it working on gloo as well as NCCL.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # noqa: D102
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        ctx.batch = tensor.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        grad = grad.contiguous().clone()  # all_reduce is in place; the incoming gradient may be shared
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.batch
        return grad[start:start + ctx.batch]


def all_gather_object(obj: object) -> list[object]:
    """Gather a picklable Python object from every rank (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[object] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out
