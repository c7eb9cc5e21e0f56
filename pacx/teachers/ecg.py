"""The ECG teacher: Net1D in the ECGFounder layout, over 12-lead ECGs at 500 Hz.

With ``teachers.ecg.checkpoint`` (``--ecgfounder-checkpoint``) the published ECGFounder
weights are loaded, as in the paper. Without it, Net1D (``arch``: ``small`` or the full
``ecgfounder``) is trained from scratch on the cohort's ECG diagnostic labels
(``cohort.json["ecg_labels"]``, multi-label BCE), which the synthetic cohort provides.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from pacx.data import LabelledDataset, SymileMIMIC, load_task_labels
from pacx.data.ecg import preprocess_ecg
from pacx.distributed import is_main_process
from pacx.io import load_json
from pacx.nets import ECGTeacher, Teacher, ecgfounder_12lead, load_ecgfounder_checkpoint, net1d_small

from .base import TeacherPlugin, register_teacher

__all__ = ["ECGTeacherPlugin", "ECGArray", "preprocessed_ecg"]

ECGFOUNDER_CLASSES = 150  # the published 12-lead checkpoint's head


def preprocessed_ecg(root: Path, split: str, cache_dir: Path, chunk: int = 64) -> np.ndarray:
    """ECGs of a split through the ECGFounder chain, computed once and cached as ``.npy``.

    Filtering every record on every epoch would dominate a CPU run, so the filtered,
    z-scored (N, 12, 5000) array is written once (atomically) and memory-mapped afterwards.
    """
    path = Path(cache_dir) / f"ecg_{split}.npy"
    if path.is_file():
        return np.load(path, mmap_mode="r")
    raw = SymileMIMIC(root, split, modalities=("ecg",), ecg_preprocess=False)
    first = raw[0]["ecg"].numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")  # one per process: ranks may race here
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(raw), *first.shape))
    for lo in tqdm(range(0, len(raw), chunk), desc=f"ECG preprocessing ({split})", disable=not is_main_process()):
        hi = min(len(raw), lo + chunk)
        arr[lo:hi] = preprocess_ecg(np.stack([raw[i]["ecg"].numpy() for i in range(lo, hi)]))
    arr.flush()
    del arr
    tmp.replace(path)
    return np.load(path, mmap_mode="r")


class ECGArray(Dataset):
    """Items ``{"ecg": (12, T) float32}`` from a preprocessed (N, 12, T) array."""

    def __init__(self, ecg: np.ndarray) -> None:
        self.ecg = ecg

    def __len__(self) -> int:
        return len(self.ecg)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"ecg": torch.from_numpy(np.array(self.ecg[index], dtype=np.float32))}


def _label_names(root: Path) -> list[str]:
    meta = Path(root) / "cohort.json"
    if not meta.is_file() or "ecg_labels" not in load_json(meta):
        raise FileNotFoundError(f"{meta} lists no 'ecg_labels': training the ECG teacher from scratch needs the "
                                "cohort's ECG diagnostic labels; on real data pass --ecgfounder-checkpoint instead")
    return list(load_json(meta)["ecg_labels"])


@register_teacher("ecg")
class ECGTeacherPlugin(TeacherPlugin):
    """Net1D ECG teacher; the embedding is the temporal mean of the last stage (1024-d for ECGFounder).

    Section keys: ``arch`` (``small`` | ``ecgfounder``), ``checkpoint`` (ECGFounder weights) and
    the training keys.
    """

    modality = "12-lead ECG, 10 s at 500 Hz (ECGFounder preprocessing)"
    cli_options = {"--ecgfounder-checkpoint": (
        "checkpoint", "ECGFounder 12_lead_ECGFounder.pth ({'state_dict': ...}) as the ECG teacher")}

    def build(self, root: Path) -> nn.Module:
        if self.section.get("checkpoint"):
            return ecgfounder_12lead(n_classes=ECGFOUNDER_CLASSES)
        arch, n_classes = self.section.get("arch", "small"), len(_label_names(root))
        if arch == "ecgfounder":
            return ecgfounder_12lead(n_classes=n_classes)
        if arch == "small":
            return net1d_small(n_classes=n_classes)
        raise ValueError(f"teachers.ecg.arch must be 'ecgfounder' or 'small', got {arch!r}")

    def load_weights(self, net: nn.Module, path: str | Path) -> None:
        load_ecgfounder_checkpoint(net, path)

    def frozen(self, net: nn.Module) -> Teacher:
        return ECGTeacher(net)

    def dataset(self, root: Path, split: str, cache_dir: Path) -> Dataset:
        return ECGArray(preprocessed_ecg(root, split, cache_dir))

    def training_dataset(self, root: Path, split: str, cache_dir: Path) -> Dataset:
        names = _label_names(root)
        hadm = SymileMIMIC(root, split, modalities=()).hadm_ids
        labels = load_task_labels(root, split, names, hadm_ids=hadm).astype(np.float32)
        return LabelledDataset(self.dataset(root, split, cache_dir), labels, names=names)

    def loss(self, net: nn.Module, batch: Mapping[str, Any]) -> tuple[torch.Tensor, Mapping[str, Any]]:
        return nn.functional.binary_cross_entropy_with_logits(net(batch["ecg"]), batch["label"]), {}

    def describe(self, net: nn.Module) -> dict[str, Any]:
        info = super().describe(net)
        info["arch"] = "ecgfounder" if self.section.get("checkpoint") else self.section.get("arch", "small")
        return info
