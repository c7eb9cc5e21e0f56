"""Generic image classification from a CSV: one row per image, labels in columns.

Covers the downstream benchmarks that ship a table (NIH ChestX-ray14, VinDr-CXR, MedMod,
COVID sets, ...) once converted to one path column plus label columns:

* ``task="binary"``: one 0/1 label column -> ``label`` float32 of shape ``(1,)``;
* ``task="multilabel"``: several 0/1 columns -> ``label`` float32 ``(C,)``;
* ``task="multiclass"``: one column of class values (names or ints, mapped to indices through
  ``classes``) OR several one-hot columns -> ``label`` int64 scalar.

Images are decoded with MONAI (:func:`pacx.data.transforms.load_cxr`): ``(3, S, S)``
ImageNet-normalised.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from pacx.io import read_csv

from .transforms import load_cxr

__all__ = ["CSVImageDataset", "join_image_path", "read_csv_table"]

_TASKS = ("binary", "multilabel", "multiclass")


def _plain(value: Any) -> str:
    """repr of a table cell without numpy's type wrapper (``2.0``, not ``np.float64(2.0)``)."""
    return repr(value.item() if hasattr(value, "item") else value)


def join_image_path(root: str | os.PathLike | None, relative: str, strip_components: int = 0) -> Path:
    """Join a CSV path onto ``root`` after dropping its first ``strip_components`` parts.

    Both ``/`` and ``\\`` separators are accepted. E.g. ``join_image_path("/data/chexpert",
    "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg", 1)`` gives
    ``/data/chexpert/train/patient00001/study1/view1_frontal.jpg``.

    Args:
        root: folder the CSV paths are relative to (``None``: use the path as is).
        relative: the CSV path.
        strip_components: leading components to drop (like ``tar --strip-components``).

    Returns:
        The joined path.

    Raises:
        ValueError: when ``strip_components`` is negative or leaves nothing of the path.
    """
    if strip_components < 0:
        raise ValueError(f"strip_components must be >= 0, got {strip_components}")
    parts = PurePosixPath(str(relative).replace("\\", "/")).parts
    if strip_components:
        if len(parts) <= strip_components:
            raise ValueError(f"cannot strip {strip_components} components from path {relative!r}")
        parts = parts[strip_components:]
    tail = Path(*parts)
    return tail if root is None else Path(root) / tail


def read_csv_table(
    csv: str | os.PathLike | pd.DataFrame, needed: Sequence[str], what: str = "CSV"
) -> tuple[pd.DataFrame, str]:
    """Load a CSV (or take a DataFrame) and check that ``needed`` columns exist.

    Returns:
        ``(table, description)`` where description names the file for messages.

    Raises:
        FileNotFoundError: when the file is missing.
        ValueError: when the file is empty or malformed, has no data row, or lacks a column;
            the message names the file (and the column, listing the available ones).
    """
    if isinstance(csv, pd.DataFrame):
        table, source = csv.reset_index(drop=True), f"{what} DataFrame"
    else:
        table, source = read_csv(csv, f"{what} file"), f"{what} {csv}"
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(f"{source}: unknown column(s) {missing}; available columns: {list(table.columns)}")
    if table.empty:
        raise ValueError(f"{source}: no rows (only the header {list(table.columns)})")
    return table, source


def _binary_matrix(table: pd.DataFrame, columns: Sequence[str], source: str) -> np.ndarray:
    values = table[list(columns)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isin(values, (0.0, 1.0))  # NaN and non-numeric text are caught too
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"{source}: label column {columns[col]!r} must hold 0/1, "
            f"got {_plain(table[columns[col]].iloc[row])} at row {row}"
        )
    return values.astype(np.float32)


