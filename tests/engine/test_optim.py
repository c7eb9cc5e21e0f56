from __future__ import annotations

import pytest
import torch
from torch import nn

from pacx.engine import build_optimizer, param_groups


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 4))
        self.logit_scale = nn.Parameter(torch.zeros(()))
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.bn = nn.BatchNorm1d(4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)
        self.tied = self.proj  # shared module: its parameters must appear once


def _names(model, group):
    ids = {id(p) for p in group["params"]}
    return sorted({n for n, p in model.named_parameters(remove_duplicate=False) if id(p) in ids})


def test_no_decay_for_norms_biases_tokens_and_temperature():
    model = _Net()
    groups = {g["name"]: g for g in param_groups(model, 0.05)}
    assert _names(model, groups["decay"]) == ["proj.weight", "tied.weight"]
    assert groups["decay"]["weight_decay"] == 0.05 and groups["no_decay"]["weight_decay"] == 0.0
    assert _names(model, groups["no_decay"]) == [
        "bn.bias", "bn.weight", "cls_token", "logit_scale", "norm.bias", "norm.weight", "pos_embed", "proj.bias",
        "tied.bias",
    ]
    assert sum(len(g["params"]) for g in groups.values()) == 9  # frozen left out, shared counted once


def test_model_param_groups_take_precedence():
    class Custom(nn.Linear):
        def param_groups(self, weight_decay):
            return [{"params": list(self.parameters()), "weight_decay": weight_decay * 2}]

    groups = param_groups(Custom(2, 2), 0.1)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.2


def test_validation():
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        param_groups(nn.Linear(2, 2), -1.0)
    with pytest.raises(ValueError, match="no parameter with requires_grad=True"):
        param_groups(nn.Linear(2, 2).requires_grad_(False), 0.1)
    with pytest.raises(ValueError, match="lr must be > 0"):
        build_optimizer(nn.Linear(2, 2), lr=0.0, weight_decay=0.0)


def test_build_optimizer_is_adamw_with_groups():
    opt = build_optimizer(_Net(), lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95))
    assert isinstance(opt, torch.optim.AdamW) and len(opt.param_groups) == 2
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)


def test_a_model_can_delegate_to_the_policy():
    # PaCXDistiller.param_groups delegates like this: no recursion, the engine's grouping
    class Delegating(_Net):
        def param_groups(self, weight_decay):
            return param_groups(self, weight_decay, use_model_groups=False)

    model = Delegating()
    delegated = {g["name"]: _names(model, g) for g in param_groups(model, 0.05)}
    plain = _Net()
    assert delegated == {g["name"]: _names(plain, g) for g in param_groups(plain, 0.05)}
    with pytest.raises(ValueError, match="weight_decay must be >= 0 and finite"):
        param_groups(model, float("nan"))
