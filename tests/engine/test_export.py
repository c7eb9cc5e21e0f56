from __future__ import annotations

import functools
import json
import os
import stat

import pytest
import torch
from torch import nn

timm = pytest.importorskip("timm")
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

from pacx.engine import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    backbone_config,
    backbone_input_config,
    export_backbone,
    export_onnx,
    load_backbone,
    onnx_max_abs_diff,
)
from pacx.engine.export import BACKBONE_FORMAT  # noqa: E402
from pacx.io import save_json, save_safetensors  # noqa: E402


def _vit(**kwargs) -> VisionTransformer:
    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=0)
    args.update(kwargs)
    vit = VisionTransformer(**args).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a wrong layout cannot pass by chance
        for name, p in vit.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return vit


def _features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def test_exported_backbone_loads_in_plain_timm_with_identical_features(tmp_path):
    vit = _vit(embed_dim=64, depth=4, num_heads=4)
    out = export_backbone(vit, tmp_path / "backbone", mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3),
                          extra={"stage": "pacx"})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    args = cfg["model_args"]
    assert {k: args[k] for k in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads")} == {
        "img_size": 32, "patch_size": 8, "in_chans": 3, "embed_dim": 64, "depth": 4, "num_heads": 4
    }
    assert cfg["num_classes"] == 0 and cfg["num_features"] == 64 and cfg["global_pool"] == "token"
    assert args["mlp_ratio"] == 4.0 and args["qkv_bias"] is True
    assert cfg["pretrained_cfg"]["input_size"] == [3, 32, 32] and cfg["pretrained_cfg"]["crop_pct"] == 1.0
    assert cfg["pacx"]["format"] == BACKBONE_FORMAT and cfg["pacx"]["extra"] == {"stage": "pacx"}

    # Plain timm, no pacx involved: the README's loading lines.
    plain = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert (plain.embed_dim, len(plain.blocks), plain.num_classes) == (64, 4, 0)
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(_features(plain, x), _features(vit, x))
    data = timm.data.resolve_data_config({}, model=plain)
    assert data["input_size"] == (3, 32, 32) and data["interpolation"] == "bilinear"
    assert tuple(data["mean"]) == (0.5, 0.4, 0.3) and tuple(data["std"]) == (0.2, 0.25, 0.3)
    assert data["crop_pct"] == 1.0 and data["crop_mode"] == "squash"  # resize to S x S, as in training

    loaded = load_backbone(out)
    assert torch.equal(_features(loaded, x), _features(vit, x))
    assert tuple(loaded.pretrained_cfg["mean"]) == (0.5, 0.4, 0.3)
    assert backbone_input_config(out) == {
        "image_size": [32, 32], "in_chans": 3, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]
    }


def test_previous_layout_still_loads(tmp_path):
    # pacx-backbone/1: pacx's keys at the top level, "model_kwargs" instead of timm's "model_args".
    vit = _vit()
    folder = tmp_path / "old"
    folder.mkdir()
    save_safetensors(vit.state_dict(), folder / "model.safetensors")
    kwargs = {"img_size": 32, "patch_size": 8, "in_chans": 3, "embed_dim": 48, "depth": 2, "num_heads": 3,
              "mlp_ratio": 4.0, "qkv_bias": True, "global_pool": "token"}
    save_json({"format": "pacx-backbone/1", "architecture": "vit_base_patch16_224", "model_kwargs": kwargs,
               "norm_eps": 1e-6, "num_classes": 0, "num_features": 48, "image_size": [32, 32], "in_chans": 3,
               "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "pool": "token", "extra": {}},
              folder / "config.json")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(_features(load_backbone(folder), x), _features(vit, x))
    assert backbone_input_config(folder)["mean"] == list(IMAGENET_MEAN)


def test_load_errors_name_the_file(tmp_path):
    out = export_backbone(_vit(), tmp_path / "bb")
    (out / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(ValueError, match=str(out / "model.safetensors")):
        load_backbone(out)
    (out / "config.json").write_text('{"architecture": "vit_base_patch16_224"}')
    with pytest.raises(ValueError, match="config.json"):
        load_backbone(out)


def test_exported_folder_and_files_honour_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        out = export_backbone(_vit(), tmp_path / "bb")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o644}


def test_non_default_layernorm_eps_and_classifier_head(tmp_path):
    vit = _vit(norm_layer=functools.partial(nn.LayerNorm, eps=1e-5), num_classes=5)
    assert backbone_config(vit)["norm_eps"] == 1e-5
    with pytest.warns(UserWarning, match="eps is 1e-05"):  # timm's config.json cannot carry it
        out = export_backbone(vit, tmp_path / "bb", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    loaded = load_backbone(out)
    x = torch.randn(2, 3, 32, 32)
    vit.reset_classifier(0)
    assert torch.equal(_features(loaded, x), _features(vit, x))
    assert tuple(loaded.pretrained_cfg["std"]) == (0.25, 0.25, 0.25)


def test_timm_registry_model_keeps_its_name(tmp_path):
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, num_classes=0)
    out = export_backbone(vit, tmp_path / "bb")
    assert json.loads((out / "config.json").read_text())["architecture"] == "vit_tiny_patch16_224"


def test_export_refuses_what_timm_cannot_rebuild(tmp_path):
    vit = _vit()
    with pytest.raises(ValueError, match="pool must match"):
        export_backbone(vit, tmp_path / "a", pool="avg")
    with pytest.raises(ValueError, match="mean and std"):
        export_backbone(vit, tmp_path / "b", mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError, match="timm VisionTransformer"):
        export_backbone(nn.Linear(2, 2), tmp_path / "c")
    # An adapter left wrapped adds keys timm does not know: refused, with the fix in the message.
    vit.blocks[0].attn.qkv.register_parameter("lora_A", nn.Parameter(torch.zeros(2, 48)))
    with pytest.raises(ValueError, match="merge and unwrap LoRA"):
        export_backbone(vit, tmp_path / "d")
    assert not (tmp_path / "d").exists() and not list(tmp_path.glob("d.tmp-*"))


def test_imagenet_constants_match_data_transforms():
    transforms = pytest.importorskip("pacx.data.transforms")
    assert IMAGENET_MEAN == tuple(transforms.IMAGENET_MEAN) and IMAGENET_STD == tuple(transforms.IMAGENET_STD)


def test_onnx_export_matches_pytorch_with_dynamic_batch(tmp_path):
    pytest.importorskip("onnx", reason="optional extra pacx[onnx] (onnx) not installed")
    pytest.importorskip("onnxruntime", reason="optional extra pacx[onnx] (onnxruntime) not installed")
    vit = _vit()
    path = export_onnx(vit, tmp_path / "vit.onnx", image_size=32)
    for batch in (1, 5):  # exported with batch 2
        assert onnx_max_abs_diff(vit, path, torch.randn(batch, 3, 32, 32)) < 1e-4
