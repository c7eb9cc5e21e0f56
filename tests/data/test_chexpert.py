"""Tests for pacx.data.chexpert on a small CSV in the official CheXpert layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pacx.data.chexpert import CHEXPERT_FINDINGS, CheXpertDataset, chexpert_patient_id

HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_FINDINGS]


def write_chexpert(root: Path) -> Path:
    """Four images of three patients under root/train, CSV paths prefixed CheXpert-v1.0-small/."""
    rows = [
        ("patient00001/study1/view1_frontal.jpg", "Frontal", "AP", {"Cardiomegaly": 1, "Edema": -1}),
        ("patient00001/study1/view2_lateral.jpg", "Lateral", "", {"Cardiomegaly": 1, "Edema": -1}),
        ("patient00002/study1/view1_frontal.jpg", "Frontal", "PA", {"No Finding": 1}),
        ("patient00003/study2/view1_frontal.jpg", "Frontal", "AP", {"Pleural Effusion": 0, "Edema": 1}),
    ]
    records = []
    for i, (rel, view, ap_pa, labels) in enumerate(rows):
        image = root / "train" / rel
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((24, 20), 40 * (i + 1), dtype=np.uint8)).save(image)
        record = {"Path": f"CheXpert-v1.0-small/train/{rel}", "Sex": "Female", "Age": 60, "Frontal/Lateral": view, "AP/PA": ap_pa}
        record.update({f: labels.get(f, "") for f in CHEXPERT_FINDINGS})
        records.append(record)
    csv = root / "train.csv"
    pd.DataFrame(records, columns=HEADER).to_csv(csv, index=False)
    return csv


def _column(name: str) -> int:
    return CHEXPERT_FINDINGS.index(name)


@pytest.mark.parametrize("policy, value, mask", [("ones", 1.0, 1.0), ("zeros", 0.0, 1.0), ("ignore", 0.0, 0.0)])
def test_uncertain_policies(tmp_path, policy, value, mask):
    csv = write_chexpert(tmp_path)
    ds = CheXpertDataset(csv, tmp_path, uncertain_policy=policy, strip_components=1)
    assert len(ds) == 4
    item = ds[0]
    assert item["label"].shape == (14,) and item["label"].dtype == torch.float32
    assert item["label"][_column("Edema")] == value and item["label_mask"][_column("Edema")] == mask
    assert item["label"][_column("Cardiomegaly")] == 1.0
    assert item["label"][_column("Pneumonia")] == 0.0 and item["label_mask"][_column("Pneumonia")] == 1.0  # blank
    assert item["label_mask"].sum() == (13 if policy == "ignore" else 14)


def test_items_paths_and_patient_ids(tmp_path):
    csv = write_chexpert(tmp_path)
    ds = CheXpertDataset(csv, tmp_path, strip_components=1, image_size=16)
    item = ds[2]
    assert item["cxr"].shape == (3, 16, 16) and item["patient_id"] == "patient00002"
    assert item["path"] == str(tmp_path / "train/patient00002/study1/view1_frontal.jpg")
    assert ds.patient_ids == ["patient00001", "patient00001", "patient00002", "patient00003"]
    full = CheXpertDataset(csv, tmp_path, strip_components=1)
    assert full[1]["cxr"].shape == (3, 24, 20)  # non-square, not transposed


def test_frontal_and_view_filters(tmp_path):
    csv = write_chexpert(tmp_path)
    frontal = CheXpertDataset(csv, tmp_path, frontal_only=True, strip_components=1)
    assert len(frontal) == 3 and all("frontal" in p for p in frontal.rel_paths)
    pa = CheXpertDataset(csv, tmp_path, view_positions=("PA",), strip_components=1)
    assert pa.patient_ids == ["patient00002"] and pa.source_rows.tolist() == [2]


def test_dataframe_input_and_custom_findings(tmp_path):
    write_chexpert(tmp_path)
    table = pd.read_csv(tmp_path / "train.csv")
    ds = CheXpertDataset(table, tmp_path, findings=["Edema", "Cardiomegaly"], strip_components=1)
    assert ds[3]["label"].tolist() == [1.0, 0.0]


def test_errors_name_column_row_and_file(tmp_path):
    csv = write_chexpert(tmp_path)
    with pytest.raises(ValueError, match=r"unknown column\(s\) \['Hernia'\].*available columns.*'Path'"):
        CheXpertDataset(csv, tmp_path, findings=["Hernia"])
    table = pd.read_csv(csv)
    table.loc[2, "Edema"] = 2
    with pytest.raises(ValueError, match=r"'Edema' must be 1, 0, -1 or blank, got 2.0 at row 2"):
        CheXpertDataset(table, tmp_path)
    table = pd.read_csv(csv)
    table.loc[1, "Path"] = "train/nobody/view1.jpg"
    with pytest.raises(ValueError, match=r"row 1.*nobody"):
        CheXpertDataset(table, tmp_path)
    with pytest.raises(ValueError, match="uncertain_policy"):
        CheXpertDataset(csv, tmp_path, uncertain_policy="maybe")
    with pytest.raises(ValueError, match="no rows left"):
        CheXpertDataset(csv, tmp_path, view_positions=("LL",))
    (tmp_path / "train/patient00002/study1/view1_frontal.jpg").write_bytes(b"garbage")
    ds = CheXpertDataset(csv, tmp_path, strip_components=1)
    with pytest.raises(ValueError, match="patient00002/study1/view1_frontal.jpg"):
        ds[2]
    with pytest.raises(FileNotFoundError, match="CheXpert-v1.0-small/train/patient00001"):
        CheXpertDataset(csv, tmp_path)[0]  # without stripping, the prefix folder does not exist
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match=r"CheXpert CSV file .*empty.csv is empty"):
        CheXpertDataset(tmp_path / "empty.csv", tmp_path)


def test_chexpert_patient_id():
    assert chexpert_patient_id("CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg") == "patient64541"
    with pytest.raises(ValueError, match="patient<digits>"):
        chexpert_patient_id("train/p1/study1.jpg")
