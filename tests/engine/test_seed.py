from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from pacx.engine import get_rng_state, pack_state, seed_everything, set_rng_state, unpack_state


def _draw():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_same_seed_same_draws_and_rank_offset():
    assert seed_everything(5) == 5
    a = _draw()
    seed_everything(5)
    assert _draw() == a
    assert seed_everything(5, rank=1) == 6 and _draw() != a


def test_rng_state_round_trips_through_json_and_tensors():
    seed_everything(1)
    structure, tensors = pack_state(get_rng_state())
    expected = _draw()
    _draw()
    set_rng_state(unpack_state(json.loads(json.dumps(structure)), tensors))
    assert _draw() == expected


def test_validation():
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        seed_everything(-1)
    with pytest.raises(ValueError, match="missing entries"):
        set_rng_state({"python": None})
