"""LoRA adapters in peft's format, checked against peft itself on a timm ViT."""

from __future__ import annotations

import copy
import json

import pytest
import timm
import torch
from torch import nn

from pacx.adapters import LoRALinear, apply_lora, export_peft_adapter, load_peft_adapter, lora_state_dict, merge_lora

peft = pytest.importorskip("peft", reason="test extra peft not installed (pip install 'pacx[test]')")

TINY = dict(num_classes=0, img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)


def tiny_vit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", **TINY).eval()


def _images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _randomise(model: nn.Module, suffixes: tuple[str, ...]) -> None:
    """Non-zero adapters and a moved final norm, so a wrong layout cannot match by chance."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(suffixes):
                param.add_(0.1 * torch.randn(param.shape, generator=gen))


@pytest.mark.parametrize("rslora", [False, True])
def test_pacx_adapter_loads_into_peft_with_identical_outputs(tmp_path, rslora):
    base = tiny_vit()
    model = copy.deepcopy(base)
    apply_lora(model, r=4, alpha=8, dropout=0.1, rslora=rslora)
    _randomise(model, ("lora_B", "norm.weight", "norm.bias"))
    out = export_peft_adapter(model, tmp_path / "adapter")
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    cfg = json.loads((out / "adapter_config.json").read_text())
    hyper = (cfg["peft_type"], cfg["r"], cfg["lora_alpha"], cfg["lora_dropout"], cfg["bias"])
    assert hyper == ("LORA", 4, 8, 0.1, "none")
    assert sorted(cfg["target_modules"]) == ["fc1", "fc2", "qkv"] and cfg["use_rslora"] is rslora
    assert cfg["modules_to_save"] == ["norm"]

    peft_model = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(out)).eval()
    x = _images()
    with torch.no_grad():
        assert (model.eval()(x) - base(x)).abs().max() > 1e-2  # the adapter matters
        torch.testing.assert_close(peft_model(x), model.eval()(x), atol=1e-6, rtol=0)
        # merged or not, the adapter is the same: export from a merged model gives the same file
        merge_lora(model)
        again = export_peft_adapter(model, tmp_path / "again")
    again_peft = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(again)).eval()
    with torch.no_grad():
        torch.testing.assert_close(again_peft(x), peft_model(x), atol=0, rtol=0)


def test_peft_adapter_loads_into_pacx_with_identical_outputs(tmp_path):
    base = tiny_vit()
    config = peft.LoraConfig(r=4, lora_alpha=16, lora_dropout=0.05, target_modules=["qkv", "fc2"],
                             modules_to_save=["norm"])
    peft_model = peft.get_peft_model(copy.deepcopy(base), config)
    _randomise(peft_model, ("lora_B.default.weight", "modules_to_save.default.weight", "modules_to_save.default.bias"))
    peft_model.save_pretrained(str(tmp_path / "peft"))

    model = copy.deepcopy(base)
    summary = load_peft_adapter(model, tmp_path / "peft")
    assert sorted(summary.wrapped) == ["blocks.0.attn.qkv", "blocks.0.mlp.fc2", "blocks.1.attn.qkv", "blocks.1.mlp.fc2"]
    assert summary.trainable_norms == ["norm"]
    layer = model.blocks[0].attn.qkv
    assert isinstance(layer, LoRALinear) and (layer.r, layer.alpha, layer.dropout_p) == (4, 16.0, 0.05)
    x = _images()
    with torch.no_grad():
        assert (model.eval()(x) - base(x)).abs().max() > 1e-2  # the adapter matters
        torch.testing.assert_close(model(x), peft_model.eval()(x), atol=1e-6, rtol=0)
    # The loaded adapter is pacx's own state: it round-trips through lora_state_dict.
    assert {"norm.weight", "blocks.1.mlp.fc2.lora_B"} <= set(lora_state_dict(model))


def test_unsupported_peft_configs_are_refused(tmp_path):
    base = tiny_vit()
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["qkv"], rank_pattern={"blocks.0.attn.qkv": 2})
    peft.get_peft_model(copy.deepcopy(base), config).save_pretrained(str(tmp_path / "ranks"))
    with pytest.raises(ValueError, match="rank_pattern"):
        load_peft_adapter(copy.deepcopy(base), tmp_path / "ranks")
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_peft_adapter(copy.deepcopy(base), tmp_path / "absent")
    with pytest.raises(ValueError, match="apply_lora first"):
        export_peft_adapter(base, tmp_path / "none")
