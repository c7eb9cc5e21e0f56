"""Tests for pacx.data.segmentation: image/mask pairs, Montgomery names, real Montgomery files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from pacx.data.segmentation import ImageMaskDataset, montgomery_label, montgomery_patient_id
from tests.utils import require_shared_data


def write_pairs(root: Path, names=("A_0001_0.png", "A_0002_1.png")) -> tuple[Path, Path]:
    images, masks = root / "cxr", root / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(np.full((40, 30), 50 * (i + 1), dtype=np.uint8)).save(images / name)
        mask = np.zeros((40, 30), dtype=np.uint8)
        mask[:20] = 255  # top half is foreground: a transpose would show
        mask[25, 5] = 127  # exactly the threshold: background
        Image.fromarray(mask).save(masks / name)
    return images, masks


def test_items_masks_labels_and_ids(tmp_path):
    images, masks = write_pairs(tmp_path)
    ds = ImageMaskDataset(images, masks, None, label_fn=montgomery_label, patient_id_fn=montgomery_patient_id)
    assert len(ds) == 2 and ds.labels == [0, 1] and ds.patient_ids == ["A_0001", "A_0002"]
    item = ds[1]
    assert item["cxr"].shape == (3, 40, 30) and item["mask"].shape == (1, 40, 30)
    assert item["mask"].dtype == torch.float32 and set(item["mask"].unique().tolist()) == {0.0, 1.0}
    assert item["mask"][0, :20].all() and not item["mask"][0, 20:].any()
    assert item["label"].item() == 1 and item["path"].endswith("A_0002_1.png")
    resized = ImageMaskDataset(images, masks, 16)[0]
    assert resized["cxr"].shape == (3, 16, 16) and resized["mask"].shape == (1, 16, 16)
    assert set(resized["mask"].unique().tolist()) == {0.0, 1.0} and resized["mask"][0, :7].all()
    assert "label" not in resized


def test_files_subset_threshold_and_batching(tmp_path):
    images, masks = write_pairs(tmp_path)
    ds = ImageMaskDataset(images, masks, 8, mask_threshold=126, files=["A_0002_1.png"])
    assert len(ds) == 1 and ds.files == ["A_0002_1.png"]
    batch = next(iter(DataLoader(ImageMaskDataset(images, masks, 8), batch_size=2)))
    assert batch["cxr"].shape == (2, 3, 8, 8) and batch["mask"].shape == (2, 1, 8, 8)


def test_errors_name_files(tmp_path):
    images, masks = write_pairs(tmp_path)
    (masks / "A_0002_1.png").unlink()
    with pytest.raises(FileNotFoundError, match="mask file not found for image A_0002_1.png"):
        ImageMaskDataset(images, masks, 16)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        ImageMaskDataset(images, masks, 16, files=["nope.png"])
    (images / "A_0002_1.png").unlink()
    (images / "A_0001_0.png").write_bytes(b"not a png at all")
    ds = ImageMaskDataset(images, masks, 16)
    with pytest.raises(ValueError, match="cannot decode image file .*A_0001_0.png"):
        ds[0]
    with pytest.raises(ValueError, match="mask_threshold"):
        ImageMaskDataset(images, masks, 16, mask_threshold=300)
    with pytest.raises(FileNotFoundError, match="mask_dir"):
        ImageMaskDataset(images, tmp_path / "absent", 16)


def test_mask_of_another_aspect_ratio_is_refused_not_stretched(tmp_path):
    images, masks = write_pairs(tmp_path)  # 40 x 30 images
    half = np.zeros((20, 15), dtype=np.uint8)
    half[:10] = 255
    Image.fromarray(half).save(masks / "A_0001_0.png")  # same aspect ratio, half resolution: resized
    assert ImageMaskDataset(images, masks, 16)[0]["mask"][0, :7].all()
    Image.fromarray(np.zeros((40, 40), dtype=np.uint8)).save(masks / "A_0002_1.png")
    ds = ImageMaskDataset(images, masks, 16)
    with pytest.raises(ValueError, match=r"masks/A_0002_1.png.*\(40, 40\).*cxr/A_0002_1.png.*\(40, 30\)"):
        ds[1]


def test_montgomery_name_helpers():
    assert montgomery_label("MCUCXR_0001_0.png") == 0 and montgomery_label(Path("x/MCUCXR_0104_1.png")) == 1
    assert montgomery_patient_id("MCUCXR_0104_1.png") == "MCUCXR_0104"
    with pytest.raises(ValueError, match="_0 or _1"):
        montgomery_label("MCUCXR_0104.png")


@pytest.mark.real_data
def test_real_montgomery_set():
    root = require_shared_data("montgomery")
    ds = ImageMaskDataset(root / "cxr", root / "masks", 64, label_fn=montgomery_label, patient_id_fn=montgomery_patient_id)
    assert len(ds) == 138 and sum(ds.labels) == 58 and len(set(ds.patient_ids)) == 138
    item = ds[0]
    assert item["cxr"].shape == (3, 64, 64) and item["mask"].shape == (1, 64, 64)
    assert 0.1 < float(item["mask"].mean()) < 0.5  # lungs cover a plausible share of the film
    assert set(item["mask"].unique().tolist()) == {0.0, 1.0}
