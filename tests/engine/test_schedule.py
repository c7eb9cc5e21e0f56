from __future__ import annotations

import math

import pytest
import torch

from pacx.engine import WarmupCosine, warmup_cosine


def test_values_at_key_steps():
    f = WarmupCosine(warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)
    values = [f(s) for s in range(4, 15)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay


def test_no_warmup_starts_at_peak():
    assert WarmupCosine(0, 10)(0) == 1.0


def test_scheduler_steps_per_optimizer_step():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = warmup_cosine(opt, warmup_steps=2, total_steps=6, min_lr_ratio=0.0)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == [1.0, 2.0, 2.0] and lrs[-1] < lrs[3] < lrs[2]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    "args, match",
    [((0, 0), "total_steps"), ((5, 4), "warmup_steps"), ((-1, 4), "warmup_steps"), ((1, 4, 1.5), "min_lr_ratio")],
)
def test_validation(args, match):
    with pytest.raises(ValueError, match=match):
        WarmupCosine(*args)
