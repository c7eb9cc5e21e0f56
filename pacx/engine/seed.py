"""Seeding and random-number-generator state.

One ``--seed`` drives a whole run: :func:`seed_everything` seeds Python, NumPy and torch
(CPU and CUDA) with ``seed + rank`` so that ranks draw different dropout masks while a rerun
with the same seed repeats itself exactly on CPU. :func:`get_rng_state` and
:func:`set_rng_state` capture and restore every generator, which is what lets a resumed run
continue with the very numbers an uninterrupted run would have drawn.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

__all__ = ["get_rng_state", "seed_everything", "seed_worker", "set_rng_state"]

# NumPy's legacy seeding accepts values below 2**32 only.
_MAX_SEED = 2**32 - 1


def seed_everything(seed: int, rank: int = 0, deterministic: bool = False) -> int:
    """Seed Python, NumPy and torch (all devices) with ``seed + rank``.

    Args:
        seed: the run's seed, a non-negative integer.
        rank: the process rank; added to ``seed`` so that ranks differ (dropout, augmentation).
        deterministic: also ask torch and cuDNN for deterministic kernels (slower on GPU; CPU
            kernels used by pacx are deterministic already).

    Returns:
        The effective seed ``seed + rank``.

    Raises:
        ValueError: when ``seed`` or ``rank`` is negative or the sum exceeds 2**32 - 1.

    Example:
        >>> seed_everything(0)
        0
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(rank, int) or rank < 0:
        raise ValueError(f"rank must be a non-negative integer, got {rank!r}")
    effective = seed + rank
    if effective > _MAX_SEED:
        raise ValueError(f"seed + rank must be at most {_MAX_SEED}, got {effective}")
    random.seed(effective)
    np.random.seed(effective)
    torch.manual_seed(effective)  # also seeds every CUDA device
    # Hash randomisation only affects child processes started after this point (workers).
    os.environ["PYTHONHASHSEED"] = str(effective)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    return effective


def seed_worker(worker_id: int) -> None:
    """``DataLoader`` ``worker_init_fn``: seed NumPy and Python from the worker's torch seed.

    torch gives every worker ``base_seed + worker_id`` (``base_seed`` drawn from the loader's
    generator); NumPy and ``random`` would otherwise start from the same state in every
    worker, repeating augmentations across workers.

    Args:
        worker_id: index of the worker (unused; the torch seed already includes it).
    """
    del worker_id
    worker_seed = torch.initial_seed() % (_MAX_SEED + 1)
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def get_rng_state() -> dict[str, Any]:
    """Capture the state of every random generator of this process.

    Returns:
        ``{"python": ..., "numpy": ..., "torch": ByteTensor, "cuda": [ByteTensor, ...]}``: plain
        tuples, lists, ints, floats, NumPy arrays and tensors, so it serialises without pickle.
    """
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generator states captured by :func:`get_rng_state`.

    Args:
        state: as returned by :func:`get_rng_state` (possibly after a JSON/safetensors round
            trip: lists in place of tuples are accepted).

    Raises:
        ValueError: when a required entry is missing.
    """
    missing = {"python", "numpy", "torch"} - set(state)
    if missing:
        raise ValueError(f"RNG state is missing entries {sorted(missing)}; got keys {sorted(state)}")
    py = state["python"]
    random.setstate((int(py[0]), tuple(int(v) for v in py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state(
        (
            str(np_state[0]),
            np.asarray(np_state[1], dtype=np.uint32),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        )
    )
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8).cpu() for s in cuda_states])
        else:
            # A different GPU count: keep the current device's stream continuous at least.
            torch.cuda.set_rng_state(torch.as_tensor(cuda_states[0], dtype=torch.uint8).cpu())
