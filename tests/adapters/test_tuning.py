"""apply_lora / apply_tuning on timm ViTs, merge/unwrap, adapter-only state dicts and torch.compile."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from pacx.adapters import (
    LoRALinear,
    LoRASummary,
    apply_lora,
    apply_tuning,
    load_lora_state_dict,
    lora_state_dict,
    merge_lora,
    unmerge_lora,
    unwrap_lora,
)
from pacx.io import load_safetensors, save_safetensors

# A two-block ViT that keeps the timm ViT-B layout (blocks.i.attn.qkv, mlp.fc1/fc2, norm).
TINY = dict(num_classes=0, img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)


def tiny_vit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", **TINY)


def _images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _randomise_adapters(model: nn.Module, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRALinear):
                module.lora_B.copy_(0.05 * torch.randn(module.lora_B.shape, generator=gen))


def _adapted_vit() -> nn.Module:
    """The tiny ViT in eval mode with default LoRA adapters whose update is not zero."""
    model = tiny_vit().eval()
    apply_lora(model)
    _randomise_adapters(model)
    return model


@pytest.fixture(scope="module")
def vit_b_summary() -> tuple[LoRASummary, int, nn.Module]:
    # Only parameter counts are checked, so the meta device skips 86M random initialisations.
    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224", num_classes=0)
    base_params = sum(p.numel() for p in model.parameters())
    return apply_lora(model, r=8), base_params, model


def test_vit_b16_parameter_counts(vit_b_summary):
    summary, base_params, model = vit_b_summary
    assert summary.strategy == "lora"
    assert summary.adapter_params == 1_032_192  # (24,576 + 30,720 + 30,720) x 12 blocks
    assert summary.trainable_norm_params == 1_536  # final norm weight + bias
    assert summary.total_trainable == 1_032_192 + 1_536
    assert summary.total_params == base_params + 1_032_192
    assert summary.fraction == pytest.approx(summary.total_trainable / summary.total_params)
    assert len(summary.wrapped) == 36 and "blocks.11.attn.qkv" in summary.wrapped
    assert summary.trainable_norms == ["norm"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if ".lora_" in n} | {"norm.weight", "norm.bias"}
    assert sum(1 for n in trainable if ".lora_" in n) == 72


def test_norm_options_and_targets():
    model = tiny_vit()
    summary = apply_lora(model, targets="attn.qkv", trainable_norms="all")
    assert summary.wrapped == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    layer_norm_params = sum(p.numel() for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters())
    assert summary.trainable_norm_params == layer_norm_params == (2 * 2 + 1) * 2 * 64
    assert not isinstance(model.blocks[0].mlp.fc1, LoRALinear)

    model = tiny_vit()
    summary = apply_lora(model, trainable_norms="none")
    assert summary.trainable_norm_params == 0
    assert summary.total_trainable == summary.adapter_params


def test_final_norm_is_fc_norm_with_average_pooling():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", global_pool="avg", **TINY)
    summary = apply_lora(model)
    assert summary.trainable_norms == ["fc_norm"]
    assert model.fc_norm.weight.requires_grad


def test_gradients_reach_only_adapters_and_chosen_norms():
    model = tiny_vit().train()
    apply_lora(model, dropout=0.1)
    _randomise_adapters(model)
    model(_images()).pow(2).mean().backward()
    for name, param in model.named_parameters():
        if ".lora_" in name or name.startswith("norm."):
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name


def test_adapters_follow_the_model_mode():
    model = tiny_vit().eval()
    apply_lora(model, dropout=0.5)
    assert not any(m.training for m in model.modules())
    model.train()
    assert model.blocks[0].attn.qkv.dropout.training


def test_zero_init_model_equals_base_model():
    base = tiny_vit().eval()
    model = copy.deepcopy(base)
    apply_lora(model)
    x = _images()
    assert torch.equal(model.eval()(x), base(x))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"targets": ("nonexistent",)}, "matched no module"),
        ({"targets": ("qkv", "fc3")}, "'fc3' matched no module"),
        ({"targets": ("mlp",)}, "nn.Linear"),
        ({"targets": ()}, "targets must be"),
        ({"trainable_norms": "some"}, "trainable_norms"),
        ({"r": 0}, "r must be"),
        ({"alpha": -1}, "alpha must be"),
        ({"dropout": 1.5}, "dropout must be"),
    ],
)
def test_apply_lora_errors_leave_model_unchanged(kwargs, match):
    model = tiny_vit()
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=match):
        apply_lora(model, **kwargs)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before


def test_double_application_raises():
    model = tiny_vit()
    apply_lora(model)
    with pytest.raises(ValueError, match="already applied"):
        apply_lora(model)
    with pytest.raises(ValueError, match="without LoRA"):
        apply_tuning(model, "full")


def test_final_norm_missing_raises():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="final norm"):
        apply_lora(model, targets=("0",))
    assert apply_lora(model, targets=("0",), trainable_norms="none").adapter_params == 8 * (4 + 4)


def test_merge_unmerge_model():
    model = _adapted_vit()
    qkv = model.blocks[0].attn.qkv
    original = qkv.base_layer.weight.detach().clone()
    x = _images()
    expected = model(x)
    assert merge_lora(model) is model
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)
    merged = qkv.base_layer.weight.detach().clone()
    merge_lora(model)  # no double counting
    assert torch.equal(qkv.base_layer.weight, merged)
    unmerge_lora(model)
    torch.testing.assert_close(qkv.base_layer.weight.detach(), original, atol=1e-6, rtol=0)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="apply_lora first"):
        merge_lora(tiny_vit())


def test_merged_model_state_dict_reloads_into_a_fresh_adapted_model(tmp_path):
    model = _adapted_vit()
    x = _images()
    expected = model(x)
    merge_lora(model)
    save_safetensors(model.state_dict(), tmp_path / "merged.safetensors")
    fresh = tiny_vit(seed=3).eval()
    apply_lora(fresh)
    fresh.load_state_dict(load_safetensors(tmp_path / "merged.safetensors"), strict=True)
    torch.testing.assert_close(fresh(x), expected, atol=1e-5, rtol=0)  # not the update twice
    unwrap_lora(fresh)
    torch.testing.assert_close(fresh(x), expected, atol=1e-5, rtol=0)


def test_unwrap_loads_strictly_into_timm(tmp_path):
    model = _adapted_vit()
    x = _images()
    expected = model(x)
    assert unwrap_lora(model) is model
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert isinstance(model.blocks[0].attn.qkv, nn.Linear)

    save_safetensors(model.state_dict(), tmp_path / "encoder.safetensors")
    fresh = tiny_vit(seed=123).eval()
    fresh.load_state_dict(load_safetensors(tmp_path / "encoder.safetensors"), strict=True)
    torch.testing.assert_close(fresh(x), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)


def test_lora_state_dict_round_trip(tmp_path):
    base = tiny_vit()
    trained = copy.deepcopy(base)
    apply_lora(trained)
    _randomise_adapters(trained)
    with torch.no_grad():
        trained.norm.weight.add_(0.5)
    state = lora_state_dict(trained)
    layers = [f"blocks.{i}.{t}" for i in range(2) for t in ("attn.qkv", "mlp.fc1", "mlp.fc2")]
    assert set(state) == {f"{layer}.lora_{ab}" for layer in layers for ab in "AB"} | {"norm.weight", "norm.bias"}
    merge_lora(trained)  # the adapter state does not depend on the merge state
    assert all(torch.equal(state[k], v) for k, v in lora_state_dict(trained).items())
    unmerge_lora(trained)

    save_safetensors(state, tmp_path / "adapters.safetensors")
    restored = copy.deepcopy(base)
    apply_lora(restored)
    assert load_lora_state_dict(restored, load_safetensors(tmp_path / "adapters.safetensors")) is restored
    x = _images()
    # trained went through a merge/unmerge round trip, exact only to float32 rounding
    torch.testing.assert_close(restored.eval()(x), trained.eval()(x), atol=1e-5, rtol=0)


def test_load_lora_state_dict_errors():
    source = tiny_vit()
    apply_lora(source)
    state = lora_state_dict(source)

    target = tiny_vit()
    apply_lora(target)
    missing = {k: v for k, v in state.items() if k != "blocks.0.attn.qkv.lora_A"}
    with pytest.raises(ValueError, match=r"missing keys: blocks\.0\.attn\.qkv\.lora_A"):
        load_lora_state_dict(target, missing)
    with pytest.raises(ValueError, match=r"unexpected keys: blocks\.9"):
        load_lora_state_dict(target, {**state, "blocks.9.attn.qkv.lora_A": torch.zeros(8, 64)})
    with pytest.raises(ValueError, match="has shape"):
        load_lora_state_dict(target, {**state, "blocks.0.attn.qkv.lora_A": torch.zeros(4, 64)})
    with pytest.raises(ValueError, match="must be a tensor"):
        load_lora_state_dict(target, {**state, "norm.bias": [0.0] * 64})
    merge_lora(target)
    with pytest.raises(ValueError, match="unmerge_lora first"):
        load_lora_state_dict(target, state)
    with pytest.raises(ValueError, match="apply_lora first"):
        load_lora_state_dict(tiny_vit(), state)
    rank4 = tiny_vit()
    apply_lora(rank4, r=4)
    with pytest.raises(ValueError, match="has shape"):
        load_lora_state_dict(rank4, state)


def test_apply_then_compile():
    model = tiny_vit().train()
    apply_lora(model, dropout=0.0)
    _randomise_adapters(model)
    x = _images()
    eager = model(x)
    # fullgraph=True fails on any graph break (peft's multi-adapter conditionals break graphs).
    # The "eager" backend runs the same Dynamo capture as inductor without code generation:
    # inductor takes minutes and aot_eager ~25 s on two shared CPU cores.
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    out = compiled(x)
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)
    out.pow(2).mean().backward()
    assert model.blocks[0].attn.qkv.lora_A.grad is not None
    assert model.blocks[0].attn.qkv.base_layer.weight.grad is None
    state = lora_state_dict(compiled)
    assert not any("_orig_mod" in k for k in state)
    prefixed = {f"_orig_mod.{k}": v for k, v in state.items()}
    load_lora_state_dict(compiled, prefixed)


def test_apply_tuning_last_n_blocks():
    model = tiny_vit()
    summary = apply_tuning(model, "last_n_blocks", n_blocks=1)
    assert summary.adapter_params == 0 and summary.wrapped == []
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {f"blocks.1.{n}" for n, _ in model.blocks[1].named_parameters()} | {"norm.weight", "norm.bias"}
    assert trainable == expected
    assert summary.total_trainable == sum(p.numel() for n, p in model.named_parameters() if n in expected)
    # norm1/norm2 of block 1 plus the final norm
    assert summary.trainable_norm_params == 3 * 2 * 64


def test_apply_tuning_full_and_lora():
    model = tiny_vit()
    model.blocks.requires_grad_(False)
    summary = apply_tuning(model, "full")
    assert summary.total_trainable == summary.total_params
    assert all(p.requires_grad for p in model.parameters())

    # A frozen position embedding is a fixed sin-cos table (pacx MAE encoder) and stays fixed.
    model = tiny_vit()
    model.requires_grad_(False)
    summary = apply_tuning(model, "full")
    assert not model.pos_embed.requires_grad
    assert summary.total_trainable == summary.total_params - model.pos_embed.numel()

    model = tiny_vit()
    summary = apply_tuning(model, "lora", r=4, alpha=8, rslora=True)
    assert summary.strategy == "lora"
    assert model.blocks[0].attn.qkv.scaling == pytest.approx(4.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"strategy": "partial"}, "strategy must be"),
        ({"strategy": "last_n_blocks", "n_blocks": 0}, "n_blocks"),
        ({"strategy": "last_n_blocks", "n_blocks": 3}, "n_blocks"),
        ({"strategy": "last_n_blocks", "n_blocks": 1, "trainable_norms": "x"}, "trainable_norms"),
    ],
)
def test_apply_tuning_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        apply_tuning(tiny_vit(), **kwargs)
    with pytest.raises(ValueError, match="model.blocks"):
        apply_tuning(nn.Linear(2, 2), "last_n_blocks")
