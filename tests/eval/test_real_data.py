"""Montgomery TB classification + lung segmentation on the real sample (skipped when absent)."""

from __future__ import annotations

import numpy as np
import pytest

from pacx.data.splits import check_overlap
from pacx.eval.real_data import evaluate_montgomery
from tests.utils import require_shared_data


@pytest.mark.real_data
def test_evaluate_montgomery_small(tmp_path, make_vit):
    data_dir = require_shared_data("montgomery")
    encoders = {"mae": make_vit(0, img_size=64, patch_size=8), "pacx": make_vit(1, img_size=64, patch_size=8)}
    kwargs = dict(
        data_dir=data_dir, image_size=64, seeds=(0,), cache_dir=tmp_path / "cache", n_resamples=100,
        probe_kwargs={"method": "lbfgs", "l2_grid": (1e-1, 1.0)},
        seg_kwargs={"epochs": 3, "batch_size": 16, "hidden_dim": 32, "lr": 1e-2},
    )
    out = evaluate_montgomery(encoders, **kwargs)
    data = out["data"]
    assert data["n_images"] == 138 and data["n_tb"] == 58
    assert data["n_train"] + data["n_val"] + data["n_test"] == 138
    check_overlap(data["files_train"], data["files_test"], "train", "test")  # one image per patient
    for name in encoders:
        cls, seg = out["classification"][name], out["segmentation"][name]
        assert 0.0 <= cls["pooled"]["auroc"] <= 1.0 and len(cls["ci"]["auroc"]) == 2
        assert cls["test_probs"].shape == (data["n_test"],)
        assert seg["dice_per_image"].shape == (data["n_test"],) and 0.0 <= seg["dice"] <= 1.0
    cmp = out["comparisons"]
    assert set(cmp["classification"]) == {"pacx_vs_mae"} and 0 < cmp["classification"]["pacx_vs_mae"]["p_value"] <= 1
    assert set(cmp["segmentation"]["pacx_vs_mae"]) == {"dice", "iou"}
    # 2 encoders x 3 splits x 2 pools cached once; a rerun reads them back and agrees.
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 12
    again = evaluate_montgomery({"mae": encoders["mae"]}, reference=None, **kwargs)
    np.testing.assert_array_equal(
        again["classification"]["mae"]["test_probs"], out["classification"]["mae"]["test_probs"]
    )
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 12


def test_evaluate_montgomery_validates(make_vit, tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        evaluate_montgomery({})
    with pytest.raises(ValueError, match="expects"):
        evaluate_montgomery({"mae": make_vit(0, img_size=32)}, data_dir=tmp_path, image_size=64)
    with pytest.raises(FileNotFoundError):
        evaluate_montgomery({"mae": make_vit(0, img_size=64)}, data_dir=tmp_path / "missing", image_size=64)
