"""Data loading for training: seeded, rank-sharded, resumable mid-epoch.

The order of an epoch is a pure function of ``(seed, epoch)`` (a ``DistributedSampler``
with one replica in a single process), so a resumed run can skip exactly the samples the
interrupted run had consumed instead of replaying the epoch. Worker seeds are derived from
the loader's own generator, which the trainer reseeds per epoch, so they do not depend on
how often the global RNG was used before. :class:`BatchMover` copies each batch to the
training device, on CUDA from pinned memory on a side stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from pacx.distributed import get_rank, get_world_size

__all__ = ["BatchMover", "ResumableSampler", "epoch_generator_seed", "make_loader", "move_to_device"]


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` that can skip the first samples of its next epoch.

    Works without a process group (pass ``num_replicas=1, rank=0``). ``skip_next(n)`` drops
    the first ``n`` of *this rank's* indices from the next ``__iter__`` only; ``__len__`` stays
    the length of a full epoch.

    Args:
        dataset: the dataset to index.
        num_replicas: number of ranks sharing the epoch.
        rank: this rank.
        shuffle: permute indices with a generator seeded by ``seed + epoch``.
        seed: base seed of the permutation.
        drop_last: drop the tail so every rank gets the same number of samples (else pad by
            repeating indices).

    Example:
        >>> s = ResumableSampler(range(6), num_replicas=1, rank=0, shuffle=False)
        >>> s.skip_next(4)
        >>> list(s), list(s)
        ([4, 5], [0, 1, 2, 3, 4, 5])
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self._skip = 0

    def skip_next(self, num_samples: int) -> None:
        """Skip the first ``num_samples`` indices of the next iteration (one shot).

        Raises:
            ValueError: when ``num_samples`` is negative or larger than an epoch.
        """
        if not 0 <= num_samples <= self.num_samples:
            raise ValueError(f"num_samples must be in [0, {self.num_samples}], got {num_samples}")
        self._skip = int(num_samples)

    def __iter__(self) -> Iterator[int]:
        skip, self._skip = self._skip, 0
        indices = list(super().__iter__())
        return iter(indices[skip:])


def epoch_generator_seed(seed: int, epoch: int) -> int:
    """Seed of the loader generator at the start of ``epoch`` (worker base seeds derive from it)."""
    # A large odd multiplier keeps (seed, epoch) pairs from colliding for realistic ranges.
    return (seed * 1_000_003 + epoch * 7_919 + 1) % (2**63 - 1)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int = 0,
    seed: int = 0,
    pin_memory: bool | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader:
    """A ``DataLoader`` with a :class:`ResumableSampler`, a seeded generator and seeded workers.

    ``batch_size`` is the *global* batch: each of the ``world_size`` ranks receives
    ``batch_size // world_size`` samples per step, and the union of the ranks' batches at a
    step is the batch a single process would see (in a different order).

    Args:
        dataset: a map-style dataset.
        batch_size: global batch size, divisible by the world size.
        shuffle: shuffle every epoch (seeded by ``seed`` and the epoch).
        drop_last: drop the incomplete last batch; keep True in training so every rank
            takes the same number of equal steps.
        num_workers: loader worker processes (``persistent_workers`` is on when > 0).
        seed: seed of the order and of the workers.
        pin_memory: pin host memory; default: when CUDA is available.
        collate_fn: optional collate function.

    Returns:
        The loader; ``loader.sampler`` is the :class:`ResumableSampler`.

    Raises:
        ValueError: when ``batch_size`` is not positive or not divisible by the world size,
            or ``num_workers`` is negative.

    Example:
        >>> loader = make_loader(torch.arange(10.0), batch_size=4, shuffle=False)
        >>> [b.tolist() for b in loader]
        [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]
    """
    from .seed import seed_worker

    world_size, rank = get_world_size(), get_rank()
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if batch_size % world_size:
        raise ValueError(
            f"batch_size (global) must be divisible by the world size {world_size}, got {batch_size}"
        )
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    sampler = ResumableSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
    )
    generator = torch.Generator()
    generator.manual_seed(epoch_generator_seed(seed, 0))
    return DataLoader(
        dataset,
        batch_size=batch_size // world_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=num_workers > 0,
        worker_init_fn=seed_worker if num_workers > 0 else None,
        generator=generator,
        collate_fn=collate_fn,
    )


def move_to_device(batch: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """Move every tensor of a nested structure of dicts, lists and tuples to ``device``.

    Non-tensor leaves (ids, strings) are returned unchanged.

    Args:
        batch: a tensor, mapping, list or tuple (named tuples keep their type).
        device: destination device.
        non_blocking: asynchronous copies from pinned memory.

    Returns:
        The same structure with tensors on ``device``.
    """
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return {k: move_to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(move_to_device(v, device, non_blocking) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device, non_blocking) for v in batch)
    return batch


class BatchMover:
    """Move batches to the training device; on CUDA, copy on a side stream.

    The trainer fetches batch ``k + 1`` while the GPU still runs step ``k`` (nothing in the
    loop waits for the GPU between log steps). Copied on the compute stream, the batch would
    queue behind step ``k``'s kernels; on a side stream the copy (asynchronous from pinned
    memory, see :func:`make_loader`) overlaps them, and the compute stream waits for it only
    when it needs the batch. Batches are fetched in the same order as without the side stream,
    so the random streams (and exact resumption) are unaffected.

    Args:
        device: the training device.

    Example:
        >>> mover = BatchMover(torch.device("cpu"))
        >>> mover({"x": torch.zeros(2)})["x"].device.type
        'cpu'
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def __call__(self, batch: Any) -> Any:
        """``batch`` with every tensor on the device, ready for use on the current stream."""
        if self.stream is None:
            return move_to_device(batch, self.device)
        current = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.stream):
            moved = move_to_device(batch, self.device, non_blocking=True)
        current.wait_stream(self.stream)
        _record_stream(moved, current)
        return moved


def _record_stream(batch: Any, stream: torch.cuda.Stream) -> None:
    """Tell the caching allocator that ``stream`` uses the batch's memory (allocated on the side stream)."""
    if isinstance(batch, torch.Tensor):
        if batch.is_cuda:
            batch.record_stream(stream)
    elif isinstance(batch, Mapping):
        for value in batch.values():
            _record_stream(value, stream)
    elif isinstance(batch, (list, tuple)):
        for value in batch:
            _record_stream(value, stream)
