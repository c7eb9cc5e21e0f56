from __future__ import annotations

import functools
import json

import pytest
import torch
from torch import nn

timm = pytest.importorskip("timm")
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

from pacx.engine import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    backbone_config,
    export_backbone,
    export_onnx,
    load_backbone,
    onnx_max_abs_diff,
)


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
    vit = _vit()
    out = export_backbone(vit, tmp_path / "backbone", extra={"stage": "pacx"})
    cfg = json.loads((out / "config.json").read_text())
    kwargs = cfg["model_kwargs"]
    assert {k: kwargs[k] for k in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads")} == {
        "img_size": 32, "patch_size": 8, "in_chans": 3, "embed_dim": 48, "depth": 2, "num_heads": 3
    }
    assert cfg["num_classes"] == 0 and kwargs["global_pool"] == "token" and kwargs["qkv_bias"] is True
    assert kwargs["mlp_ratio"] == 4.0 and cfg["in_chans"] == 3 and cfg["num_features"] == 48
    assert cfg["mean"] == list(IMAGENET_MEAN) and cfg["pool"] == "token" and cfg["image_size"] == [32, 32]
    assert cfg["extra"] == {"stage": "pacx"}

    # Plain timm, no pacx involved: the documented loading line.
    plain = timm.create_model(
        cfg["architecture"], num_classes=0, checkpoint_path=str(out / "model.safetensors"), **kwargs
    )
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(_features(plain, x), _features(vit, x))

    loaded = load_backbone(out)
    assert torch.equal(_features(loaded, x), _features(vit, x))
    assert tuple(loaded.pretrained_cfg["mean"]) == IMAGENET_MEAN


def test_non_default_layernorm_eps_and_classifier_head(tmp_path):
    vit = _vit(norm_layer=functools.partial(nn.LayerNorm, eps=1e-5), num_classes=5)
    assert backbone_config(vit)["norm_eps"] == 1e-5
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
