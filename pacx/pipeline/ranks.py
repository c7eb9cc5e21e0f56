"""How the stages share work between ``torchrun`` processes, and wait for one another.

Work done by one rank (rank 0 generating data, preprocessing a cache, evaluating) can outlast
the default process group's timeout (10 minutes for NCCL), after which a rank waiting in an
ordinary barrier fails. :func:`patient_barrier` waits on a gloo group of its own whose timeout
is :data:`PATIENT_TIMEOUT` (30 days: it does not expire in practice), created once by every
rank at start-up (:func:`patient_group`, called by the recipes' command line and by
:func:`pacx.pipeline.run_stage`). Should the working rank fail instead, ``torchrun`` stops the
waiting ones. :func:`as_single_process` keeps the working rank out of collectives,
:func:`shard` splits rows between ranks. Single-process runs do nothing special.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch.distributed as dist

from pacx.distributed import get_rank, get_world_size, is_distributed

__all__ = ["PATIENT_TIMEOUT", "as_single_process", "main_process_first", "patient_barrier", "patient_group", "shard"]

PATIENT_TIMEOUT = datetime.timedelta(days=30)
T = TypeVar("T")
_GROUP: dict[int, Any] = {}  # {id of the default group: its patient gloo group}


def patient_group() -> Any:
    """The gloo group :func:`patient_barrier` waits on (None in a single process).

    Creating it is a collective: every rank must call this at the same point the first time
    (the recipes do it right after start-up).
    """
    if not is_distributed():
        return None
    key = id(dist.group.WORLD)
    if key not in _GROUP:
        _GROUP[key] = dist.new_group(backend="gloo", timeout=PATIENT_TIMEOUT)
    return _GROUP[key]


def patient_barrier() -> None:
    """Wait for every rank, however long the slowest one works; a no-op in a single process."""
    group = patient_group()
    if group is not None:
        dist.barrier(group=group)


@contextlib.contextmanager
def as_single_process() -> Iterator[None]:
    """Run a block on this rank alone, as if no process group existed.

    Work one rank does by itself must not enter a collective: the other ranks are not there to
    answer. Some libraries gather across ranks on their own whenever ``torch.distributed`` is
    initialised (MONAI's cumulative metrics, behind pacx.eval's AUROC, F1, Dice and IoU), so
    inside this block ``torch.distributed.is_initialized()`` answers False. Nothing else changes.
    """
    if not is_distributed():
        yield
        return
    initialised = dist.is_initialized
    dist.is_initialized = lambda: False  # read at call time by torch's users, pacx.distributed included
    try:
        yield
    finally:
        dist.is_initialized = initialised


def main_process_first(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn`` on rank 0, then (after a :func:`patient_barrier`) on the other ranks.

    For work that fills a cache: rank 0 computes it, the others then find it.
    """
    result = fn(*args, **kwargs) if get_rank() == 0 else None
    patient_barrier()
    return fn(*args, **kwargs) if get_rank() != 0 else result


def shard(n: int) -> range:
    """This rank's contiguous share of ``n`` rows (ranks in order cover ``range(n)``).

    Example:
        >>> shard(10)  # single process: every row
        range(0, 10)
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rank, world = get_rank(), get_world_size()
    return range(n * rank // world, n * (rank + 1) // world)
