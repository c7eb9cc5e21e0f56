"""Dataset wrappers that add row-aligned arrays to the items of a dict-returning dataset.

Stage 2 never runs a teacher: :class:`EmbeddingDataset` attaches the cached teacher
embeddings (``<out>/teachers/<split>/<name>.npy``, read by :func:`load_teacher_embeddings`)
to each item. Linear probes attach task labels with :class:`LabelledDataset`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["EmbeddingDataset", "LabelledDataset", "load_teacher_embeddings"]


def _as_numpy(name: str, value: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    raise ValueError(f"{name} must be a numpy array or torch tensor, got {type(value).__name__}")


class _RowAlignedWrapper(Dataset):
    """A dataset of ``base``'s items, each a copy of the base item to which a subclass adds ``key``."""

    def __init__(self, base: Dataset, key: str) -> None:
        self.base = base
        self.key = key

    def __len__(self) -> int:
        return len(self.base)

    def _base_item(self, index: int) -> dict[str, Any]:
        item = self.base[index]
        if not isinstance(item, Mapping):
            raise ValueError(f"the wrapped dataset must return dict items, got {type(item).__name__}")
        return dict(item)


class EmbeddingDataset(_RowAlignedWrapper):
    """Add ``teacher_embeddings: {name: (D,) float32 tensor}`` to every item of ``base``.

    Args:
        base: a dataset returning dict items (e.g. :class:`pacx.data.SymileMIMIC`).
        embeddings: ``{teacher_name: (N, D) array}`` row-aligned with ``base`` (memory-mapped
            arrays are fine: rows are copied on access).
        key: item key that receives the dict. Defaults to ``"teacher_embeddings"``.

    Raises:
        ValueError: when ``embeddings`` is empty, an array is not 2-D floating, or its row count
            differs from ``len(base)`` (names the teacher, expected and received count).

    Example:
        >>> base = [{"x": torch.zeros(1)} for _ in range(4)]
        >>> ds = EmbeddingDataset(base, {"ecg": np.ones((4, 8), np.float32)})
        >>> ds[0]["teacher_embeddings"]["ecg"].shape
        torch.Size([8])
    """

    def __init__(
        self, base: Dataset, embeddings: Mapping[str, np.ndarray | torch.Tensor], key: str = "teacher_embeddings"
    ) -> None:
        if not embeddings:
            raise ValueError("embeddings must name at least one teacher, got an empty mapping")
        n = len(base)
        self.embeddings: dict[str, np.ndarray] = {}
        for name, value in embeddings.items():
            arr = _as_numpy(f"embeddings[{name!r}]", value)
            if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
                raise ValueError(
                    f"embeddings[{name!r}] must be a (N, D) floating array, got shape {arr.shape} dtype {arr.dtype}"
                )
            if arr.shape[0] != n:
                raise ValueError(f"embeddings[{name!r}] has {arr.shape[0]} rows, expected {n} (len(base))")
            self.embeddings[str(name)] = arr
        super().__init__(base, key)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self._base_item(index)
        item[self.key] = {
            name: torch.from_numpy(np.array(arr[index], dtype=np.float32)) for name, arr in self.embeddings.items()
        }
        return item


