"""Tests for pacx.nets.mae_checkpoints: MAE / timm / Lightning layouts, strict key reports."""

from __future__ import annotations

import os

import pytest
import timm
import torch
from safetensors.torch import save_file

from pacx.io import UnsafeCheckpointError
from pacx.nets import (
    MAE_DECODER_PREFIXES,
    KeyReport,
    MaskedAutoencoderViT,
    canonical_mae_state_dict,
    create_mae,
    load_mae_checkpoint,
    mae_state_dict_to_timm,
)


def _tiny(seed: int, **overrides) -> MaskedAutoencoderViT:
    torch.manual_seed(seed)
    return create_mae("mae_vit_tiny_patch8_64", **overrides).eval()


def _fb_full_state_dict(mae: MaskedAutoencoderViT) -> dict[str, torch.Tensor]:
    """Flat facebookresearch/mae layout, built by hand from the MAE's parameters."""
    sd = {}
    for key, value in mae.state_dict().items():
        sd[key[len("encoder.") :] if key.startswith("encoder.") else key] = value.clone()
    return sd


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def source() -> MaskedAutoencoderViT:
    return _tiny(1)


@pytest.fixture()
def target() -> MaskedAutoencoderViT:
    return _tiny(2)


def test_fb_layout_has_the_published_key_names(source):
    sd = _fb_full_state_dict(source)
    published = (
        "cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.bias", "blocks.3.mlp.fc2.weight",
        "norm.weight", "mask_token", "decoder_pos_embed", "decoder_embed.weight", "decoder_blocks.1.norm2.bias",
        "decoder_norm.bias", "decoder_pred.weight",
    )  # fmt: skip
    for key in published:
        assert key in sd, key
    assert sd["pos_embed"].shape == (1, 65, 128) and sd["decoder_pred.weight"].shape == (8 * 8 * 3, 128)


@pytest.mark.parametrize("fmt", ["torch", "safetensors"])
def test_full_fb_file_loads_one_to_one(tmp_path, source, target, fmt):
    sd = _fb_full_state_dict(source)
    if fmt == "torch":
        path = tmp_path / "mae_full.pth"
        torch.save({"model": sd}, path)
    else:
        path = tmp_path / "mae_full.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    report = load_mae_checkpoint(target, path)
    assert isinstance(report, KeyReport) and report.ok
    assert report.source_layout == "mae"
    assert len(report.loaded) == len(target.state_dict())
    assert _same_weights(source, target)
    imgs = torch.randn(2, 3, 64, 64)
    gen = 5
    a = source(imgs, generator=torch.Generator().manual_seed(gen))
    b = target(imgs, generator=torch.Generator().manual_seed(gen))
    assert torch.equal(a.pred, b.pred) and torch.equal(a.loss, b.loss)


def test_encoder_only_fb_file_needs_decoder_allowance(tmp_path, source, target):
    sd = {k: v for k, v in _fb_full_state_dict(source).items() if not (k.startswith("decoder_") or k == "mask_token")}
    path = tmp_path / "mae_pretrain.pth"
    torch.save({"model": sd}, path)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match=r"missing keys \[.*'mask_token'.*'decoder_embed.weight'") as err:
        load_mae_checkpoint(target, path)
    assert "source layout 'mae_encoder'" in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # untouched on error
    # allowing only decoder_* still leaves mask_token missing
    with pytest.raises(ValueError, match=r"missing keys \['mask_token'\]"):
        load_mae_checkpoint(target, path, allow_missing=("decoder_",))
    report = load_mae_checkpoint(target, path, allow_missing=MAE_DECODER_PREFIXES)
    assert not report.ok and report.disallowed_missing == () and report.unexpected == ()
    assert set(report.missing) == {k for k in target.state_dict() if not k.startswith("encoder.")}
    assert _same_weights(source.encoder, target.encoder)
    assert torch.equal(target.mask_token, before["mask_token"])  # decoder kept its own init


def test_lightning_layout_loads(tmp_path, source, target):
    sd = {"model." + k: v for k, v in _fb_full_state_dict(source).items()}
    ckpt = {"state_dict": sd, "epoch": 399, "global_step": 1000, "hyper_parameters": {"mask_ratio": 0.9}}
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    report = load_mae_checkpoint(target, path)
    assert report.ok and report.source_layout == "lightning"
    assert _same_weights(source, target)


def test_lightning_extra_module_keys_are_reported(source, target):
    sd = {"model." + k: v for k, v in _fb_full_state_dict(source).items()}
    sd["criterion.logit_scale"] = torch.zeros(())
    with pytest.raises(ValueError, match=r"unexpected keys \['criterion.logit_scale'\]"):
        load_mae_checkpoint(target, {"state_dict": sd})
    report = load_mae_checkpoint(target, {"state_dict": sd}, allow_unexpected=("criterion.",))
    assert report.unexpected == ("criterion.logit_scale",) and report.disallowed_unexpected == ()


def test_ddp_and_pacx_prefixes(source, target):
    pacx_sd = source.state_dict()
    assert load_mae_checkpoint(target, pacx_sd).source_layout == "pacx"
    assert _same_weights(source, target)
    ddp = {"module." + k: v for k, v in pacx_sd.items()}
    assert load_mae_checkpoint(_tiny(3), ddp).ok


def test_full_mae_into_timm_vit(source):
    vit = timm.create_model("vit_base_patch16_224", **source.encoder_timm_kwargs()).eval()
    full = {"model": _fb_full_state_dict(source)}
    with pytest.raises(ValueError, match=r"unexpected keys \[.*'mask_token'"):
        load_mae_checkpoint(vit, full)
    report = load_mae_checkpoint(vit, full, allow_unexpected=MAE_DECODER_PREFIXES)
    assert report.missing == () and set(report.unexpected) == set(report.allowed_unexpected)
    imgs = torch.randn(2, 3, 64, 64)
    assert torch.allclose(vit(imgs), source.embed(imgs), atol=1e-6)


