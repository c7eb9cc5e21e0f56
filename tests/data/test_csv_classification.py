"""Tests for pacx.data.csv_classification: binary, multi-label and multi-class CSV datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pacx.data.csv_classification import CSVImageDataset, join_image_path


def write_images(root: Path, n: int = 4) -> pd.DataFrame:
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((12, 10), 30 * i, dtype=np.uint8)).save(root / "img" / f"{i}.png")
    return pd.DataFrame(
        {
            "file": [f"img/{i}.png" for i in range(n)],
            "patient": ["a", "a", "b", "c"][:n],
            "effusion": [0, 1, 1, 0][:n],
            "mass": [1, 0, 1, 0][:n],
            "finding": ["normal", "covid", "pneumonia", "covid"][:n],
            "is_normal": [1, 0, 0, 0][:n],
            "is_covid": [0, 1, 0, 1][:n],
            "is_pneumonia": [0, 0, 1, 0][:n],
        }
    )


def test_binary(tmp_path):
    table = write_images(tmp_path)
    table.to_csv(tmp_path / "labels.csv", index=False)
    ds = CSVImageDataset(tmp_path / "labels.csv", tmp_path, "file", "effusion", "binary", patient_column="patient", image_size=8)
    item = ds[1]
    assert item["cxr"].shape == (3, 8, 8) and item["label"].tolist() == [1.0] and item["label"].dtype == torch.float32
    assert item["patient_id"] == "a" and item["path"] == str(tmp_path / "img/1.png") and ds.num_classes == 1


def test_multilabel(tmp_path):
    ds = CSVImageDataset(write_images(tmp_path), tmp_path, "file", ["effusion", "mass"], "multilabel")
    assert ds[2]["label"].tolist() == [1.0, 1.0] and ds.labels.shape == (4, 2)
    assert ds[0]["cxr"].shape == (3, 12, 10)  # native size, not transposed
    assert ds.patient_ids[0] == "img/0.png"  # no patient column: one patient per image


def test_multiclass_from_values_and_from_onehot(tmp_path):
    table = write_images(tmp_path)
    by_value = CSVImageDataset(table, tmp_path, "file", "finding", "multiclass")
    assert by_value.classes == ["covid", "normal", "pneumonia"] and by_value.labels.tolist() == [1, 0, 2, 0]
    assert by_value[2]["label"].dtype == torch.int64 and by_value[2]["label"].item() == 2
    ordered = CSVImageDataset(table, tmp_path, "file", "finding", "multiclass", classes=["normal", "covid", "pneumonia"])
    assert ordered.labels.tolist() == [0, 1, 2, 1]
    onehot = CSVImageDataset(table, tmp_path, "file", ["is_normal", "is_covid", "is_pneumonia"], "multiclass")
    assert onehot.labels.tolist() == [0, 1, 2, 1] and onehot.num_classes == 3


def test_unknown_column_names_it_and_lists_available(tmp_path):
    table = write_images(tmp_path)
    with pytest.raises(ValueError, match=r"unknown column\(s\) \['Effusion'\]; available columns: \['file', 'patient', 'effusion'"):
        CSVImageDataset(table, tmp_path, "file", "Effusion", "binary")
    with pytest.raises(ValueError, match=r"unknown column\(s\) \['pid'\]"):
        CSVImageDataset(table, tmp_path, "file", "effusion", "binary", patient_column="pid")


def test_label_errors_name_row_and_column(tmp_path):
    table = write_images(tmp_path)
    table.loc[3, "mass"] = 2
    with pytest.raises(ValueError, match=r"'mass' must hold 0/1, got 2 at row 3"):
        CSVImageDataset(table, tmp_path, "file", ["effusion", "mass"], "multilabel")
    table.loc[3, "mass"] = np.nan
    with pytest.raises(ValueError, match=r"'mass' must hold 0/1.*row 3"):
        CSVImageDataset(table, tmp_path, "file", ["effusion", "mass"], "multilabel")
    with pytest.raises(ValueError, match="one-hot row 0 has 2 ones"):
        CSVImageDataset(write_images(tmp_path), tmp_path, "file", ["is_normal", "mass"], "multiclass")
    with pytest.raises(ValueError, match="'covid' at row 1 is not in classes"):
        CSVImageDataset(write_images(tmp_path), tmp_path, "file", "finding", "multiclass", classes=["normal", "pneumonia"])
    with pytest.raises(ValueError, match="exactly one label column"):
        CSVImageDataset(write_images(tmp_path), tmp_path, "file", ["effusion", "mass"], "binary")
    with pytest.raises(ValueError, match="task must be one of"):
        CSVImageDataset(write_images(tmp_path), tmp_path, "file", "effusion", "regression")


def test_empty_csv_files_are_named(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match=r"CSV .*empty.csv is empty"):
        CSVImageDataset(tmp_path / "empty.csv", tmp_path, "file", "effusion", "binary")
    (tmp_path / "header.csv").write_text("file,effusion\n")
    with pytest.raises(ValueError, match=r"header.csv.*no rows"):
        CSVImageDataset(tmp_path / "header.csv", tmp_path, "file", "effusion", "binary")


def test_undecodable_image_is_named(tmp_path):
    table = write_images(tmp_path)
    (tmp_path / "img" / "3.png").write_bytes(b"\x89PNG but broken")
    ds = CSVImageDataset(table, tmp_path, "file", "effusion", "binary")
    with pytest.raises(ValueError, match=r"img/3.png"):
        ds[3]


def test_join_image_path():
    assert join_image_path("/data", "a/b/c.png", 1) == Path("/data/b/c.png")
    assert join_image_path(None, "a\\b\\c.png") == Path("a/b/c.png")
    with pytest.raises(ValueError, match="cannot strip 3"):
        join_image_path("/data", "a/b.png", 3)
