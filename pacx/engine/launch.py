"""Process-group lifetime for ``torchrun`` launches.

A recipe wraps its ``main`` in :func:`distributed_context`; started with plain ``python`` it
runs single-process, started with ``torchrun --nproc_per_node N`` every process joins the
group (NCCL on GPUs, gloo on CPU) and leaves it cleanly at the end::

    # python recipes/stage.py ...   or   torchrun --standalone --nproc_per_node 4 recipes/stage.py ...
    with distributed_context() as info:
        loader = make_loader(dataset, batch_size=global_batch, seed=args.seed)  # per rank: global / N
        Trainer(config, args.out, run_config=vars(args)).fit(model, loader, step_fn, resume=args.resume)

Nothing else changes between the two launches: the trainer wraps the model in DDP, only rank 0
writes files, and ``pacx.distributed.all_gather_with_grad`` gives losses their global negatives.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pacx.distributed import get_rank, get_world_size, init_distributed, is_distributed

__all__ = ["DistributedInfo", "distributed_context"]


@dataclass(frozen=True)
class DistributedInfo:
    """Where this process stands in the run.

    Attributes:
        rank: global rank.
        world_size: number of processes.
        local_rank: rank on this node (the GPU index under torchrun).
        device: the device this process should use.

    Example:
        >>> DistributedInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")).is_main
        True
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on rank 0."""
        return self.rank == 0


@contextmanager
def distributed_context(backend: str | None = None) -> Iterator[DistributedInfo]:
    """Join the ``torchrun`` process group for the duration of the block.

    Single process (no ``WORLD_SIZE`` > 1 in the environment): nothing is initialised. A group
    created here is destroyed on exit; one that already existed is left alone.

    Args:
        backend: ``"nccl"`` or ``"gloo"``; default NCCL with CUDA, else gloo.

    Yields:
        :class:`DistributedInfo` of this process.

    Example:
        >>> with distributed_context() as info:
        ...     info.world_size
        1
    """
    created = not is_distributed() and init_distributed(backend)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        yield DistributedInfo(rank=get_rank(), world_size=get_world_size(), local_rank=local_rank, device=device)
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()
