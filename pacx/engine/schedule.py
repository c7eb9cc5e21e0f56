"""Learning-rate schedule: linear warmup, then cosine decay to a floor, per optimiser step."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["WarmupCosine", "warmup_cosine"]


class WarmupCosine:
    """Multiplier of the peak learning rate at optimiser step ``s`` (0-based).

    Warmup: ``(s + 1) / warmup_steps`` for ``s < warmup_steps``, so the very first step
    already moves (a multiplier of 0 would waste it). Then a half cosine from 1 at
    ``s = warmup_steps`` to ``min_lr_ratio`` at ``s = total_steps``; steps past the end stay at
    the floor. A plain object with numeric attributes, so ``LambdaLR.state_dict`` stores it as
    JSON-friendly numbers.

    Args:
        warmup_steps: number of warmup steps (>= 0).
        total_steps: number of optimiser steps of the whole run (> 0, >= warmup_steps).
        min_lr_ratio: final multiplier in [0, 1].

    Example:
        >>> f = WarmupCosine(2, 10, 0.1)
        >>> [round(f(s), 3) for s in (0, 1, 2, 10)]
        [0.5, 1.0, 1.0, 0.1]
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> None:
        if not isinstance(total_steps, int) or total_steps <= 0:
            raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
        if not isinstance(warmup_steps, int) or not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"warmup_steps must be an integer in [0, total_steps={total_steps}], got {warmup_steps!r}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_lr_ratio = float(min_lr_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """A ``LambdaLR`` following :class:`WarmupCosine`; call ``.step()`` after every optimiser step.

    Args:
        optimizer: the optimiser whose groups' ``lr`` is the peak learning rate.
        warmup_steps: linear warmup length in optimiser steps.
        total_steps: optimiser steps of the whole run.
        min_lr_ratio: floor of the cosine as a fraction of the peak.

    Returns:
        The scheduler.

    Raises:
        ValueError: on inconsistent step counts or a ratio outside [0, 1].

    Example:
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> sched = warmup_cosine(opt, warmup_steps=2, total_steps=4)
        >>> opt.param_groups[0]["lr"]
        0.5
    """
    return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, min_lr_ratio))
