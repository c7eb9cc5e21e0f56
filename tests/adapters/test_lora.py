"""LoRALinear: initialisation, forward, explicit merge/unmerge, precision and validation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pacx.adapters import LoRALinear


def _layer(in_f: int = 16, out_f: int = 24, seed: int = 0, **kwargs) -> LoRALinear:
    torch.manual_seed(seed)
    return LoRALinear(nn.Linear(in_f, out_f), **kwargs)


def _randomise_b(layer: LoRALinear, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen))


def test_shapes_init_and_scaling():
    layer = _layer(16, 24, r=4, alpha=8)
    assert layer.lora_A.shape == (4, 16) and layer.lora_B.shape == (24, 4)
    assert layer.scaling == pytest.approx(2.0)
    assert torch.count_nonzero(layer.lora_B) == 0
    # Kaiming-uniform with a = sqrt(5) on an (r, in) matrix is U(-1/sqrt(in), 1/sqrt(in)).
    bound = 1.0 / math.sqrt(16)
    assert layer.lora_A.abs().max() <= bound + 1e-7
    assert layer.lora_A.abs().max() > 0.5 * bound
    assert _layer(r=4, alpha=8, rslora=True).scaling == pytest.approx(8 / 2.0)
    assert set(layer.state_dict()) == {"base_layer.weight", "base_layer.bias", "lora_A", "lora_B", "lora_merged"}
    assert layer.weight is layer.base_layer.weight and layer.bias is layer.base_layer.bias


def test_starts_in_the_mode_of_the_base_layer():
    assert not LoRALinear(nn.Linear(4, 4).eval()).training
    assert LoRALinear(nn.Linear(4, 4)).training


def test_base_frozen_adapters_trainable():
    layer = _layer()
    assert not layer.base_layer.weight.requires_grad and not layer.base_layer.bias.requires_grad
    assert layer.lora_A.requires_grad and layer.lora_B.requires_grad


@pytest.mark.parametrize("train", [False, True])
def test_zero_init_equals_base_exactly(train):
    # A large dropout in train mode would change the output if it touched the base path.
    layer = _layer(dropout=0.9).train(train)
    x = torch.randn(5, 3, 16)
    assert torch.equal(layer(x), layer.base_layer(x))


def test_dropout_acts_on_the_adapter_only():
    layer = _layer(dropout=0.5)
    _randomise_b(layer)
    x = torch.randn(64, 16)
    layer.train()
    torch.manual_seed(0)
    a, b = layer(x), layer(x)
    assert not torch.allclose(a, b)  # stochastic adapter branch
    layer.eval()
    assert torch.equal(layer(x), layer(x))


def test_forward_matches_formula():
    layer = _layer(r=4, alpha=12, dropout=0.0)
    _randomise_b(layer)
    x = torch.randn(7, 16)
    expected = layer.base_layer(x) + layer.scaling * (x @ layer.lora_A.T) @ layer.lora_B.T
    torch.testing.assert_close(layer(x), expected)


def test_merge_unmerge_round_trip_float32():
    layer = _layer(dropout=0.1).eval()
    _randomise_b(layer)
    original = layer.base_layer.weight.detach().clone()
    x = torch.randn(9, 16)
    unmerged_out = layer(x)

    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer(x), unmerged_out, atol=1e-5, rtol=0)
    # When merged the output is the base layer alone.
    assert torch.equal(layer(x), layer.base_layer(x))
    torch.testing.assert_close(
        layer.base_layer.weight.detach(), original + layer.delta_weight(), atol=1e-6, rtol=0
    )

    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer.base_layer.weight.detach(), original, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), unmerged_out, atol=1e-6, rtol=0)


def test_double_merge_is_not_double_counted():
    layer = _layer().eval()
    _randomise_b(layer)
    layer.merge()
    once = layer.base_layer.weight.detach().clone()
    layer.merge()
    assert torch.equal(layer.base_layer.weight, once)
    layer.unmerge()
    before = layer.base_layer.weight.detach().clone()
    layer.unmerge()  # unmerging an unmerged layer is a no-op too
    assert torch.equal(layer.base_layer.weight, before)


@pytest.mark.parametrize("merge", [True, False])
def test_state_dict_carries_the_merge_state(tmp_path, merge):
    from pacx.io import load_safetensors, save_safetensors

    layer = _layer(dropout=0.0).eval()
    _randomise_b(layer)
    x = torch.randn(7, 16)
    if merge:
        layer.merge()
    expected = layer(x)
    assert layer.state_dict()["lora_merged"].item() is merge
    save_safetensors(layer.state_dict(), tmp_path / "layer.safetensors")

    fresh = _layer(seed=5, dropout=0.0).eval()  # other weights, unmerged
    fresh.load_state_dict(load_safetensors(tmp_path / "layer.safetensors"), strict=True)
    assert fresh.merged is merge
    assert torch.equal(fresh(x), expected)  # the update is applied exactly once
    fresh.unmerge()  # and a loaded merged layer unmerges back to its base weight
    torch.testing.assert_close(fresh(x), expected, atol=1e-5, rtol=0)


def test_state_dict_without_merge_flag_loads_as_unmerged():
    # State dicts written before the flag existed hold unmerged layers (merging happened at export).
    layer = _layer(dropout=0.0).eval()
    _randomise_b(layer)
    legacy = {k: v for k, v in layer.state_dict().items() if k != "lora_merged"}
    fresh = _layer(seed=5, dropout=0.0).eval().merge()
    fresh.load_state_dict(legacy, strict=True)
    x = torch.randn(3, 16)
    assert not fresh.merged and torch.equal(fresh(x), layer(x))
    # A partial load that leaves the base weight alone leaves the merge state alone too.
    fresh.merge()
    fresh.load_state_dict({"lora_A": layer.lora_A.detach()}, strict=False)
    assert fresh.merged


def test_eval_and_train_never_touch_weights():
    layer = _layer()
    _randomise_b(layer)
    original = layer.base_layer.weight.detach().clone()
    layer.eval()
    layer.train()
    layer.eval()
    assert torch.equal(layer.base_layer.weight, original)
    assert not layer.merged


def test_merged_layer_gives_no_gradient_to_adapters():
    layer = _layer()
    _randomise_b(layer)
    layer.merge()
    # The frozen base alone produces the output, so nothing in it requires grad.
    assert not layer(torch.randn(3, 16)).requires_grad


def test_gradients_reach_both_adapters():
    layer = _layer(dropout=0.0)
    _randomise_b(layer)
    layer(torch.randn(3, 16)).sum().backward()
    assert layer.lora_A.grad is not None and layer.lora_A.grad.abs().sum() > 0
    assert layer.lora_B.grad is not None and layer.lora_B.grad.abs().sum() > 0
    assert layer.base_layer.weight.grad is None


def test_reset_refused_while_merged():
    layer = _layer()
    layer.merge()
    with pytest.raises(RuntimeError, match="unmerge"):
        layer.reset_lora_parameters()


def test_bf16_autocast_cpu():
    layer = _layer(dropout=0.0)
    _randomise_b(layer)
    x = torch.randn(4, 16)
    reference = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, atol=0.1, rtol=0.05)
    out.float().sum().backward()
    assert layer.lora_A.grad.dtype == torch.float32 and layer.lora_B.grad.dtype == torch.float32


def test_bf16_base_layer_keeps_float32_adapters():
    torch.manual_seed(0)
    base = nn.Linear(16, 24).to(torch.bfloat16)
    layer = LoRALinear(base, dropout=0.0)
    assert layer.lora_A.dtype == torch.float32
    _randomise_b(layer)
    x = torch.randn(4, 16, dtype=torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    layer.merge()
    assert layer.base_layer.weight.dtype == torch.bfloat16
    torch.testing.assert_close(layer(x).float(), out.float(), atol=0.1, rtol=0.05)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"r": 0}, "r must be"),
        ({"r": -2}, "r must be"),
        ({"r": 2.5}, "r must be"),
        ({"r": True}, "r must be"),
        ({"alpha": 0}, "alpha must be"),
        ({"alpha": -1.0}, "alpha must be"),
        ({"dropout": 1.0}, "dropout must be"),
        ({"dropout": -0.1}, "dropout must be"),
    ],
)
def test_invalid_hyper_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoRALinear(nn.Linear(4, 4), **kwargs)


def test_base_layer_must_be_linear():
    with pytest.raises(ValueError, match="nn.Linear"):
        LoRALinear(nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="nn.Linear"):
        LoRALinear(LoRALinear(nn.Linear(4, 4)))
