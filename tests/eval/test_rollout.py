"""Attention capture, rollout and rescue-case selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pacx.eval.rollout import attention_maps, attention_rollout, select_rescue_cases, upsample_maps


def _manual_attention(vit, x):
    """softmax(q k^T * scale) of every block, recomputed from the qkv projections."""
    vit.eval()
    maps = []
    with torch.no_grad():
        h = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        for blk in vit.blocks:
            a = blk.attn
            y = blk.norm1(h)
            b, n, c = y.shape
            qkv = a.qkv(y).reshape(b, n, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
            q, k = a.q_norm(qkv[0]), a.k_norm(qkv[1])
            maps.append(((q * a.scale) @ k.transpose(-2, -1)).softmax(-1))
            h = blk(h)
    return maps


def test_captured_attention_matches_manual_and_state_restored(tiny_vit):
    tiny_vit.train()
    fused_before = [b.attn.fused_attn for b in tiny_vit.blocks]
    x = torch.randn(2, 3, 32, 32)
    maps = attention_maps(tiny_vit, x)
    assert [b.attn.fused_attn for b in tiny_vit.blocks] == fused_before and tiny_vit.training
    assert all(len(b.attn.attn_drop._forward_hooks) == 0 for b in tiny_vit.blocks)
    assert len(maps) == 2 and maps[0].shape == (2, 2, 17, 17)
    for got, want in zip(maps, _manual_attention(tiny_vit, x)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_rollout_equals_definition(tiny_vit):
    x = torch.randn(3, 3, 32, 32)
    maps = attention_maps(tiny_vit, x)
    joint = torch.eye(17).expand(3, 17, 17)
    for a in maps:
        a = a.mean(1) + torch.eye(17)
        joint = (a / a.sum(-1, keepdim=True)) @ joint
    out = attention_rollout(tiny_vit, x)
    assert out.shape == (3, 4, 4)
    torch.testing.assert_close(out, joint[:, 0, 1:].reshape(3, 4, 4))
    assert not torch.equal(attention_rollout(tiny_vit, x, start_layer=1), out)
    with pytest.raises(ValueError, match="start_layer"):
        attention_rollout(tiny_vit, x, start_layer=5)


def test_upsample_maps_normalised():
    up = upsample_maps(torch.rand(2, 4, 4), 32)
    assert up.shape == (2, 32, 32)
    np.testing.assert_allclose(up.min(axis=(1, 2)), 0.0, atol=1e-6)
    np.testing.assert_allclose(up.max(axis=(1, 2)), 1.0, atol=1e-6)


def test_select_rescue_cases_uses_probe_disagreement():
    labels = np.array([1, 1, 0, 1, 1, 1])
    mae = np.array([0.2, 0.4, 0.1, 0.9, 0.3, 0.45])
    pacx = np.array([0.9, 0.6, 0.9, 0.95, 0.4, 0.99])
    # qualifying: 0 (margin 0.7), 1 (0.2), 5 (0.54); 2 is negative, 3 MAE confident, 4 PaCX not
    assert select_rescue_cases(labels, mae, pacx, k=3).tolist() == [0, 5, 1]
    assert select_rescue_cases(labels, mae, pacx, k=1).tolist() == [0]
    with pytest.raises(ValueError, match="same length"):
        select_rescue_cases(labels[:3], mae, pacx)