class _ImageTableDataset(Dataset):
    """Rows of a table of CXR files: the reading shared by :class:`CSVImageDataset` and
    :class:`~pacx.data.CheXpertDataset`.

    A subclass checks its table and labels, sets ``patient_ids`` (one per row), calls
    :meth:`_set_images` and builds its items with :meth:`_item`.
    """

    patient_ids: list[str]

    def _set_images(
        self,
        root: str | os.PathLike | None,
        rel_paths: list[str],
        strip_components: int,
        image_size: int | None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None,
    ) -> None:
        self.rel_paths = rel_paths
        self.paths = [join_image_path(root, p, strip_components) for p in rel_paths]
        self.image_size = image_size
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def _item(self, index: int, labels: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The decoded (and transformed) image, ``labels``, then ``patient_id``, ``path`` and ``index``."""
        path = self.paths[index]
        image = load_cxr(path, self.image_size)
        if self.transform is not None:
            image = self.transform(image)
        return {"cxr": image, **labels, "patient_id": self.patient_ids[index], "path": str(path), "index": int(index)}


class CSVImageDataset(_ImageTableDataset):
    """Image classification dataset read from a CSV table.

    Items: ``cxr`` ``(3, S, S)`` float32, ``label`` (see the module docstring), ``patient_id``
    (str; the path when there is no patient column, i.e. each image is its own patient),
    ``path`` (str) and ``index`` (int). Labels are checked at construction; image files are
    decoded on access (an undecodable file raises a ``ValueError`` naming it).

    Args:
        csv: CSV file or DataFrame.
        image_root: folder the path column is relative to (``None``: paths are used as is).
        path_column: column with image paths. Defaults to ``"path"``.
        label_columns: one column name or several.
        task: ``"binary"``, ``"multilabel"`` or ``"multiclass"``.
        patient_column: optional column with patient ids (for patient-level splits).
        classes: for multi-class with one column, the class values in index order (default:
            sorted unique values). Ignored otherwise.
        strip_components: leading path components to drop before joining (see
            :func:`join_image_path`).
        image_size: optional output side length (resized on load).
        transform: optional callable applied to the normalised ``(3, S, S)`` tensor.

    Raises:
        ValueError: on an unknown column (names it and lists the available ones), an unknown
            ``task``, a label that is not 0/1 (names row and column), a one-hot row without
            exactly one 1, or a class value missing from ``classes``.

    Example:
        >>> ds = CSVImageDataset("nih.csv", "images", "Image Index",
        ...                      ["Effusion", "Mass"], "multilabel")  # doctest: +SKIP
        >>> ds[0]["label"]  # doctest: +SKIP
        tensor([0., 1.])
    """

    def __init__(
        self,
        csv: str | os.PathLike | pd.DataFrame,
        image_root: str | os.PathLike | None,
        path_column: str = "path",
        label_columns: str | Sequence[str] = "label",
        task: str = "binary",
        patient_column: str | None = None,
        classes: Sequence[Any] | None = None,
        strip_components: int = 0,
        image_size: int | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if task not in _TASKS:
            raise ValueError(f"task must be one of {_TASKS}, got {task!r}")
        label_columns = [label_columns] if isinstance(label_columns, str) else list(label_columns)
        if not label_columns:
            raise ValueError("label_columns must name at least one column")
        if task == "binary" and len(label_columns) != 1:
            raise ValueError(f"task='binary' needs exactly one label column, got {label_columns}")
        needed = [path_column, *label_columns] + ([patient_column] if patient_column else [])
        table, source = read_csv_table(csv, needed)
        self.source = source
        self.task = task
        self.label_names = label_columns
        self.classes: list[Any] | None = None
        if task == "multiclass" and len(label_columns) == 1:
            column = table[label_columns[0]]
            if column.isna().any():
                row = int(np.flatnonzero(column.isna().to_numpy())[0])
                raise ValueError(f"{source}: missing class in column {label_columns[0]!r} at row {row}")
            self.classes = list(classes) if classes is not None else sorted(column.unique().tolist())
            lookup = {value: i for i, value in enumerate(self.classes)}
            unknown = ~column.isin(list(lookup))
            if unknown.any():
                row = int(np.flatnonzero(unknown.to_numpy())[0])
                raise ValueError(
                    f"{source}: class {_plain(column.iloc[row])} at row {row} is not in classes {self.classes}"
                )
            self.labels = column.map(lookup).to_numpy(dtype=np.int64)
        elif task == "multiclass":
            onehot = _binary_matrix(table, label_columns, source)
            count = onehot.sum(axis=1)
            if (count != 1).any():
                row = int(np.flatnonzero(count != 1)[0])
                raise ValueError(
                    f"{source}: one-hot row {row} has {int(count[row])} ones in {label_columns}, expected 1"
                )
            self.classes = list(label_columns)
            self.labels = onehot.argmax(axis=1).astype(np.int64)
        else:
            self.labels = _binary_matrix(table, label_columns, source)
        self._set_images(image_root, table[path_column].astype(str).tolist(), strip_components, image_size, transform)
        if patient_column:
            self.patient_ids = table[patient_column].astype(str).tolist()
        else:
            self.patient_ids = [str(p) for p in self.rel_paths]

    @property
    def num_classes(self) -> int:
        """Number of outputs a probe needs (label columns, or classes for multi-class)."""
        return len(self.classes) if self.classes is not None else len(self.label_names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._item(index, {"label": torch.as_tensor(self.labels[index])})
