"""Shared test helpers: multi-process runs on gloo, sample-data location."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch.multiprocessing as mp

__all__ = ["SHARED_DATA", "free_port", "require_shared_data", "run_distributed"]

_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PACX_SAMPLE_DATA", _ROOT.parent / "shared" / "data"))


def require_shared_data(sub: str) -> Path:
    """Return ``SHARED_DATA / sub`` or skip the test with a reason when it is absent."""
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"sample data {path} not present (set PACX_SAMPLE_DATA to its folder)")
    return path


def free_port() -> int:
    """A TCP port that is free on localhost right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, fn: Callable, args: tuple, queue: Any) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        queue.put((rank, fn(rank, world_size, *args), None))
    except BaseException as err:  # report the failure to the parent instead of hanging
        import traceback

        queue.put((rank, None, traceback.format_exc()))
        raise err
    finally:
        dist.destroy_process_group()


def run_distributed(fn: Callable, world_size: int = 2, args: tuple = (), timeout: float = 120.0) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` gloo processes and return the results by rank.

    ``fn`` must be importable (a module-level function) and return picklable values (numpy
    arrays or plain Python objects; move tensors to numpy first).
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world_size, port, fn, args, queue)) for r in range(world_size)]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    errors: list[str] = []
    try:
        for _ in range(world_size):
            rank, value, err = queue.get(timeout=timeout)
            if err is not None:
                errors.append(f"rank {rank}:\n{err}")
            results[rank] = value
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    if errors:
        raise AssertionError("distributed worker failed:\n" + "\n".join(errors))
    return [results[r] for r in range(world_size)]
