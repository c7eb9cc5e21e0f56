"""Segmentation probe on (synthetic) patch tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pacx.eval.segmentation import (
    SegmentationDecoder,
    compare_segmentation,
    segmentation_probe,
    train_segmentation_probe,
)


def _disc_data(n: int, seed: int, informative: bool = True):
    """32 px discs; tokens on a 4x4 grid carry the disc coverage of their patch (patch 8)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    masks = np.zeros((n, 1, 32, 32), np.float32)
    for i in range(n):
        r, c = rng.integers(6, 12), rng.integers(10, 22)
        masks[i, 0] = (yy - 16) ** 2 + (xx - c) ** 2 < r * r
    coverage = masks.reshape(n, 4, 8, 4, 8).mean(axis=(2, 4)).reshape(n, 16, 1)
    signal = coverage if informative else rng.random((n, 16, 1))
    tokens = np.concatenate([signal, 0.1 * rng.normal(size=(n, 16, 7))], axis=-1).astype(np.float16)
    return tokens, masks


def test_decoder_upsamplings_follow_patch_size():
    dec8 = SegmentationDecoder(embed_dim=8, patch_size=8, hidden_dim=32)
    dec16 = SegmentationDecoder(embed_dim=8, patch_size=16, hidden_dim=256)
    assert dec8.num_upsamplings == 3 and dec16.num_upsamplings == 4
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in dec16.modules()) == 4
    # patch 16 with 256 hidden channels is the reference decoder: 256-128-64-32-1
    assert [m.out_channels for m in dec16.modules() if isinstance(m, nn.ConvTranspose2d)] == [128, 64, 32, 1]
    assert dec8(torch.randn(2, 16, 8)).shape == (2, 1, 32, 32)
    assert dec16(torch.randn(2, 8, 3, 5)).shape == (2, 1, 48, 80)
    with pytest.raises(ValueError, match="power of two"):
        SegmentationDecoder(8, patch_size=14)
    with pytest.raises(ValueError, match="square"):
        dec8(torch.randn(2, 15, 8))


def test_probe_learns_and_reports_per_image():
    tr, va, te = _disc_data(48, 0), _disc_data(12, 1), _disc_data(16, 2)
    kw = {"epochs": 12, "batch_size": 8, "lr": 1e-2, "hidden_dim": 32}
    res = segmentation_probe(
        {"train": tr[0], "val": va[0], "test": te[0]}, {"train": tr[1], "val": va[1], "test": te[1][:, 0]},
        patch_size=8, seeds=(0,), n_resamples=100, **kw,
    )
    assert res["dice_per_image"].shape == (16,) and res["iou_per_image"].shape == (16,)
    assert res["dice"] == pytest.approx(res["dice_per_image"].mean())
    assert res["dice"] > 0.6 and res["iou"] < res["dice"]
    lo, hi = res["ci"]["dice"]
    assert lo <= res["dice"] <= hi
    noise = [_disc_data(n, s, informative=False) for n, s in ((48, 0), (12, 1), (16, 2))]
    bad = segmentation_probe(
        {"train": noise[0][0], "val": noise[1][0], "test": noise[2][0]}, {"train": tr[1], "val": va[1], "test": te[1]},
        patch_size=8, seeds=(0,), n_resamples=0, **kw,
    )
    cmp = compare_segmentation(res, bad, "dice", n_resamples=200)
    assert cmp["difference"] == pytest.approx(res["dice"] - bad["dice"]) and cmp["difference"] > 0


def test_train_is_seeded_and_validates():
    tr, te = _disc_data(8, 0), _disc_data(4, 1)
    kw = {"epochs": 1, "batch_size": 4, "hidden_dim": 16}
    a = train_segmentation_probe(tr[0], tr[1], te[0], te[1], te[0], te[1], 8, seed=5, return_probs=True, **kw)
    b = train_segmentation_probe(tr[0], tr[1], te[0], te[1], te[0], te[1], 8, seed=5, return_probs=True, **kw)
    np.testing.assert_array_equal(a["test_probs"], b["test_probs"])
    assert a["test_probs"].shape == (4, 1, 32, 32)
    with pytest.raises(ValueError, match="16x16"):
        train_segmentation_probe(tr[0], tr[1], te[0], te[1], te[0], te[1], 4, **kw)
    with pytest.raises(ValueError, match="binary"):
        train_segmentation_probe(tr[0], tr[1] * 0.5, te[0], te[1], te[0], te[1], 8, **kw)