def test_mae_state_dict_to_timm_strict_loads_and_back(tmp_path, source, target):
    timm_sd = mae_state_dict_to_timm({"model": _fb_full_state_dict(source)})
    assert not any(k.startswith("decoder_") or k == "mask_token" for k in timm_sd)
    assert timm_sd.keys() == source.encoder.state_dict().keys()
    vit = timm.create_model("vit_base_patch16_224", **source.encoder_timm_kwargs()).eval()
    vit.load_state_dict(timm_sd, strict=True)
    # the same helper accepts pacx and Lightning layouts
    assert mae_state_dict_to_timm(source.state_dict()).keys() == timm_sd.keys()
    lightning = {"state_dict": {"model." + k: v for k, v in timm_sd.items()}}
    assert mae_state_dict_to_timm(lightning).keys() == timm_sd.keys()
    # back: a timm state dict (saved as safetensors) into the MAE encoder and into the whole MAE
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    assert load_mae_checkpoint(target.encoder, path).ok
    other = _tiny(4)
    report = load_mae_checkpoint(other, path, allow_missing=MAE_DECODER_PREFIXES)
    assert report.disallowed_missing == ()
    imgs = torch.randn(2, 3, 64, 64)
    assert torch.allclose(target.forward_features(imgs), vit.forward_features(imgs), atol=1e-6)
    assert torch.allclose(other.embed(imgs), vit(imgs), atol=1e-6)


def test_classifier_head_must_be_allowed(source):
    vit = timm.create_model("vit_base_patch16_224", **{**source.encoder_timm_kwargs(), "num_classes": 5})
    with pytest.raises(ValueError, match=r"missing keys \['head.weight', 'head.bias'\]"):
        load_mae_checkpoint(vit, mae_state_dict_to_timm(source.state_dict()))
    report = load_mae_checkpoint(vit, mae_state_dict_to_timm(source.state_dict()), allow_missing=("head.",))
    assert report.allowed_missing == ("head.weight", "head.bias")


def test_wrong_key_and_wrong_shape_raise(source, target):
    sd = _fb_full_state_dict(source)
    sd["blocks.0.attn.qkv.weightt"] = sd.pop("blocks.0.attn.qkv.weight")
    with pytest.raises(ValueError) as err:
        load_mae_checkpoint(target, sd)
    msg = str(err.value)
    assert "missing keys ['encoder.blocks.0.attn.qkv.weight']" in msg
    assert "unexpected keys ['encoder.blocks.0.attn.qkv.weightt']" in msg

    sd = _fb_full_state_dict(source)
    sd["pos_embed"] = torch.zeros(1, 50, 128)
    with pytest.raises(ValueError, match=r"shape mismatches.*encoder.pos_embed, \(1, 65, 128\), \(1, 50, 128\)"):
        load_mae_checkpoint(target, sd, allow_missing=("encoder.",), allow_unexpected=("encoder.",))


def test_single_channel_mismatch_is_reported(source):
    gray = _tiny(5, in_chans=1)
    with pytest.raises(ValueError, match=r"encoder.patch_embed.proj.weight, \(128, 1, 8, 8\), \(128, 3, 8, 8\)"):
        load_mae_checkpoint(gray, source.state_dict())


def test_canonical_layouts():
    sd = {"cls_token": torch.zeros(1, 1, 4), "mask_token": torch.zeros(1, 1, 4)}
    assert canonical_mae_state_dict({"model": sd}) == (sd, "mae")
    assert canonical_mae_state_dict({"cls_token": sd["cls_token"]})[1] == "mae_encoder"
    lightning = {"state_dict": {"model.cls_token": sd["cls_token"]}}
    assert list(canonical_mae_state_dict(lightning)[0]) == ["cls_token"]


def test_report_summary_and_ok():
    report = KeyReport(loaded=("a",), missing=("b",), allowed_missing=("b",), source_layout="mae")
    assert not report.ok and report.disallowed_missing == ()
    assert "missing (1, allowed 1): ['b']" in report.summary()
    assert KeyReport(loaded=("a",)).ok


def test_bad_inputs(tmp_path, target):
    with pytest.raises(ValueError, match="mae_or_vit must be a MaskedAutoencoderViT or a timm VisionTransformer"):
        load_mae_checkpoint(torch.nn.Linear(2, 2), {"a": torch.zeros(1)})
    with pytest.raises(ValueError, match="path_or_state_dict must be a file path or a mapping, got int"):
        load_mae_checkpoint(target, 3)
    with pytest.raises(ValueError, match="holds no tensors"):
        load_mae_checkpoint(target, {"epoch": 3})
    with pytest.raises(ValueError, match="allow_missing must hold non-empty str prefixes"):
        load_mae_checkpoint(target, target.state_dict(), allow_missing=("",))
    with pytest.raises(ValueError, match="allow_unexpected must be a sequence"):
        load_mae_checkpoint(target, target.state_dict(), allow_unexpected=3)
    with pytest.raises(FileNotFoundError):
        load_mae_checkpoint(target, tmp_path / "absent.pth")


class _NotATensor:
    pass


def test_code_pickles_are_refused(tmp_path, source):
    path = tmp_path / "unsafe.pth"
    torch.save({"model": _fb_full_state_dict(source), "args": _NotATensor()}, path)
    with pytest.raises(UnsafeCheckpointError):
        load_mae_checkpoint(_tiny(6), path)
    assert os.path.exists(path)
