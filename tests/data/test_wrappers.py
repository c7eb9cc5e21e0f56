"""Tests for pacx.data.wrappers: teacher embeddings and labels attached to dict items."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pacx.data.wrappers import EmbeddingDataset, LabelledDataset, load_teacher_embeddings


def _base(n: int = 4) -> list[dict]:
    return [{"x": torch.tensor([float(i)])} for i in range(n)]


def test_embedding_dataset_adds_rows_by_teacher():
    ecg = np.arange(4 * 3, dtype=np.float32).reshape(4, 3)
    labs = np.ones((4, 2), dtype=np.float64)
    ds = EmbeddingDataset(_base(), {"ecg": ecg, "labs": labs})
    item = ds[2]
    assert item["x"].item() == 2.0
    assert torch.equal(item["teacher_embeddings"]["ecg"], torch.tensor([6.0, 7.0, 8.0]))
    assert item["teacher_embeddings"]["labs"].dtype == torch.float32
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["teacher_embeddings"]["ecg"].shape == (4, 3) and batch["teacher_embeddings"]["labs"].shape == (4, 2)


@pytest.mark.parametrize(
    "embeddings, match",
    [
        ({"ecg": np.zeros((5, 3), np.float32)}, r"embeddings\['ecg'\] has 5 rows, expected 4"),
        ({"ecg": np.zeros((4,), np.float32)}, r"\(N, D\)"),
        ({"ecg": np.zeros((4, 3), np.int64)}, "floating"),
        ({}, "at least one teacher"),
    ],
)
def test_embedding_dataset_validation(embeddings, match):
    with pytest.raises(ValueError, match=match):
        EmbeddingDataset(_base(), embeddings)


def test_labelled_dataset_dtypes_names_and_mask():
    multi = LabelledDataset(_base(), np.array([[0, 1], [1, 0], [1, 1], [0, 0]]), names=["a", "b"], mask=np.ones((4, 2)))
    item = multi[0]
    assert item["label"].dtype == torch.float32 and item["label"].tolist() == [0.0, 1.0]
    assert item["label_mask"].tolist() == [1.0, 1.0] and multi.label_names == ["a", "b"]
    classes = LabelledDataset(_base(), np.array([2, 0, 1, 2]))
    assert classes[0]["label"].dtype == torch.int64 and classes[0]["label"].item() == 2
    binary = LabelledDataset(_base(), np.array([0.0, 1.0, 1.0, 0.0]), key="effusion")
    assert binary[1]["effusion"].dtype == torch.float32 and binary[1]["effusion"].item() == 1.0


def test_labelled_dataset_validation():
    with pytest.raises(ValueError, match="labels has 3 rows, expected 4"):
        LabelledDataset(_base(), np.zeros(3))
    with pytest.raises(ValueError, match="NaN.*row 2"):
        LabelledDataset(_base(), np.array([0.0, 1.0, np.nan, 0.0]))
    with pytest.raises(ValueError, match="names must have 2 entries"):
        LabelledDataset(_base(), np.zeros((4, 2)), names=["a"])
    with pytest.raises(ValueError, match="dict items"):
        LabelledDataset([1, 2, 3, 4], np.zeros(4))[0]


def test_load_teacher_embeddings(tmp_path):
    folder = tmp_path / "teachers" / "train"
    folder.mkdir(parents=True)
    np.save(folder / "ecg.npy", np.zeros((4, 8), np.float32))
    np.save(folder / "labs.npy", np.ones((4, 2), np.float32))
    loaded = load_teacher_embeddings(tmp_path, "train")
    assert sorted(loaded) == ["ecg", "labs"] and loaded["ecg"].shape == (4, 8)
    with pytest.raises(FileNotFoundError, match="cxr.npy"):
        load_teacher_embeddings(tmp_path, "train", ["cxr"])
    np.save(folder / "labs.npy", np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match="different row counts"):
        load_teacher_embeddings(tmp_path, "train")


def test_memory_mapped_teacher_embeddings_convert_to_torch_without_touching_the_file(tmp_path):
    # torch.from_numpy on a read-only memory map warns "The given NumPy array is not writable"
    # (once per process, so the flag is what is checked here) for every caller converting them.
    folder = tmp_path / "teachers" / "test"
    folder.mkdir(parents=True)
    np.save(folder / "ecg.npy", np.arange(8, dtype=np.float32).reshape(2, 4))
    ecg = load_teacher_embeddings(tmp_path, "test")["ecg"]
    assert isinstance(ecg, np.memmap) and ecg.flags.writeable
    tensor = torch.from_numpy(ecg)
    tensor[0, 0] = 100.0  # copy-on-write: the process's pages change, never the cached file
    assert np.load(folder / "ecg.npy")[0, 0] == 0.0
