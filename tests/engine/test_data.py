from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

import pacx.engine.data as data_module
from pacx.engine import ResumableSampler, make_loader, move_to_device


def test_make_loader_is_seeded_and_drops_last():
    ds = torch.arange(10.0)
    first = [b.tolist() for b in make_loader(ds, 4, seed=3)]
    again = [b.tolist() for b in make_loader(ds, 4, seed=3)]
    other = [b.tolist() for b in make_loader(ds, 4, seed=4)]
    assert first == again != other
    assert len(first) == 2 and all(len(b) == 4 for b in first)


def test_sampler_epochs_and_skip():
    sampler = ResumableSampler(range(8), num_replicas=1, rank=0, shuffle=True, seed=0)
    sampler.set_epoch(1)
    full = list(sampler)
    sampler.set_epoch(1)
    sampler.skip_next(3)
    assert list(sampler) == full[3:]
    assert list(sampler) == full  # the skip applies once
    sampler.set_epoch(2)
    assert list(sampler) != full
    with pytest.raises(ValueError, match="num_samples must be in"):
        sampler.skip_next(9)


def test_ranks_split_the_global_batch():
    # the union of two ranks' step-k batches is the single process's step-k batch
    single = list(ResumableSampler(range(16), num_replicas=1, rank=0, seed=1, drop_last=True))
    ranks = [list(ResumableSampler(range(16), num_replicas=2, rank=r, seed=1, drop_last=True)) for r in (0, 1)]
    for step in range(2):
        global_batch = set(single[8 * step : 8 * step + 8])
        assert set(ranks[0][4 * step : 4 * step + 4]) | set(ranks[1][4 * step : 4 * step + 4]) == global_batch


def test_global_batch_must_divide_world_size(monkeypatch):
    monkeypatch.setattr(data_module, "get_world_size", lambda: 3)
    with pytest.raises(ValueError, match="divisible by the world size 3, got 8"):
        make_loader(TensorDataset(torch.zeros(12)), 8)
    monkeypatch.setattr(data_module, "get_world_size", lambda: 2)
    assert make_loader(TensorDataset(torch.zeros(12)), 8).batch_size == 4


def test_move_to_device_nested():
    batch = {"x": torch.zeros(2), "meta": {"ids": ["a", "b"], "t": (torch.ones(1), 3)}}
    moved = move_to_device(batch, "cpu")
    assert moved["meta"]["ids"] == ["a", "b"] and moved["meta"]["t"][1] == 3
    assert isinstance(moved["meta"]["t"], tuple) and torch.equal(moved["x"], batch["x"])
