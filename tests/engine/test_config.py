from __future__ import annotations

import json

import pytest

from pacx.engine import TrainerConfig


def test_json_round_trip():
    cfg = TrainerConfig(
        epochs=3, lr=2e-4, betas=(0.9, 0.95), grad_clip=1.0, amp="bf16", save_every=100, warmup_epochs=0.5
    )
    back = TrainerConfig.from_json(cfg.to_json())
    assert back == cfg and back.betas == (0.9, 0.95)
    assert json.loads(cfg.to_json())["betas"] == [0.9, 0.95]


def test_resolve_warmup():
    assert TrainerConfig(warmup_epochs=0.5).resolve_warmup(steps_per_epoch=10, total_steps=100) == 5
    assert TrainerConfig(warmup_steps=7).resolve_warmup(steps_per_epoch=10, total_steps=100) == 7
    assert TrainerConfig(warmup_steps=70).resolve_warmup(steps_per_epoch=10, total_steps=20) == 20


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epochs": 0}, "epochs must be an integer >= 1"),
        ({"accumulation_steps": 1.5}, "accumulation_steps"),
        ({"lr": 0}, "lr must be > 0"),
        ({"amp": "fp8"}, "amp must be one of"),
        ({"grad_clip": 0.0}, "grad_clip"),
        ({"warmup_steps": 3, "warmup_epochs": 1.0}, "not both"),
        ({"min_lr_ratio": 2.0}, "min_lr_ratio"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"save_every": 0}, "save_every"),
    ],
)
def test_invalid_values_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainerConfig(**kwargs)


def test_unknown_keys_are_refused():
    with pytest.raises(ValueError, match=r"unknown TrainerConfig keys \['lr_max'\]"):
        TrainerConfig.from_dict({"lr_max": 1.0})
