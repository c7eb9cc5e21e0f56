"""CheXpert-style CSVs (``Path, Sex, Age, Frontal/Lateral, AP/PA`` + 14 findings).

Label values: 1 positive, 0 negative, -1 uncertain, blank not mentioned. Blank is read as
negative (0) under every policy (the common convention: a finding the report does not mention
is taken as absent). Uncertain labels follow ``uncertain_policy``:

* ``"ones"`` (U-Ones): -1 -> 1;
* ``"zeros"`` (U-Zeros): -1 -> 0;
* ``"ignore"`` (U-Ignore): -1 -> 0 with ``label_mask`` 0 there, so the loss skips it.

Images are decoded with MONAI (:func:`pacx.data.transforms.load_cxr`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from .csv_classification import _ImageTableDataset, _plain, read_csv_table

__all__ = ["CHEXPERT_FINDINGS", "CheXpertDataset", "chexpert_patient_id"]

CHEXPERT_FINDINGS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
_POLICIES = ("ones", "zeros", "ignore")
_PATIENT = re.compile(r"(patient\d+)")


def chexpert_patient_id(path: str) -> str:
    """The ``patientNNNNN`` component of a CheXpert path.

    Raises:
        ValueError: when the path has no ``patient<digits>`` component.

    Example:
        >>> chexpert_patient_id("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg")
        'patient00001'
    """
    match = _PATIENT.search(str(path))
    if match is None:
        raise ValueError(f"no 'patient<digits>' component in CheXpert path {path!r}")
    return match.group(1)


class CheXpertDataset(_ImageTableDataset):
    """CheXpert images with multi-label findings and an uncertainty policy.

    Items: ``cxr`` ``(3, S, S)`` float32 ImageNet-normalised, ``label`` float32 ``(C,)``,
    ``label_mask`` float32 ``(C,)`` (1 = use; 0 only for uncertain labels under
    ``"ignore"``), ``patient_id`` (``"patientNNNNN"``), ``path`` and ``index``.

    Args:
        csv: ``train.csv``/``valid.csv`` path or a DataFrame with the CheXpert columns.
        root: folder the ``Path`` column is joined onto.
        findings: label columns to use, in output order. Defaults to the 14 findings.
        uncertain_policy: ``"ones"``, ``"zeros"`` or ``"ignore"``.
        frontal_only: keep only ``Frontal/Lateral == "Frontal"`` rows.
        view_positions: keep only rows whose ``AP/PA`` is in this set (e.g. ``("PA",)``);
            ``None`` keeps all.
        strip_components: leading components of ``Path`` to drop before joining, e.g. 1 turns
            ``CheXpert-v1.0-small/train/...`` into ``train/...``.
        image_size: optional output side length.
        transform: optional callable on the normalised ``(3, S, S)`` tensor.

    Raises:
        ValueError: on an unknown column (names it, lists the available ones), an unknown
            policy, a label value other than 1/0/-1/blank (names row and column), a path without
            a patient id, or filters that leave no row.

    Example:
        >>> ds = CheXpertDataset("CheXpert-v1.0-small/train.csv", "/data", strip_components=0,
        ...                      frontal_only=True, uncertain_policy="ignore")  # doctest: +SKIP
        >>> ds[0]["label"].shape, ds[0]["patient_id"]  # doctest: +SKIP
        (torch.Size([14]), 'patient00001')
    """

    def __init__(
        self,
        csv: str | os.PathLike | pd.DataFrame,
        root: str | os.PathLike,
        findings: Sequence[str] = CHEXPERT_FINDINGS,
        uncertain_policy: str = "ones",
        frontal_only: bool = False,
        view_positions: Sequence[str] | None = None,
        strip_components: int = 0,
        image_size: int | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if uncertain_policy not in _POLICIES:
            raise ValueError(f"uncertain_policy must be one of {_POLICIES}, got {uncertain_policy!r}")
        findings = [findings] if isinstance(findings, str) else list(findings)
        needed = ["Path", *findings]
        if frontal_only:
            needed.append("Frontal/Lateral")
        if view_positions is not None:
            needed.append("AP/PA")
        table, source = read_csv_table(csv, needed, what="CheXpert CSV")
        raw = table[findings].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        cells = table[findings]
        text_blank = cells.isna().to_numpy() | cells.astype(str).apply(lambda c: c.str.strip() == "").to_numpy()
        bad = ~(np.isin(raw, (1.0, 0.0, -1.0)) | text_blank)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(
                f"{source}: {findings[col]!r} must be 1, 0, -1 or blank, "
                f"got {_plain(table[findings[col]].iloc[row])} at row {row}"
            )
        keep = np.ones(len(table), dtype=bool)
        if frontal_only:
            keep &= (table["Frontal/Lateral"].astype(str).str.strip().str.lower() == "frontal").to_numpy()
        if view_positions is not None:
            wanted = {str(v).strip().upper() for v in view_positions}
            keep &= table["AP/PA"].astype(str).str.strip().str.upper().isin(wanted).to_numpy()
        if not keep.any():
            raise ValueError(
                f"{source}: no rows left after frontal_only={frontal_only}, view_positions={view_positions}"
            )
        self.source_rows = np.flatnonzero(keep)
        raw = np.where(text_blank, 0.0, raw)[keep]
        uncertain = raw == -1.0
        self.labels = np.where(uncertain, 1.0 if uncertain_policy == "ones" else 0.0, raw).astype(np.float32)
        mask = ~uncertain if uncertain_policy == "ignore" else np.ones_like(uncertain)
        self.label_mask = mask.astype(np.float32)
        self.findings = findings
        self.uncertain_policy = uncertain_policy
        rel_paths = table["Path"].astype(str).to_numpy()[keep].tolist()
        self._set_images(root, rel_paths, strip_components, image_size, transform)
        self.patient_ids = []
        for row, rel in zip(self.source_rows, self.rel_paths):
            try:
                self.patient_ids.append(chexpert_patient_id(rel))
            except ValueError as err:
                raise ValueError(f"{source}: row {row}: {err}") from None

    def __getitem__(self, index: int) -> dict[str, Any]:
        labels = {
            "label": torch.from_numpy(self.labels[index].copy()),
            "label_mask": torch.from_numpy(self.label_mask[index].copy()),
        }
        return self._item(index, labels)
