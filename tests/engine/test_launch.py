from __future__ import annotations

import torch
import torch.distributed as dist

from pacx.engine import distributed_context


def test_single_process_context(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with distributed_context() as info:
        assert (info.rank, info.world_size, info.is_main) == (0, 1, True)
        assert not dist.is_initialized()
        assert info.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
