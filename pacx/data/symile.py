"""Symile-MIMIC arrays on disk (real release or the synthetic cohort) as a map-style dataset.

Layout read (PhysioNet ``symile-mimic/1.0.0`` and :mod:`pacx.data.synthetic` alike)::

    <root>/data_npy/<split>/cxr_<split>.npy               (N, 3, S, S) float32, ImageNet-normalised
    <root>/data_npy/<split>/ecg_<split>.npy               (N, 1, T, 12) float32, MIMIC lead order
    <root>/data_npy/<split>/labs_percentiles_<split>.npy  (N, 50) float in [0, 1]
    <root>/data_npy/<split>/labs_missingness_<split>.npy  (N, 50) int {0, 1}, 1 = OBSERVED
    <root>/data_npy/<split>/hadm_id_<split>.npy           (N,) int

Arrays are opened with ``np.load(mmap_mode="r")`` on first access in each process (the
memory maps are dropped when the dataset is pickled into a spawned DataLoader worker), so a
320-pixel, 10,000-row training split is never read whole into memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .ecg import mimic_to_ecgfounder, preprocess_ecg
from .transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["SYMILE_MODALITIES", "SymileMIMIC", "load_task_labels", "resolve_symile_root"]

SYMILE_MODALITIES: tuple[str, ...] = ("cxr", "ecg", "labs")
NUM_LABS = 50
ECG_LEADS = 12
_CHECK_ROWS = 65536  # rows per chunk when scanning lab arrays for invalid values


def resolve_symile_root(root: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """Find the cohort root (the folder holding ``data_npy``) and the split folder.

    Args:
        root: the cohort root (contains ``data_npy/``) or the ``data_npy`` folder itself.
        split: split name, e.g. ``"train"``.

    Returns:
        ``(cohort_root, split_dir)``.

    Raises:
        FileNotFoundError: when neither ``root/data_npy/split`` nor ``root/split`` (with ``root``
            named ``data_npy``) exists; the message lists the folders tried.
    """
    root = Path(root)
    tried = [root / "data_npy" / split]
    if tried[0].is_dir():
        return root, tried[0]
    if root.name == "data_npy":
        tried.append(root / split)
        if tried[1].is_dir():
            return root.parent, tried[1]
    hint = ""
    if (root / "data_npy").is_dir():
        found = sorted(p.name for p in (root / "data_npy").iterdir() if p.is_dir())
        hint = f"; splits present: {found}"
    raise FileNotFoundError(f"Symile split folder not found for split={split!r}; tried {[str(t) for t in tried]}{hint}")


def _open(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"Symile array file not found: {path}")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        raise ValueError(f"cannot read {path} as a plain .npy array: {err}") from err


class SymileMIMIC(Dataset):
    """Symile-MIMIC split as a map-style dataset of dicts.

    Items (only the requested modalities are read):

    * ``cxr``: ``(3, S, S)`` float32 ImageNet-normalised (resized with anti-aliasing to
      ``image_size`` when given, then passed through ``cxr_transform``). A documented
      storage-saving variant is also read: ``uint8`` arrays ``(N, 1, S, S)`` or ``(N, 3, S, S)``
      holding 0..255 grayscale, converted to [0, 1], replicated to 3 channels and normalised.
    * ``ecg``: ``(12, T)`` float32 in ECGFounder lead order (aVF/aVL swapped from the stored
      MIMIC order) and, when ``ecg_preprocess``, notch + band-pass + median baseline removal +
      global z-score (:func:`pacx.data.ecg.preprocess_ecg`, 500 Hz).
    * ``labs``: ``(50,)`` float32 percentiles; ``labs_observed``: ``(50,)`` float32, 1 = observed
      (read from ``labs_missingness_<split>.npy``, whose 1 also means observed).
    * ``hadm_id`` (int), ``patient_id`` (int: ``subject_id`` from ``tasks/<split>.csv`` or the
      Symile split CSV ``<split>.csv`` when present, else the ``hadm_id``, since Symile splits
      hold one admission per patient), ``index`` (int row number), and one entry per
      ``extra_arrays`` key.

    Args:
        root: cohort root containing ``data_npy/`` (or the ``data_npy`` folder itself).
        split: split name (``"train"``, ``"val"``, ``"test"``, ...).
        modalities: subset of ``("cxr", "ecg", "labs")`` to read.
        image_size: optional CXR output side length.
        cxr_transform: optional callable applied to the ``(3, S, S)`` normalised tensor, e.g.
            :func:`pacx.data.transforms.stage2_train_transform`.
        ecg_preprocess: apply the ECGFounder filter chain and z-score. Defaults to True.
        notch_hz: mains frequency for the notch (50 as ECGFounder; 60 for US mains; None skips).
        extra_arrays: more row-aligned arrays to return. A sequence of names reads
            ``data_npy/<split>/<name>_<split>.npy`` (e.g. ``"label"``, ``"label_hadm_id"``); a
            mapping ``{item_key: path}`` reads ``path`` (``{split}`` is substituted; relative
            paths are relative to the cohort root), e.g.
            ``{"mask": "tasks/lung_mask_{split}.npy"}``. Rows are returned as tensors of the
            stored dtype.

    Raises:
        FileNotFoundError: when the split folder or a needed file is missing (names the file).
        ValueError: on a wrong ndim/shape/dtype (names the file, expected and received), a row
            count that differs between files (names the files and counts), labs outside [0, 1]
            or NaN (names the file and first bad row), an observed mask not in {0, 1}, or an
            unknown modality.

    Example:
        >>> ds = SymileMIMIC("cohort", "train", modalities=("cxr", "labs"), image_size=224)  # doctest: +SKIP
        >>> item = ds[0]  # doctest: +SKIP
        >>> item["cxr"].shape, item["labs"].shape, item["labs_observed"].shape  # doctest: +SKIP
        (torch.Size([3, 224, 224]), torch.Size([50]), torch.Size([50]))
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        modalities: Sequence[str] = SYMILE_MODALITIES,
        image_size: int | None = None,
        cxr_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        ecg_preprocess: bool = True,
        notch_hz: float | None = 50.0,
        extra_arrays: Sequence[str] | Mapping[str, str | os.PathLike] | None = None,
    ) -> None:
        if isinstance(modalities, str):
            modalities = (modalities,)
        unknown = [m for m in modalities if m not in SYMILE_MODALITIES]
        if unknown:
            raise ValueError(f"modalities must be a subset of {SYMILE_MODALITIES}, got unknown {unknown}")
        if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
            raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
        if cxr_transform is not None and not callable(cxr_transform):
            raise ValueError(f"cxr_transform must be callable or None, got {type(cxr_transform).__name__}")
        self.root, self.split_dir = resolve_symile_root(root, split)
        self.split = split
        self.modalities = tuple(dict.fromkeys(modalities))
        self.image_size = image_size
        self.cxr_transform = cxr_transform
        self.ecg_preprocess = bool(ecg_preprocess)
        self.notch_hz = notch_hz

        self.files: dict[str, Path] = {"hadm_id": self._split_file("hadm_id")}
        if "cxr" in self.modalities:
            self.files["cxr"] = self._split_file("cxr")
        if "ecg" in self.modalities:
            self.files["ecg"] = self._split_file("ecg")
        if "labs" in self.modalities:
            self.files["labs"] = self._split_file("labs_percentiles")
            self.files["labs_observed"] = self._split_file("labs_missingness")
        self.extra_keys = self._add_extra_files(extra_arrays)
        self._arrays: dict[str, np.ndarray] = {}
        self._owner_pid = os.getpid()
        self._validate()

    # -- files -----------------------------------------------------------------------------
    def _split_file(self, stem: str) -> Path:
        return self.split_dir / f"{stem}_{self.split}.npy"

    def _add_extra_files(self, extra: Sequence[str] | Mapping[str, str | os.PathLike] | None) -> tuple[str, ...]:
        if extra is None:
            return ()
        if isinstance(extra, str):
            extra = (extra,)
        if isinstance(extra, Mapping):
            pairs = []
            for key, template in extra.items():
                path = Path(str(template).format(split=self.split))
                pairs.append((str(key), path if path.is_absolute() else self.root / path))
        else:
            pairs = [(str(name), self._split_file(str(name))) for name in extra]
        reserved = set(self.files) | {"cxr", "ecg", "labs", "labs_observed", "hadm_id", "patient_id", "index"}
        for key, path in pairs:
            if key in reserved:
                raise ValueError(f"extra_arrays key {key!r} clashes with a built-in item key {sorted(reserved)}")
            self.files[key] = path
        return tuple(key for key, _ in pairs)

    def _validate(self) -> None:
        arrays = {key: _open(path) for key, path in self.files.items()}
        self._check_layout(arrays)
        counts = {key: int(arr.shape[0]) for key, arr in arrays.items()}
        if len(set(counts.values())) > 1:
            detail = ", ".join(f"{self.files[k].name}: N={n}" for k, n in counts.items())
            raise ValueError(f"Symile arrays of split {self.split!r} have different row counts: {detail}")
        self._length = counts["hadm_id"]
        if "labs" in arrays:
            self._check_labs(arrays["labs"], arrays["labs_observed"])
        self.hadm_ids = np.asarray(arrays["hadm_id"], dtype=np.int64).copy()
        self.patient_ids = _patient_ids(self.root, self.split, self.hadm_ids)

    def _check_layout(self, arrays: Mapping[str, np.ndarray]) -> None:
        def fail(key: str, expected: str, arr: np.ndarray) -> None:
            raise ValueError(
                f"{self.files[key]}: expected {expected}, got shape {tuple(arr.shape)} dtype {arr.dtype}"
            )

        hadm = arrays["hadm_id"]
        if hadm.ndim != 1 or not np.issubdtype(hadm.dtype, np.integer):
            fail("hadm_id", "(N,) integer", hadm)
        if "cxr" in arrays:
            cxr = arrays["cxr"]
            float_ok = cxr.dtype == np.float32 and cxr.ndim == 4 and cxr.shape[1] == 3
            uint8_ok = cxr.dtype == np.uint8 and cxr.ndim == 4 and cxr.shape[1] in (1, 3)
            if not (float_ok or uint8_ok) or cxr.shape[2] < 1 or cxr.shape[3] < 1:
                fail("cxr", "(N, 3, H, W) float32 or (N, 1|3, H, W) uint8", cxr)
        if "ecg" in arrays:
            ecg = arrays["ecg"]
            if ecg.dtype != np.float32 or ecg.ndim != 4 or ecg.shape[1] != 1 or ecg.shape[3] != ECG_LEADS:
                fail("ecg", f"(N, 1, T, {ECG_LEADS}) float32", ecg)
        if "labs" in arrays:
            labs, observed = arrays["labs"], arrays["labs_observed"]
            if labs.ndim != 2 or labs.shape[1] != NUM_LABS or not np.issubdtype(labs.dtype, np.floating):
                fail("labs", f"(N, {NUM_LABS}) float32", labs)
            ok_dtype = np.issubdtype(observed.dtype, np.integer) or observed.dtype == np.bool_
            ok_dtype = ok_dtype or np.issubdtype(observed.dtype, np.floating)
            if observed.ndim != 2 or observed.shape[1] != NUM_LABS or not ok_dtype:
                fail("labs_observed", f"(N, {NUM_LABS}) int64 (1 = observed)", observed)

    def _check_labs(self, labs: np.ndarray, observed: np.ndarray) -> None:
        for lo in range(0, labs.shape[0], _CHECK_ROWS):
            chunk = np.asarray(labs[lo : lo + _CHECK_ROWS])
            bad = ~((chunk >= 0.0) & (chunk <= 1.0))  # NaN compares False, so it is caught here
            if bad.any():
                row, col = np.argwhere(bad)[0]
                raise ValueError(
                    f"{self.files['labs']}: lab percentiles must be in [0, 1] without NaN; "
                    f"first bad value {chunk[row, col].item()!r} at row {lo + row}, column {col}"
                )
            obs = np.asarray(observed[lo : lo + _CHECK_ROWS])
            bad = (obs != 0) & (obs != 1)
            if bad.any():
                row, col = np.argwhere(bad)[0]
                raise ValueError(
                    f"{self.files['labs_observed']}: observed mask must be 0/1; "
                    f"first bad value {obs[row, col].item()!r} at row {lo + row}, column {col}"
                )

    # -- lazy access -------------------------------------------------------------------------
    def _array(self, key: str) -> np.ndarray:
        if self._owner_pid != os.getpid():
            # Forked worker: reopen so that every process owns its file handles.
            self._arrays, self._owner_pid = {}, os.getpid()
        arr = self._arrays.get(key)
        if arr is None:
            arr = self._arrays[key] = np.load(self.files[key], mmap_mode="r", allow_pickle=False)
        return arr

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = {}  # memory maps would otherwise be pickled as full in-memory copies
        return state

    def __len__(self) -> int:
        return self._length

    def _cxr(self, index: int) -> torch.Tensor:
        raw = np.array(self._array("cxr")[index])  # copy out of the memory map
        if raw.dtype == np.uint8:
            x = torch.from_numpy(raw).to(torch.float32).div_(255.0)
            if x.shape[0] == 1:
                x = x.expand(3, -1, -1)
            mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
            std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
            x = (x - mean) / std
        else:
            x = torch.from_numpy(raw)
        if self.image_size is not None and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            size = (self.image_size, self.image_size)
            x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        if self.cxr_transform is not None:
            x = self.cxr_transform(x)
        return x.contiguous()

    def _ecg(self, index: int) -> torch.Tensor:
        raw = np.array(self._array("ecg")[index, 0]).T  # (T, 12) -> (12, T)
        x = mimic_to_ecgfounder(raw)
        if self.ecg_preprocess:
            x = preprocess_ecg(x, fs=500.0, notch_hz=self.notch_hz)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -self._length <= index < self._length:
            raise IndexError(f"index {index} out of range for split {self.split!r} of length {self._length}")
        index = int(index) % self._length
        item: dict[str, Any] = {"index": index, "hadm_id": int(self.hadm_ids[index]),
                                "patient_id": int(self.patient_ids[index])}
        if "cxr" in self.modalities:
            item["cxr"] = self._cxr(index)
        if "ecg" in self.modalities:
            item["ecg"] = self._ecg(index)
        if "labs" in self.modalities:
            item["labs"] = torch.from_numpy(np.array(self._array("labs")[index], dtype=np.float32))
            item["labs_observed"] = torch.from_numpy(np.array(self._array("labs_observed")[index], dtype=np.float32))
        for key in self.extra_keys:
            item[key] = torch.as_tensor(np.array(self._array(key)[index]))
        return item

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
            f"modalities={self.modalities})"
        )


