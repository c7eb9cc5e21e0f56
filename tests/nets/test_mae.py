"""Tests for pacx.nets.mae: shapes, masking, loss, patches, presets, timm interop, input checks."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import VisionTransformer

from pacx.nets import (
    MAE_PRESETS,
    MAEOutput,
    MaskedAutoencoderViT,
    create_mae,
    list_mae_presets,
    sincos_2d_pos_embed,
)


def _micro(**overrides) -> MaskedAutoencoderViT:
    """4x4 grid of 8-px patches: fast enough for every behavioural test."""
    cfg = dict(
        img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2,
        decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2,
    )  # fmt: skip
    cfg.update(overrides)
    return MaskedAutoencoderViT(**cfg)


@pytest.fixture(scope="module")
def micro() -> MaskedAutoencoderViT:
    torch.manual_seed(0)
    return _micro().eval()


# ---------------------------------------------------------------- construction and shapes
def test_encoder_is_plain_timm_vit_with_frozen_sincos_positions(micro):
    enc = micro.encoder
    assert type(enc) is VisionTransformer
    assert enc.num_classes == 0 and enc.global_pool == "token" and enc.cls_token is not None
    assert enc.blocks[0].attn.qkv.bias is not None
    assert enc.norm.eps == pytest.approx(1e-6)
    assert enc.blocks[0].attn.fused_attn  # timm's default scaled-dot-product path
    assert not enc.pos_embed.requires_grad and not micro.decoder_pos_embed.requires_grad
    assert "encoder.pos_embed" in micro.state_dict() and "decoder_pos_embed" in micro.state_dict()
    assert torch.equal(enc.pos_embed[0, 0], torch.zeros(32))
    assert torch.allclose(enc.pos_embed[0], sincos_2d_pos_embed(32, 4))
    assert torch.allclose(micro.decoder_pos_embed[0], sincos_2d_pos_embed(32, 4))
    trainable = {n for n, p in micro.named_parameters() if p.requires_grad}
    assert "encoder.pos_embed" not in trainable and "decoder_pos_embed" not in trainable
    assert {"encoder.cls_token", "mask_token", "decoder_pred.weight"} <= trainable


def test_decoder_attribute_names_follow_mae_layout(micro):
    top = {k.split(".")[0] for k in micro.state_dict()}
    assert top == {
        "encoder", "decoder_embed", "mask_token", "decoder_pos_embed", "decoder_blocks", "decoder_norm", "decoder_pred"
    }  # fmt: skip


def test_initialisation():
    torch.manual_seed(1)
    mae = _micro(embed_dim=64, num_heads=4)
    for name, module in mae.named_modules():
        if isinstance(module, torch.nn.Linear):
            assert torch.count_nonzero(module.bias) == 0, name
            fan_out, fan_in = module.weight.shape
            bound = (6.0 / (fan_in + fan_out)) ** 0.5
            assert module.weight.abs().max() <= bound + 1e-6, name
        elif isinstance(module, torch.nn.LayerNorm):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0), name
    proj = mae.encoder.patch_embed.proj.weight
    bound = (6.0 / (proj[0].numel() + proj.shape[0])) ** 0.5  # xavier on the (D, C*p*p) view
    assert proj.abs().max() <= bound + 1e-6
    assert 0.005 < mae.encoder.cls_token.std() < 0.05 and mae.mask_token.abs().max() < 0.2


def test_sincos_matches_timm_table_up_to_channel_order():
    dim, rows, cols = 16, 3, 5
    ours = sincos_2d_pos_embed(dim, (rows, cols), cls_token=False)
    ref = build_sincos2d_pos_embed([rows, cols], dim)  # timm order: sin_row, sin_col, cos_row, cos_col
    q = dim // 4
    blocks = [ours[:, 2 * q : 3 * q], ours[:, 0:q], ours[:, 3 * q :], ours[:, q : 2 * q]]
    assert torch.allclose(torch.cat(blocks, dim=1), ref, atol=1e-6)
    # MAE convention: the column coordinate drives the first half
    assert torch.allclose(ours[1, :q], torch.sin(torch.tensor(1.0) * 10000 ** (-torch.arange(q) / q)), atol=1e-6)
    assert torch.equal(sincos_2d_pos_embed(dim, 2)[0], torch.zeros(dim))
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_2d_pos_embed(6, 2)


def test_forward_shapes_and_output_type(micro):
    imgs = torch.randn(3, 3, 32, 32)
    out = micro(imgs)
    assert isinstance(out, MAEOutput)
    loss, pred, mask = out
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert pred.shape == (3, 16, 8 * 8 * 3) and mask.shape == (3, 16)
    assert micro.forward_features(imgs).shape == (3, 17, 32)
    assert micro.embed(imgs).shape == (3, 32) and micro.embed(imgs, pool="mean").shape == (3, 32)


def test_embed_pools_match_timm_heads(micro):
    imgs = torch.randn(2, 3, 32, 32)
    tokens = micro.forward_features(imgs)
    assert torch.allclose(micro.embed(imgs), micro.encoder(imgs), atol=1e-6)
    assert torch.allclose(micro.embed(imgs, pool="mean"), tokens[:, 1:].mean(1), atol=1e-6)


# ---------------------------------------------------------------- masking
def test_masking_keeps_exact_count_per_sample_and_differs_across_batch():
    torch.manual_seed(0)
    mae = _micro(img_size=64, patch_size=8)  # L = 64
    tokens = torch.randn(8, 64, 32)
    for ratio in (0.9, 0.75, 0.5):
        visible, mask, ids_restore = mae.random_masking(tokens, ratio)
        keep = int(64 * (1 - ratio))
        assert visible.shape == (8, keep, 32)
        assert torch.all(mask.sum(1) == 64 - keep)
        assert set(mask.unique().tolist()) == {0.0, 1.0}
        assert len({tuple(m.tolist()) for m in mask}) > 1
        # ids_restore is a permutation that undoes the shuffle
        assert torch.equal(ids_restore.sort(1).values, torch.arange(64).expand(8, -1))
        ids_shuffle = ids_restore.argsort(1)
        assert torch.equal(visible, torch.gather(tokens, 1, ids_shuffle[:, :keep, None].expand(-1, -1, 32)))
        padded = torch.cat([visible, torch.zeros(8, 64 - keep, 32)], dim=1)
        restored = torch.gather(padded, 1, ids_restore[..., None].expand(-1, -1, 32))
        kept = mask == 0
        assert torch.equal(restored[kept], tokens[kept])
        assert torch.all(restored[~kept] == 0)


def test_masking_generator_reproducible():
    mae = _micro()
    tokens = torch.randn(4, 16, 32)
    a = mae.random_masking(tokens, 0.75, generator=torch.Generator().manual_seed(3))
    b = mae.random_masking(tokens, 0.75, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_paper_default_ratio_keeps_19_of_196():
    # arithmetic of the paper preset without building the 86M-parameter model
    assert int(196 * (1 - 0.9)) == 19
    mae = _micro(img_size=224, patch_size=16)  # same 14x14 grid, tiny widths
    assert mae.num_patches == 196 and mae.num_visible() == 19 and mae.num_visible(0.75) == 49


def test_encoder_processes_only_visible_tokens(micro):
    imgs = torch.randn(2, 3, 32, 32)
    gen_seed = 11
    latent, mask, ids_restore = micro.forward_encoder(imgs, generator=torch.Generator().manual_seed(gen_seed))
    keep = micro.num_visible()
    assert latent.shape == (2, 1 + keep, 32)
    # reference: the same visible tokens pushed through the timm encoder by hand
    enc = micro.encoder
    tokens = enc.patch_embed(imgs) + enc.pos_embed[:, 1:]
    ids_keep = ids_restore.argsort(1)[:, :keep]
    visible = torch.gather(tokens, 1, ids_keep[..., None].expand(-1, -1, 32))
    x = torch.cat([(enc.cls_token + enc.pos_embed[:, :1]).expand(2, -1, -1), visible], dim=1)
    ref = enc.norm(enc.blocks(x))
    assert torch.allclose(latent, ref, atol=1e-5)
    assert torch.all(torch.gather(mask, 1, ids_keep) == 0)


def test_grad_checkpointing_gives_same_result():
    torch.manual_seed(0)
    mae = _micro()
    imgs = torch.randn(2, 3, 32, 32)
    ref = mae(imgs, generator=torch.Generator().manual_seed(1))
    mae.encoder.set_grad_checkpointing(True)
    out = mae(imgs, generator=torch.Generator().manual_seed(1))
    out.loss.backward()
    assert torch.allclose(ref.pred, out.pred, atol=1e-6) and mae.encoder.blocks[0].attn.qkv.weight.grad is not None


def test_mixed_precision_loss_and_mask_stay_float32(micro):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = micro(torch.randn(2, 3, 32, 32))
    assert out.mask.dtype == torch.float32 and out.loss.dtype == torch.float32
    assert torch.isfinite(out.loss)


# ---------------------------------------------------------------- mask ratio bookkeeping
def test_mask_ratio_default_is_recorded_and_used():
    mae = _micro(img_size=64)
    assert mae.mask_ratio == 0.9 and mae.config["mask_ratio"] == 0.9
    assert mae.last_mask_ratio is None
    out = mae(torch.randn(2, 3, 64, 64))
    assert mae.last_mask_ratio == 0.9
    # the ratio actually applied is the configured one (the reference silently used 0.75)
    assert torch.all(out.mask.sum(1) == 64 - int(64 * 0.1))


def test_mask_ratio_configured_and_override_are_honoured():
    mae = _micro(img_size=64, mask_ratio=0.75)
    out = mae(torch.randn(2, 3, 64, 64))
    assert mae.last_mask_ratio == 0.75 and torch.all(out.mask.sum(1) == 48)
    out = mae(torch.randn(2, 3, 64, 64), mask_ratio=0.5)
    assert mae.last_mask_ratio == 0.5 and torch.all(out.mask.sum(1) == 32)
    assert mae.mask_ratio == 0.75  # an override does not change the configuration


def test_config_is_json_and_rebuilds_same_architecture():
    mae = _micro(in_chans=1, mask_ratio=0.8, norm_pix_loss=True)
    cfg = json.loads(json.dumps(mae.config))
    again = MaskedAutoencoderViT(**cfg)
    assert again.config == mae.config
    again.load_state_dict(mae.state_dict(), strict=True)


# ---------------------------------------------------------------- loss
def test_loss_only_sees_masked_patches(micro):
    imgs = torch.randn(2, 3, 32, 32)
    latent, mask, ids_restore = micro.forward_encoder(imgs)
    pred = micro.forward_decoder(latent, ids_restore).detach().requires_grad_(True)
    loss = micro.forward_loss(imgs, pred, mask)
    (grad,) = torch.autograd.grad(loss, pred)
    visible = mask == 0
    assert torch.all(grad[visible] == 0)
    assert torch.all(grad[~visible].abs().sum(-1) > 0)
    # exact value: mean over masked patches of the per-patch MSE
    per_patch = ((pred - micro.patchify(imgs)) ** 2).mean(-1)
    assert torch.allclose(loss, per_patch[~visible].mean())


def test_perfect_prediction_of_masked_patches_gives_zero_loss(micro):
    imgs = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 16)
    mask[:, :5] = 1
    pred = micro.patchify(imgs).clone()
    pred[mask == 0] += 10.0  # errors on visible patches must not count
    assert micro.forward_loss(imgs, pred, mask).item() == pytest.approx(0.0, abs=1e-12)


def test_norm_pix_loss_normalises_each_target_patch():
    mae = _micro(norm_pix_loss=True)
    imgs = torch.randn(2, 3, 32, 32) * 5 + 3
    target = mae.patchify(imgs)
    normed = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    mask = torch.ones(2, 16)
    assert mae.forward_loss(imgs, normed, mask).item() == pytest.approx(0.0, abs=1e-8)
    plain = _micro(norm_pix_loss=False)
    assert plain.forward_loss(imgs, normed, mask).item() > 1.0


# ---------------------------------------------------------------- patches
@pytest.mark.parametrize("in_chans", [1, 3])
def test_patchify_round_trip_and_channel_last_order(in_chans):
    mae = _micro(in_chans=in_chans)
    imgs = torch.randn(2, in_chans, 32, 32)
    patches = mae.patchify(imgs)
    assert patches.shape == (2, 16, 64 * in_chans)
    assert torch.equal(mae.unpatchify(patches), imgs)
    # patch (row 1, col 2), pixel (p=3, q=5), channel c sits at ((3 * 8) + 5) * C + c
    for c in range(in_chans):
        assert patches[0, 1 * 4 + 2, (3 * 8 + 5) * in_chans + c] == imgs[0, c, 8 + 3, 16 + 5]


def test_single_channel_model_trains():
    mae = _micro(in_chans=1)
    out = mae(torch.randn(2, 1, 32, 32))
    out.loss.backward()
    assert out.pred.shape == (2, 16, 64)
    assert mae.encoder.patch_embed.proj.weight.grad is not None
    assert mae.encoder.pos_embed.grad is None


# ---------------------------------------------------------------- timm interop (small)
@pytest.mark.parametrize("in_chans", [1, 3])
def test_encoder_round_trip_through_timm_small(in_chans):
    torch.manual_seed(0)
    mae = create_mae("mae_vit_tiny_patch8_64", in_chans=in_chans).eval()
    cfg = json.loads(json.dumps(mae.timm_config))
    assert cfg["model_args"] == mae.encoder_timm_kwargs()
    vit = timm.create_model(cfg["architecture"], **cfg["model_args"]).eval()
    vit.load_state_dict(mae.encoder.state_dict(), strict=True)
    imgs = torch.randn(2, in_chans, 64, 64)
    assert torch.allclose(vit.forward_features(imgs), mae.forward_features(imgs), atol=1e-6)
    assert torch.allclose(vit(imgs), mae.embed(imgs), atol=1e-6)
    # and back: a perturbed timm model loads strictly into the MAE encoder
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(0.01 * torch.randn_like(p))
    mae.encoder.load_state_dict(vit.state_dict(), strict=True)
    assert torch.allclose(vit.forward_features(imgs), mae.forward_features(imgs), atol=1e-6)


# ---------------------------------------------------------------- presets
def test_preset_registry():
    assert list_mae_presets() == sorted(MAE_PRESETS)
    assert {"mae_vit_base_patch16", "mae_vit_tiny_patch8_64", "mae_vit_small_patch8_96"} <= set(MAE_PRESETS)
    small = create_mae("mae_vit_small_patch8_96")
    assert (small.img_size, small.patch_size, small.embed_dim, len(small.encoder.blocks)) == (96, 8, 192, 6)
    assert small.config["mask_ratio"] == 0.9
    tiny = create_mae("mae_vit_tiny_patch8_64", in_chans=1, mask_ratio=0.75)
    assert tiny.in_chans == 1 and tiny.mask_ratio == 0.75 and tiny.num_patches == 64
    with pytest.raises(ValueError, match="name must be one of"):
        create_mae("mae_vit_giant")
    with pytest.raises(ValueError, match="unknown.*depthh"):
        create_mae("mae_vit_tiny_patch8_64", depthh=3)


def test_tiny_preset_trains_at_batch_32():
    torch.manual_seed(0)
    mae = create_mae("mae_vit_tiny_patch8_64")
    opt = torch.optim.AdamW([p for p in mae.parameters() if p.requires_grad], lr=1e-3)
    imgs = torch.randn(32, 3, 64, 64)
    pos = mae.encoder.pos_embed.detach().clone()
    losses = []
    for _ in range(3):
        out = mae(imgs, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0]
    assert torch.equal(mae.encoder.pos_embed, pos)  # fixed positions stay fixed


@pytest.fixture(scope="module")
def base_mae() -> MaskedAutoencoderViT:
    torch.manual_seed(0)
    return create_mae("mae_vit_base_patch16")


def test_paper_preset_one_training_step_on_cpu(base_mae):
    mae = base_mae
    assert mae.config == {
        "img_size": 224, "patch_size": 16, "in_chans": 3, "embed_dim": 768, "depth": 12, "num_heads": 12,
        "decoder_embed_dim": 512, "decoder_depth": 8, "decoder_num_heads": 16, "mlp_ratio": 4.0,
        "mask_ratio": 0.9, "norm_pix_loss": False,
    }  # fmt: skip
    mae.train()
    # fused AdamW: the unfused CPU step over 111M parameters costs several times more
    opt = torch.optim.AdamW(
        [p for p in mae.parameters() if p.requires_grad], lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=True
    )
    before = mae.decoder_pred.weight.detach().clone()
    out = mae(torch.randn(2, 3, 224, 224))
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    assert mae.last_mask_ratio == 0.9 and torch.all(out.mask.sum(1) == 196 - 19)
    assert out.pred.shape == (2, 196, 768) and torch.isfinite(out.loss)
    assert not torch.equal(before, mae.decoder_pred.weight)


def test_paper_preset_encoder_loads_into_stock_timm_vit_b16(base_mae):
    mae = base_mae.eval()
    vit = timm.create_model("vit_base_patch16_224", num_classes=0, weight_init="skip").eval()
    vit.load_state_dict(mae.encoder.state_dict(), strict=True)
    imgs = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(vit(imgs), mae.embed(imgs), atol=1e-5)


# ---------------------------------------------------------------- input checks
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(img_size=30), "img_size must be divisible by patch_size"),
        (dict(embed_dim=30, num_heads=3), "embed_dim must be a multiple of 4"),
        (dict(embed_dim=32, num_heads=3), "embed_dim must be divisible by num_heads"),
        (dict(decoder_embed_dim=32, decoder_num_heads=3), "decoder_embed_dim must be divisible by decoder_num_heads"),
        (dict(decoder_embed_dim=18, decoder_num_heads=2), "decoder_embed_dim must be a multiple of 4"),
        (dict(mask_ratio=0.0), r"mask_ratio must be a float in the open interval \(0, 1\)"),
        (dict(mask_ratio=1.0), r"mask_ratio must be a float in the open interval \(0, 1\)"),
        (dict(mask_ratio=-0.1), r"mask_ratio must be a float in the open interval \(0, 1\)"),
        (dict(mask_ratio=True), r"mask_ratio must be a float"),
        (dict(mask_ratio=0.97), "leaves no visible patch"),
        (dict(mask_ratio=1e-20), "masks no patch"),
        (dict(depth=0), "depth must be a positive int"),
        (dict(in_chans=0), "in_chans must be a positive int"),
        (dict(patch_size=2.0), "patch_size must be a positive int"),
        (dict(mlp_ratio=0), "mlp_ratio must be a positive number"),
        (dict(norm_pix_loss="yes"), "norm_pix_loss must be a bool"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _micro(**kwargs)


@pytest.mark.parametrize(
    "imgs, match",
    [
        (torch.randn(2, 1, 32, 32), r"imgs must have shape \(B, 3, 32, 32\), got \(2, 1, 32, 32\)"),
        (torch.randn(2, 3, 64, 64), r"imgs must have shape \(B, 3, 32, 32\), got \(2, 3, 64, 64\)"),
        (torch.randn(3, 32, 32), r"imgs must have shape"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.long), "floating-point"),
        (torch.randn(0, 3, 32, 32), "batch size 0"),
        ([[0.0]], "must be a torch.Tensor"),
    ],
)
def test_forward_rejects_bad_inputs(micro, imgs, match):
    with pytest.raises(ValueError, match=match):
        micro(imgs)
    with pytest.raises(ValueError, match=match):
        micro.forward_features(imgs)


def test_other_bad_calls(micro):
    imgs = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="mask_ratio must be a float"):
        micro(imgs, mask_ratio=1.5)
    with pytest.raises(ValueError, match="leaves no visible patch"):
        micro(imgs, mask_ratio=0.95)  # 16 patches: int(16 * 0.05) = 0
    with pytest.raises(ValueError, match="pool must be 'token' or 'mean', got 'max'"):
        micro.embed(imgs, pool="max")
    with pytest.raises(ValueError, match=r"patches must have shape \(B, 16, 192\)"):
        micro.unpatchify(torch.randn(1, 16, 64))
    with pytest.raises(ValueError, match=r"tokens must have shape \(B, 16, D\)"):
        micro.random_masking(torch.randn(1, 15, 32), 0.5)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="generator must live on the input's device"):
            micro.random_masking(torch.randn(1, 16, 32), 0.5, generator=torch.Generator(device="cuda"))
