"""Tests for pacx.data.symile on tiny trees written in the exact Symile-MIMIC layout."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pacx.data.ecg import ECGFOUNDER_LEADS, MIMIC_LEADS
from pacx.data.symile import SymileMIMIC, load_task_labels, resolve_symile_root
from pacx.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform

N, S, T = 4, 32, 5000


def write_symile(root: Path, split: str = "train", n: int = N, **overrides) -> Path:
    """Write a Symile-format split; ``overrides`` replace an array by stem (None deletes it)."""
    rng = np.random.default_rng(0)
    folder = root / "data_npy" / split
    folder.mkdir(parents=True, exist_ok=True)
    ecg = np.zeros((n, 1, T, 12), dtype=np.float32)
    for lead in range(12):  # lead j (MIMIC order) is a sine of amplitude (j + 1) / 12, in [-1, 1]
        ecg[:, 0, :, lead] = (lead + 1) / 12 * np.sin(2 * np.pi * 5 * np.arange(T) / 500)
    arrays = {
        "cxr": rng.standard_normal((n, 3, S, S)).astype(np.float32),
        "ecg": ecg,
        "labs_percentiles": rng.random((n, 50)).astype(np.float32),
        "labs_missingness": (rng.random((n, 50)) > 0.3).astype(np.int64),
        "hadm_id": np.arange(20_000_000, 20_000_000 + n, dtype=np.int64),
    }
    arrays.update(overrides)
    for stem, value in arrays.items():
        if value is not None:
            np.save(folder / f"{stem}_{split}.npy", value)
    return root


def test_reads_items_with_expected_shapes_and_dtypes(tmp_path):
    write_symile(tmp_path)
    ds = SymileMIMIC(tmp_path, "train", ecg_preprocess=False)
    assert len(ds) == N
    item = ds[1]
    assert item["cxr"].shape == (3, S, S) and item["cxr"].dtype == torch.float32
    assert item["ecg"].shape == (12, T) and item["ecg"].dtype == torch.float32
    assert item["labs"].shape == (50,) and item["labs_observed"].shape == (50,)
    assert item["labs_observed"].dtype == torch.float32 and set(item["labs_observed"].unique().tolist()) <= {0.0, 1.0}
    assert item["hadm_id"] == 20_000_001 and item["index"] == 1
    stored = np.load(tmp_path / "data_npy/train/cxr_train.npy")
    assert torch.equal(item["cxr"], torch.from_numpy(stored[1]))
    labs = np.load(tmp_path / "data_npy/train/labs_percentiles_train.npy")
    assert torch.equal(item["labs"], torch.from_numpy(labs[1]))


def test_ecg_leads_are_reordered_to_ecgfounder(tmp_path):
    write_symile(tmp_path)
    ecg = SymileMIMIC(tmp_path, "train", modalities=("ecg",), ecg_preprocess=False)[0]["ecg"]
    amplitude = ecg.abs().amax(dim=1).numpy()
    for i, name in enumerate(ECGFOUNDER_LEADS):  # amplitude encodes the MIMIC position
        assert amplitude[i] == pytest.approx((MIMIC_LEADS.index(name) + 1) / 12, rel=1e-4)


def test_ecg_preprocessing_is_globally_zscored(tmp_path):
    write_symile(tmp_path)
    ecg = SymileMIMIC(tmp_path, "train", modalities=("ecg",))[2]["ecg"]
    assert abs(float(ecg.mean())) < 1e-5 and abs(float(ecg.std(unbiased=False)) - 1.0) < 1e-4
    assert ecg.std(dim=1)[11] > ecg.std(dim=1)[0]  # relative lead amplitudes are kept


def test_only_requested_modalities_are_read(tmp_path):
    write_symile(tmp_path, cxr=None, ecg=None)  # files of unrequested modalities may be absent
    ds = SymileMIMIC(tmp_path, "train", modalities=("labs",))
    assert set(ds[0]) == {"labs", "labs_observed", "hadm_id", "patient_id", "index"}


def test_image_size_and_transform(tmp_path):
    write_symile(tmp_path)
    ds = SymileMIMIC(tmp_path, "train", modalities=("cxr",), image_size=16)
    assert ds[0]["cxr"].shape == (3, 16, 16)
    ds = SymileMIMIC(tmp_path, "train", modalities=("cxr",), cxr_transform=eval_transform(8))
    assert ds[0]["cxr"].shape == (3, 8, 8)


@pytest.mark.parametrize("channels", [1, 3])
def test_uint8_cxr_storage_variant(tmp_path, channels):
    gray = np.random.default_rng(1).integers(0, 256, (N, channels, S, S), dtype=np.uint8)
    write_symile(tmp_path, cxr=gray)
    x = SymileMIMIC(tmp_path, "train", modalities=("cxr",))[3]["cxr"]
    assert x.shape == (3, S, S) and x.dtype == torch.float32
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    expected = (torch.from_numpy(gray[3]).float().div(255).expand(3, S, S) - mean) / std
    assert torch.allclose(x, expected, atol=1e-6)


def test_root_may_be_the_data_npy_folder(tmp_path):
    write_symile(tmp_path)
    ds = SymileMIMIC(tmp_path / "data_npy", "train", modalities=("labs",))
    assert ds.root == tmp_path and len(ds) == N
    with pytest.raises(FileNotFoundError, match="splits present: \\['train'\\]"):
        resolve_symile_root(tmp_path, "val")


def test_extra_arrays_by_name_and_by_template(tmp_path):
    write_symile(tmp_path, label=np.array([1, 0, 0, 0], dtype=np.int64))
    (tmp_path / "tasks").mkdir()
    np.save(tmp_path / "tasks" / "lung_mask_train.npy", np.ones((N, S, S), dtype=np.uint8))
    ds = SymileMIMIC(tmp_path, "train", modalities=(), extra_arrays=["label"])
    assert ds[0]["label"].item() == 1
    ds = SymileMIMIC(tmp_path, "train", modalities=(), extra_arrays={"mask": "tasks/lung_mask_{split}.npy"})
    assert ds[0]["mask"].shape == (S, S) and ds[0]["mask"].dtype == torch.uint8
    with pytest.raises(ValueError, match="clashes"):
        SymileMIMIC(tmp_path, "train", extra_arrays={"labs": "tasks/lung_mask_{split}.npy"})


def test_dataloader_batches_and_pickles_without_arrays(tmp_path):
    write_symile(tmp_path)
    ds = SymileMIMIC(tmp_path, "train", ecg_preprocess=False)
    _ = ds[0]  # opens the memory maps
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._arrays == {} and torch.equal(clone[0]["cxr"], ds[0]["cxr"])
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["cxr"].shape == (4, 3, S, S) and batch["ecg"].shape == (4, 12, T)
    assert batch["labs_observed"].shape == (4, 50) and batch["hadm_id"].tolist() == list(range(20_000_000, 20_000_004))


# --- validation -------------------------------------------------------------------------------


def test_missing_file_is_named(tmp_path):
    write_symile(tmp_path, labs_missingness=None)
    with pytest.raises(FileNotFoundError, match="labs_missingness_train.npy"):
        SymileMIMIC(tmp_path, "train")


@pytest.mark.parametrize(
    "stem, bad, expected",
    [
        ("cxr", np.zeros((N, 3, S, S), np.float64), "cxr_train.npy: expected"),
        ("cxr", np.zeros((N, S, S), np.float32), "cxr_train.npy: expected"),
        ("cxr", np.zeros((N, 2, S, S), np.uint8), "cxr_train.npy: expected"),
        ("ecg", np.zeros((N, 5000, 12), np.float32), r"ecg_train.npy: expected \(N, 1, T, 12\) float32, got shape \(4, 5000, 12\)"),
        ("ecg", np.zeros((N, 1, 12, 5000), np.float32), "ecg_train.npy: expected"),
        ("labs_percentiles", np.zeros((N, 49), np.float32), r"labs_percentiles_train.npy: expected \(N, 50\)"),
        ("labs_missingness", np.zeros((N, 50, 1), np.int64), "labs_missingness_train.npy: expected"),
        ("hadm_id", np.zeros((N, 1), np.int64), "hadm_id_train.npy: expected"),
        ("hadm_id", np.zeros(N, np.float32), "hadm_id_train.npy: expected"),
    ],
)
def test_wrong_shape_or_dtype_names_file_expected_and_received(tmp_path, stem, bad, expected):
    write_symile(tmp_path, **{stem: bad})
    with pytest.raises(ValueError, match=expected) as info:
        SymileMIMIC(tmp_path, "train")
    assert "got shape" in str(info.value)


def test_mismatched_row_counts_name_files_and_counts(tmp_path):
    write_symile(tmp_path, labs_percentiles=np.zeros((N + 1, 50), np.float32))
    with pytest.raises(ValueError, match=r"labs_percentiles_train.npy: N=5.*hadm_id_train.npy: N=4|hadm_id_train.npy: N=4.*labs_percentiles_train.npy: N=5"):
        SymileMIMIC(tmp_path, "train")


@pytest.mark.parametrize("value, text", [(np.nan, "nan"), (1.5, "1.5"), (-0.1, "-0.1")])
def test_bad_lab_values_name_file_and_first_row(tmp_path, value, text):
    labs = np.full((N, 50), 0.5, np.float32)
    labs[2, 7] = value
    labs[3, 0] = value
    write_symile(tmp_path, labs_percentiles=labs)
    with pytest.raises(ValueError, match=rf"labs_percentiles_train.npy.*{text}.*row 2, column 7"):
        SymileMIMIC(tmp_path, "train")


def test_observed_mask_must_be_binary(tmp_path):
    observed = np.ones((N, 50), np.int64)
    observed[1, 3] = 2
    write_symile(tmp_path, labs_missingness=observed)
    with pytest.raises(ValueError, match=r"labs_missingness_train.npy.*0/1.*row 1, column 3"):
        SymileMIMIC(tmp_path, "train")


def test_bad_options_are_rejected(tmp_path):
    write_symile(tmp_path)
    with pytest.raises(ValueError, match="modalities"):
        SymileMIMIC(tmp_path, "train", modalities=("cxr", "mri"))
    with pytest.raises(ValueError, match="image_size"):
        SymileMIMIC(tmp_path, "train", image_size=0)
    with pytest.raises(IndexError):
        SymileMIMIC(tmp_path, "train")[N]


def test_load_task_labels_aligns_by_hadm_id(tmp_path):
    write_symile(tmp_path)
    (tmp_path / "tasks").mkdir()
    hadm = np.arange(20_000_000, 20_000_000 + N)
    rows = ["hadm_id,subject_id,effusion,ecg_af"] + [f"{h},{i},{i % 2},{1 - i % 2}" for i, h in enumerate(hadm)][::-1]
    (tmp_path / "tasks" / "train.csv").write_text("\n".join(rows) + "\n")
    ds = SymileMIMIC(tmp_path, "train", modalities=("labs",))
    labels = load_task_labels(tmp_path, "train", ["effusion", "ecg_af"], ds.hadm_ids)
    assert labels.shape == (N, 2) and labels.dtype == np.float32
    np.testing.assert_array_equal(labels[:, 0], np.arange(N) % 2)
    with pytest.raises(ValueError, match=r"unknown label columns \['pneumonia'\].*effusion"):
        load_task_labels(tmp_path, "train", ["pneumonia"])
    with pytest.raises(ValueError, match="missing from the file"):
        load_task_labels(tmp_path, "train", ["effusion"], [1, 2])


def test_patient_id_comes_from_the_split_csv_or_falls_back_to_hadm_id(tmp_path):
    root = write_symile(tmp_path / "a")
    ds = SymileMIMIC(root, "train", modalities=("labs",))
    assert [ds[i]["patient_id"] for i in range(N)] == ds.hadm_ids.tolist()
    hadm = np.arange(20_000_000, 20_000_000 + N)
    # Symile's split CSV, rows in another order than the arrays: ids follow hadm_id, not position.
    (root / "train.csv").write_text("subject_id,hadm_id\n" + "\n".join(
        f"{10_000 + i},{h}" for i, h in reversed(list(enumerate(hadm)))) + "\n")
    ds = SymileMIMIC(root, "train", modalities=("labs",))
    assert [ds[i]["patient_id"] for i in range(N)] == [10_000 + i for i in range(N)]
    (root / "train.csv").write_text("subject_id,hadm_id\n1,20000000\n")
    with pytest.raises(ValueError, match="have no subject_id"):
        SymileMIMIC(root, "train", modalities=("labs",))