def _patient_ids(root: Path, split: str, hadm_ids: np.ndarray) -> np.ndarray:
    """``subject_id`` per row from ``tasks/<split>.csv`` or the Symile split CSV ``<split>.csv``.

    The arrays hold only ``hadm_id``; Symile-MIMIC splits are patient-disjoint with one admission
    per row, so without a CSV the admission id stands in for the patient id.
    """
    for path in (root / "tasks" / f"{split}.csv", root / f"{split}.csv"):
        if not path.is_file():
            continue
        table = pd.read_csv(path, usecols=lambda c: c in ("hadm_id", "subject_id"))
        if {"hadm_id", "subject_id"} <= set(table.columns):
            mapping = dict(zip(table["hadm_id"].astype(np.int64), table["subject_id"].astype(np.int64)))
            missing = [int(h) for h in hadm_ids if int(h) not in mapping]
            if missing:
                raise ValueError(f"{path}: {len(missing)} hadm_ids of split {split!r} have no subject_id, "
                                 f"e.g. {missing[:5]}")
            return np.array([mapping[int(h)] for h in hadm_ids], dtype=np.int64)
    return hadm_ids.copy()


def load_task_labels(
    root: str | os.PathLike,
    split: str,
    columns: Sequence[str],
    hadm_ids: np.ndarray | Sequence[int] | None = None,
) -> np.ndarray:
    """Read task label columns of ``<root>/tasks/<split>.csv``, aligned to ``hadm_ids``.

    Args:
        root: cohort root (the folder holding ``tasks/`` and ``data_npy/``).
        split: split name.
        columns: label column names, in the order wanted.
        hadm_ids: the dataset's ``hadm_id`` order (e.g. ``SymileMIMIC(...).hadm_ids``); rows
            are re-ordered to match it. ``None`` keeps the file order.

    Returns:
        ``(N, len(columns))`` float32 array.

    Raises:
        FileNotFoundError: when the CSV is missing.
        ValueError: on an unknown column (lists the available ones), a ``hadm_id`` absent from
            the CSV or duplicated in it, or a missing label value.
    """
    path = Path(root) / "tasks" / f"{split}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"task label file not found: {path}")
    if isinstance(columns, str):
        columns = [columns]
    table = pd.read_csv(path)
    unknown = [c for c in columns if c not in table.columns]
    if unknown:
        raise ValueError(f"{path}: unknown label columns {unknown}; available: {list(table.columns)}")
    if hadm_ids is not None:
        if "hadm_id" not in table.columns:
            raise ValueError(f"{path}: no 'hadm_id' column to align on; available: {list(table.columns)}")
        if table["hadm_id"].duplicated().any():
            dup = table.loc[table["hadm_id"].duplicated(), "hadm_id"].iloc[0]
            raise ValueError(f"{path}: hadm_id {dup} appears more than once")
        wanted = np.asarray(hadm_ids, dtype=np.int64)
        table = table.set_index("hadm_id")
        absent = np.setdiff1d(wanted, table.index.to_numpy())
        if absent.size:
            raise ValueError(f"{path}: {absent.size} hadm_ids are missing from the file, e.g. {absent[:5].tolist()}")
        table = table.loc[wanted]
    values = table[list(columns)].to_numpy(dtype=np.float64)
    if np.isnan(values).any():
        row, col = np.argwhere(np.isnan(values))[0]
        raise ValueError(f"{path}: missing value in column {columns[col]!r} at row {row}")
    return values.astype(np.float32)
