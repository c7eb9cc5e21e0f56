"""Each figure renders a non-trivial PNG on tiny data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pacx.data.transforms import normalize_imagenet
from pacx.eval.figures import (
    _curve_panels,
    plot_low_data_curves,
    plot_mae_reconstruction,
    plot_rollout_overlays,
    plot_training_curves,
)


def _phantom(n: int = 2, size: int = 32) -> torch.Tensor:
    """ImageNet-normalised grey 'chest' phantoms: two dark lung fields in a bright body."""
    yy, xx = np.mgrid[:size, :size] / size
    left = ((xx - 0.3) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
    right = ((xx - 0.7) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
    body = 0.8 - 0.5 * left - 0.5 * right
    imgs = torch.tensor(np.stack([body + 0.05 * i for i in range(n)]), dtype=torch.float32)
    return normalize_imagenet(imgs[:, None].repeat(1, 3, 1, 1))


def _check_png(path: Path) -> None:
    assert path.exists() and path.stat().st_size > 5_000
    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 200
    assert pixels.std() > 10  # not a blank canvas


def test_mae_reconstruction_grid(tmp_path):
    x = _phantom()
    masked = x.clone()
    masked[:, :, :16, :16] = 0
    _check_png(plot_mae_reconstruction(x, masked, x + 0.1 * torch.randn_like(x), tmp_path / "mae.png", mask_ratio=0.9))
    with pytest.raises(ValueError, match="share a shape"):
        plot_mae_reconstruction(x, masked[:1], x, tmp_path / "bad.png")


def test_low_data_curves(tmp_path):
    curves = {
        "MAE": {0.01: (0.66, 0.62, 0.70), 0.1: (0.76, 0.73, 0.79), 1.0: (0.79, 0.77, 0.81)},
        "PaCX": {
            0.01: {"pooled": {"auroc": 0.74}, "ci": {"auroc": [0.70, 0.78]}},
            0.1: (0.78, 0.75, 0.81),
            1.0: (0.80, 0.78, 0.82),
        },
    }
    _check_png(plot_low_data_curves(curves, tmp_path / "low.png"))


def test_rollout_overlays(tmp_path):
    x = _phantom()
    ref = np.random.default_rng(0).random((2, 32, 32)).astype(np.float32)
    cand = np.clip(ref[:, ::-1] * 1.2, 0, 1)
    _check_png(plot_rollout_overlays(x, ref, cand, tmp_path / "rollout.png", row_titles=["case 1", "case 2"]))


def test_training_curves(tmp_path):
    csv = tmp_path / "metrics.csv"
    steps = np.arange(0, 200, 10)
    rows = ["step,train/loss,val/auroc,lr"]
    for s in steps:
        val = "" if s % 50 else f"{0.5 + s / 500:.3f}"  # validation logged every 50 steps only
        rows.append(f"{s},{2.0 * np.exp(-s / 80):.4f},{val},{1e-3 * (1 - s / 200):.6f}")
    csv.write_text("\n".join(rows) + "\n")
    _check_png(plot_training_curves(csv, tmp_path / "curves.png"))
    with pytest.raises(ValueError, match="not in"):
        plot_training_curves(csv, tmp_path / "x.png", columns=["nope"])


def test_training_curves_put_train_and_validation_on_the_same_axes(tmp_path):
    # As the Trainer writes it: a row per log step, val_* columns filled at epoch ends only.
    rows = ["step,loss,lr,epoch,val_loss"]
    for step in range(1, 13):
        val = f"{1.0 + 0.1 * step:.3f}" if step % 4 == 0 else ""
        rows.append(f"{step},{2.0 / step:.4f},{1e-3:.6f},{step / 4},{val}")
    csv = tmp_path / "metrics.csv"
    csv.write_text("\n".join(rows) + "\n")
    assert _curve_panels(["loss", "lr", "val_loss"]) == {
        "loss": {"train": "loss", "val": "val_loss"},
        "lr": {"train": "lr"},
    }
    assert _curve_panels(["val/auroc", "train/loss"]) == {
        "auroc": {"val": "val/auroc"},
        "loss": {"train": "train/loss"},
    }
    _check_png(plot_training_curves(csv, tmp_path / "curves.png"))
    with pytest.raises(ValueError, match="x column 'time'"):
        plot_training_curves(csv, tmp_path / "x.png", x="time")
