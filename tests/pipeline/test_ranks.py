"""Rank coordination of the stages: shares of rows, rank 0 first or alone, and a wait that outlasts the timeout."""

from __future__ import annotations

import datetime
import time

import numpy as np
import pytest

from pacx.distributed import is_distributed
from pacx.eval import macro_auroc
from pacx.pipeline.ranks import as_single_process, main_process_first, patient_barrier, patient_group, shard
from tests.utils import run_distributed


def test_single_process_is_plain():
    assert shard(7) == range(7) and patient_group() is None
    assert main_process_first(lambda x: x + 1, 1) == 2
    with as_single_process():
        assert not is_distributed()
    patient_barrier()  # a no-op
    with pytest.raises(ValueError, match="n must be >= 0"):
        shard(-1)


def _wait_longer_than_the_timeout(rank: int, world_size: int) -> dict:
    import torch.distributed as dist

    patient_group()  # every rank, at start-up
    short = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=1))
    outcome = {"rows": list(shard(5))}
    if rank == 0:
        time.sleep(2)  # rank 0 works alone for longer than the short group's timeout
    else:
        try:
            dist.barrier(group=short)
            outcome["ordinary_barrier"] = "passed"
        except RuntimeError:
            outcome["ordinary_barrier"] = "timed out"
    start = time.monotonic()
    if rank == 0:
        time.sleep(2)  # and again, now with the other rank in the patient barrier
    patient_barrier()
    outcome["waited"] = time.monotonic() - start
    order = []
    main_process_first(lambda: order.append((rank, time.monotonic())))
    outcome["first_call"] = order[0][1]
    if rank == 0:  # rank 0 alone: MONAI's metric would otherwise try to gather from rank 1
        with as_single_process():
            outcome["auroc"] = macro_auroc(np.array([0.1, 0.9, 0.2, 0.8]), np.array([0, 1, 0, 1]))
            outcome["inside"] = is_distributed()
        outcome["after"] = is_distributed()
    patient_barrier()
    return outcome


@pytest.mark.distributed
def test_patient_barrier_outlasts_the_group_timeout():
    rank0, rank1 = run_distributed(_wait_longer_than_the_timeout, world_size=2, timeout=600)
    assert rank1["ordinary_barrier"] == "timed out"  # what a stage waiting for rank 0 ran into
    assert rank1["waited"] > 1.5  # the patient barrier waited the whole 2 s
    assert rank0["rows"] + rank1["rows"] == [0, 1, 2, 3, 4]
    assert rank0["first_call"] < rank1["first_call"]
    assert rank0["auroc"] == 1.0 and rank0["inside"] is False and rank0["after"] is True