class LabelledDataset(_RowAlignedWrapper):
    """Add task labels (and an optional label mask) to every item of ``base``.

    Label dtype: 1-D integer labels are class indices and come out as an int64 scalar tensor;
    all other labels (1-D float, or ``(N, C)`` multi-label/one-hot of any dtype) come out as
    float32 (``(C,)`` per item, or a scalar for 1-D float labels).

    Args:
        base: a dataset returning dict items.
        labels: ``(N,)`` or ``(N, C)`` array row-aligned with ``base``; no NaN (use ``mask``).
        names: optional label names (``C`` of them for 2-D labels, 1 for 1-D), kept as
            ``label_names``.
        mask: optional array of the shape of ``labels``; 1 = use the label, 0 = ignore it. It
            is returned as ``<key>_mask`` float32.
        key: item key of the labels. Defaults to ``"label"``.

    Raises:
        ValueError: on a row-count mismatch, a wrong ``names`` length, NaN labels (names the
            first bad row) or a mask of another shape.

    Example:
        >>> base = [{"x": torch.zeros(1)} for _ in range(3)]
        >>> ds = LabelledDataset(base, np.array([[0, 1], [1, 0], [1, 1]]), names=["a", "b"])
        >>> ds[1]["label"]
        tensor([1., 0.])
    """

    def __init__(
        self,
        base: Dataset,
        labels: np.ndarray | torch.Tensor,
        names: Sequence[str] | None = None,
        mask: np.ndarray | torch.Tensor | None = None,
        key: str = "label",
    ) -> None:
        arr = _as_numpy("labels", labels)
        if arr.ndim not in (1, 2):
            raise ValueError(f"labels must have shape (N,) or (N, C), got {arr.shape}")
        if arr.shape[0] != len(base):
            raise ValueError(f"labels has {arr.shape[0]} rows, expected {len(base)} (len(base))")
        if np.issubdtype(arr.dtype, np.floating) and np.isnan(arr).any():
            row = int(np.argwhere(np.isnan(arr))[0][0])
            raise ValueError(f"labels contain NaN (first at row {row}); pass a mask for missing labels")
        n_names = 1 if arr.ndim == 1 else arr.shape[1]
        if names is not None and len(names) != n_names:
            raise ValueError(f"names must have {n_names} entries for labels of shape {arr.shape}, got {len(names)}")
        self.class_indices = arr.ndim == 1 and (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_)
        self.labels = arr.astype(np.int64 if self.class_indices else np.float32)
        self.label_names = list(names) if names is not None else None
        if mask is not None:
            m = _as_numpy("mask", mask)
            if m.shape != arr.shape:
                raise ValueError(f"mask must have the shape of labels {arr.shape}, got {m.shape}")
            self.mask: np.ndarray | None = m.astype(np.float32)
        else:
            self.mask = None
        super().__init__(base, key)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self._base_item(index)
        item[self.key] = torch.as_tensor(self.labels[index])
        if self.mask is not None:
            item[f"{self.key}_mask"] = torch.as_tensor(self.mask[index])
        return item


def load_teacher_embeddings(
    out_dir: str | os.PathLike, split: str, names: Sequence[str] | None = None, mmap: bool = True
) -> dict[str, np.ndarray]:
    """Read cached teacher embeddings ``<out_dir>/teachers/<split>/<name>.npy``.

    Args:
        out_dir: the run folder holding ``teachers/``.
        split: split name.
        names: teachers to read; ``None`` reads every ``.npy`` in the folder (sorted by name).
        mmap: open memory-mapped instead of loading into memory. Defaults to True. The map is
            copy-on-write (``mmap_mode="c"``): the arrays are writable, so ``torch.from_numpy``
            takes them without torch's "array is not writable" warning, and a write changes
            only the process's copy of a page, never the cached file.

    Returns:
        ``{name: (N, D) array}``.

    Raises:
        FileNotFoundError: when the folder or a named file is missing (names it).
        ValueError: when a file is not a 2-D floating array, or the row counts disagree.
    """
    folder = Path(out_dir) / "teachers" / split
    if not folder.is_dir():
        raise FileNotFoundError(f"teacher embedding folder not found: {folder}")
    if names is None:
        names = sorted(p.stem for p in folder.glob("*.npy"))
        if not names:
            raise FileNotFoundError(f"no teacher embeddings (*.npy) in {folder}")
    out: dict[str, np.ndarray] = {}
    for name in names:
        path = folder / f"{name}.npy"
        if not path.is_file():
            raise FileNotFoundError(f"teacher embedding file not found: {path}")
        arr = np.load(path, mmap_mode="c" if mmap else None, allow_pickle=False)
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"{path}: expected (N, D) float32, got shape {arr.shape} dtype {arr.dtype}")
        out[name] = arr
    rows = {name: arr.shape[0] for name, arr in out.items()}
    if len(set(rows.values())) > 1:
        raise ValueError(f"teacher embeddings in {folder} have different row counts: {rows}")
    return out
