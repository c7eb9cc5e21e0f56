"""Seven bedside vital signs per admission: the on-disk arrays, their dataset, and MIMIC-IV extraction.

Layout (next to the Symile-MIMIC arrays of a split; the synthetic cohort writes it too)::

    <root>/data_npy/<split>/vitals_<split>.npy           (N, 7) float32 train-split percentiles in [0, 1];
                                                         missing = the train mean percentile
    <root>/data_npy/<split>/vitals_observed_<split>.npy  (N, 7) int64, 1 = observed
    <root>/data_npy/<split>/vitals_raw_<split>.npy       (N, 7) float32 physical units, NaN = missing

Columns (:data:`VITAL_NAMES`, units :data:`VITAL_UNITS`): heart rate, systolic and diastolic
blood pressure, SpO2, respiratory rate, temperature, weight. The percentiles are those of the
labs (:class:`pacx.data.labs.LabPercentiles`: the fraction of observed TRAIN values ``<= x``),
so a mask-aware lab encoder reads vitals unchanged.

Extraction from MIMIC-IV (:func:`extract_admission_vitals`), per admission (``hadm_id``):

* ``icu/chartevents`` rows of the itemids in :data:`CHARTEVENTS_ITEMIDS` (MetaVision ids, as
  used by the MIMIC code repository's vital-sign concepts), matched on ``hadm_id``; Fahrenheit
  temperatures are converted to Celsius.
* ``hosp/omr`` rows (``Blood Pressure*`` as ``"systolic/diastolic"``, ``Weight (Lbs)``
  converted to kg), which carry no ``hadm_id``: they are joined through ``hosp/admissions`` on
  ``subject_id`` and a ``chartdate`` whose day overlaps the window.
* Rule: the window is ``admittime +- window_hours`` (24 h, both ends inclusive, as Symile-MIMIC
  for labs). Values outside :data:`PLAUSIBLE_RANGES` (after unit conversion) are dropped as
  charting errors. For each vital the EARLIEST charted value in the window is kept (ties: the
  itemid listed first, then file order). ``omr`` only fills a vital that chartevents lack in
  the window (its dates have no time of day, so they cannot be ordered against charted times);
  among ``omr`` rows the earliest ``chartdate``, then the lowest ``seq_num``, wins.
* An unparsable date, ``valuenum`` or ``hadm_id`` is an error naming the file, the column and
  the row; an omr ``result_value`` that is not a number (or ``"a/b"`` for a pressure) is free
  text and skipped.

:func:`write_vitals_arrays` then aligns the table to each split's ``hadm_id`` file and writes
the three arrays, with percentiles fitted on the train split only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from pacx.io import atomic_write, read_csv

from .labs import LabPercentiles
from .symile import resolve_symile_root

__all__ = [
    "CHARTEVENTS_ITEMIDS",
    "OMR_RESULT_NAMES",
    "PLAUSIBLE_RANGES",
    "VITAL_ITEMIDS",
    "VITAL_NAMES",
    "VITAL_UNITS",
    "VitalsDataset",
    "extract_admission_vitals",
    "fit_vitals_percentiles",
    "write_vitals_arrays",
]

VITAL_NAMES: tuple[str, ...] = (
    "heart_rate", "systolic_bp", "diastolic_bp", "spo2", "resp_rate", "temperature", "weight",
)
VITAL_UNITS: tuple[str, ...] = ("bpm", "mmHg", "mmHg", "%", "breaths/min", "degC", "kg")
NUM_VITALS = len(VITAL_NAMES)

_LBS_TO_KG = 0.45359237
# itemid -> (vital, stored unit when it is not the one of VITAL_UNITS); per vital, listed in
# tie-break order.
CHARTEVENTS_ITEMIDS: dict[int, tuple[str, str | None]] = {
    220045: ("heart_rate", None),  # Heart Rate
    220179: ("systolic_bp", None),  # Non Invasive Blood Pressure systolic
    220050: ("systolic_bp", None),  # Arterial Blood Pressure systolic
    225309: ("systolic_bp", None),  # ART BP Systolic
    220180: ("diastolic_bp", None),  # Non Invasive Blood Pressure diastolic
    220051: ("diastolic_bp", None),  # Arterial Blood Pressure diastolic
    225310: ("diastolic_bp", None),  # ART BP Diastolic
    220277: ("spo2", None),  # O2 saturation pulseoxymetry
    220210: ("resp_rate", None),  # Respiratory Rate
    224690: ("resp_rate", None),  # Respiratory Rate (Total)
    223762: ("temperature", None),  # Temperature Celsius
    223761: ("temperature", "fahrenheit"),  # Temperature Fahrenheit
    226512: ("weight", None),  # Admission Weight (Kg)
    224639: ("weight", None),  # Daily Weight (kg)
}
# Column identity for the percentile helper: the first chartevents itemid of each vital.
VITAL_ITEMIDS: tuple[int, ...] = tuple(
    next(i for i, (name, _) in CHARTEVENTS_ITEMIDS.items() if name == vital) for vital in VITAL_NAMES
)
# omr result names read, in tie-break order (orthostatic standing pressures are left out).
OMR_RESULT_NAMES: dict[str, tuple[str, ...]] = {
    "blood_pressure": ("Blood Pressure", "Blood Pressure Sitting", "Blood Pressure Lying"),
    "weight": ("Weight (Lbs)",),
}
# Inclusive physical ranges (after conversion); values outside are charting errors.
PLAUSIBLE_RANGES: dict[str, tuple[float, float]] = {
    "heart_rate": (20.0, 300.0),
    "systolic_bp": (40.0, 300.0),
    "diastolic_bp": (10.0, 200.0),
    "spo2": (50.0, 100.0),
    "resp_rate": (2.0, 80.0),
    "temperature": (25.0, 45.0),
    "weight": (20.0, 400.0),
}

_ADMISSION_COLUMNS = ("subject_id", "hadm_id", "admittime")
_CHART_COLUMNS = ("hadm_id", "charttime", "itemid", "valuenum")
_OMR_COLUMNS = ("subject_id", "chartdate", "seq_num", "result_name", "result_value")
_CHUNK_ROWS = 2_000_000


# ----------------------------------------------------------------------------------------------
# Dataset over the arrays
# ----------------------------------------------------------------------------------------------
class VitalsDataset(Dataset):
    """The vitals arrays of one split as a map-style dataset of dicts.

    Items: ``vitals`` ``(7,)`` float32 percentiles in [0, 1], ``vitals_observed`` ``(7,)``
    float32 (1 = observed), ``hadm_id`` (int), ``index`` (int row number). The arrays are small
    and read whole at construction, where they are validated.

    Args:
        root: cohort root containing ``data_npy/`` (or the ``data_npy`` folder itself).
        split: split name, e.g. ``"train"``.

    Raises:
        FileNotFoundError: when the split folder or one of its three files is missing.
        ValueError: on a wrong shape or dtype (names the file, the expected and the received
            layout), different row counts, a percentile outside [0, 1] or NaN, or an observed
            flag not in {0, 1} (names the file and the first bad row and column).

    Example:
        >>> ds = VitalsDataset("cohort", "train")  # doctest: +SKIP
        >>> item = ds[0]  # doctest: +SKIP
        >>> item["vitals"].shape, item["vitals_observed"].shape  # doctest: +SKIP
        (torch.Size([7]), torch.Size([7]))
    """

    def __init__(self, root: str | os.PathLike, split: str) -> None:
        self.root, split_dir = resolve_symile_root(root, split)
        self.split = split
        self.files = {stem: split_dir / f"{stem}_{split}.npy" for stem in ("vitals", "vitals_observed", "hadm_id")}
        arrays = {key: _load(path) for key, path in self.files.items()}
        self._check(arrays)
        self.vitals = torch.from_numpy(arrays["vitals"].astype(np.float32))
        self.observed = torch.from_numpy(arrays["vitals_observed"].astype(np.float32))
        self.hadm_ids = arrays["hadm_id"].astype(np.int64)

    def _check(self, arrays: dict[str, np.ndarray]) -> None:
        def fail(key: str, expected: str) -> None:
            arr = arrays[key]
            raise ValueError(f"{self.files[key]}: expected {expected}, got shape {arr.shape} dtype {arr.dtype}")

        vitals, observed, hadm = arrays["vitals"], arrays["vitals_observed"], arrays["hadm_id"]
        if hadm.ndim != 1 or not np.issubdtype(hadm.dtype, np.integer):
            fail("hadm_id", "(N,) integer")
        if vitals.ndim != 2 or vitals.shape[1] != NUM_VITALS or not np.issubdtype(vitals.dtype, np.floating):
            fail("vitals", f"(N, {NUM_VITALS}) float32 percentiles")
        numeric = np.issubdtype(observed.dtype, np.number) or observed.dtype == np.bool_
        if observed.ndim != 2 or observed.shape[1] != NUM_VITALS or not numeric:
            fail("vitals_observed", f"(N, {NUM_VITALS}) int64 (1 = observed)")
        if not vitals.shape[0] == observed.shape[0] == hadm.shape[0]:
            detail = ", ".join(f"{self.files[k].name}: N={a.shape[0]}" for k, a in arrays.items())
            raise ValueError(f"vitals arrays of split {self.split!r} have different row counts: {detail}")
        for key, bad in (("vitals", ~((vitals >= 0.0) & (vitals <= 1.0))),  # NaN compares False: caught
                         ("vitals_observed", (observed != 0) & (observed != 1))):
            if bad.any():
                row, col = np.argwhere(bad)[0]
                raise ValueError(
                    f"{self.files[key]}: values must be {'in [0, 1] without NaN' if key == 'vitals' else '0/1'}; "
                    f"first bad value {arrays[key][row, col].item()!r} at row {row}, column {col} "
                    f"({VITAL_NAMES[col]})"
                )

    def __len__(self) -> int:
        return int(self.hadm_ids.shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for split {self.split!r} of length {n}")
        index = int(index) % n
        return {"vitals": self.vitals[index].clone(), "vitals_observed": self.observed[index].clone(),
                "hadm_id": int(self.hadm_ids[index]), "index": index}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"


def _load(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"vitals array file not found: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        raise ValueError(f"cannot read {path} as a plain .npy array: {err}") from err


# ----------------------------------------------------------------------------------------------
# MIMIC-IV extraction
# ----------------------------------------------------------------------------------------------
def _columns_of(source: pd.DataFrame | str | os.PathLike, needed: Sequence[str], what: str) -> str:
    """How messages name ``source`` (a DataFrame or a CSV path), after checking its columns."""
    if isinstance(source, pd.DataFrame):
        have, name = list(source.columns), f"{what} DataFrame"
    else:
        have, name = list(read_csv(source, f"{what} file", nrows=0).columns), f"{what} file {source}"
    missing = [c for c in needed if c not in have]
    if missing:
        raise ValueError(f"{name} lacks columns {missing}; it has {have}")
    return name


def _table(source: pd.DataFrame | str | os.PathLike, columns: Sequence[str], what: str) -> pd.DataFrame:
    """The ``columns`` of a DataFrame or of a whole CSV file (checked by :func:`_columns_of`)."""
    if isinstance(source, pd.DataFrame):
        return source[list(columns)].reset_index(drop=True)
    return read_csv(source, f"{what} file", usecols=list(columns))[list(columns)]


def _chunks(source: pd.DataFrame | str | os.PathLike, columns: Sequence[str]) -> Iterator[pd.DataFrame]:
    if isinstance(source, pd.DataFrame):
        for lo in range(0, len(source), _CHUNK_ROWS):
            yield source.iloc[lo : lo + _CHUNK_ROWS][list(columns)]
        return
    # Chunked so that the full chartevents (~300M rows) never sits in memory at once.
    yield from pd.read_csv(source, usecols=list(columns), chunksize=_CHUNK_ROWS)


def _parsed(values: pd.Series, kind: str, what: str, rows: np.ndarray) -> pd.Series:
    """``values`` as dates (``kind="date"``) or numbers; a non-empty cell that does not parse is
    an error naming the file, the column and its row ``rows[i]``."""
    out = pd.to_datetime(values, errors="coerce") if kind == "date" else pd.to_numeric(values, errors="coerce")
    bad = (out.isna() & values.notna()).to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{what}: column {values.name!r} holds {values.iloc[i]!r} at row {int(rows[i])}, "
                         f"which is not a {kind}")
    return out


def _plausible(long: pd.DataFrame) -> pd.DataFrame:
    lo = long["vital"].map({k: r[0] for k, r in PLAUSIBLE_RANGES.items()})
    hi = long["vital"].map({k: r[1] for k, r in PLAUSIBLE_RANGES.items()})
    return long[(long["value"] >= lo) & (long["value"] <= hi)]


def _earliest(long: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    """One row per (hadm_id, vital): the first after sorting by ``order`` (stable)."""
    long = long.sort_values(["hadm_id", "vital", *order], kind="mergesort")
    return long.drop_duplicates(["hadm_id", "vital"], keep="first")


def _fahrenheit_to_celsius(values: pd.Series) -> pd.Series:
    return (values - 32.0) * (5.0 / 9.0)


def _chart_values(chartevents: pd.DataFrame | str | os.PathLike, adm: pd.DataFrame, window: pd.Timedelta
                  ) -> pd.DataFrame:
    """``hadm_id, vital, value``: the earliest plausible charted value of each vital in the window."""
    name = _columns_of(chartevents, _CHART_COLUMNS, "chartevents")
    rank = {itemid: k for k, itemid in enumerate(CHARTEVENTS_ITEMIDS)}
    admitted = adm["hadm_id"].to_numpy()
    order = ("time", "rank", "row")
    found, offset = [], 0
    for chunk in _chunks(chartevents, _CHART_COLUMNS):
        rows = np.arange(offset, offset + len(chunk))
        offset += len(chunk)
        # Cheap filters first: only the vitals' itemids of the admissions asked for are parsed.
        keep = (chunk["itemid"].isin(list(CHARTEVENTS_ITEMIDS)) & chunk["hadm_id"].isin(admitted)).to_numpy()
        chunk, rows = chunk[keep], rows[keep]
        if chunk.empty:
            continue
        value = _parsed(chunk["valuenum"], "number", name, rows)
        for itemid, (_, unit) in CHARTEVENTS_ITEMIDS.items():
            if unit == "fahrenheit":
                value = value.where(chunk["itemid"] != itemid, _fahrenheit_to_celsius(value))
        long = pd.DataFrame({
            "hadm_id": _parsed(chunk["hadm_id"], "number", name, rows).astype(np.int64),
            "vital": chunk["itemid"].map({i: v for i, (v, _) in CHARTEVENTS_ITEMIDS.items()}),
            "value": value, "time": _parsed(chunk["charttime"], "date", name, rows),
            "rank": chunk["itemid"].map(rank), "row": rows,
        }).dropna(subset=["value"])
        long = long.merge(adm[["hadm_id", "admittime"]], on="hadm_id", how="inner")
        delta = long["time"] - long["admittime"]
        found.append(_earliest(_plausible(long[(delta >= -window) & (delta <= window)]), order))
    if not found:
        return pd.DataFrame(columns=["hadm_id", "vital", "value"])
    # A (hadm, vital) pair may have a candidate in several chunks: keep the earliest again.
    return _earliest(pd.concat(found, ignore_index=True), order)[["hadm_id", "vital", "value"]]


def _omr_values(omr: pd.DataFrame | str | os.PathLike, adm: pd.DataFrame, window: pd.Timedelta) -> pd.DataFrame:
    """``hadm_id, vital, value``: the earliest plausible omr value whose day overlaps the window."""
    name = _columns_of(omr, _OMR_COLUMNS, "omr")
    table = _table(omr, _OMR_COLUMNS, "omr")
    rows = np.arange(len(table))
    table = table.assign(row=rows, chartdate=_parsed(table["chartdate"], "date", name, rows))
    rank = {result: k for group in OMR_RESULT_NAMES.values() for k, result in enumerate(group)}
    table = table[table["result_name"].isin(list(rank))].assign(rank=lambda t: t["result_name"].map(rank))
    is_bp = table["result_name"].isin(OMR_RESULT_NAMES["blood_pressure"]).to_numpy()
    text = table["result_value"].astype(str).str.strip()
    # Unparsable text (e.g. a pressure without "/") is not a value: it becomes NaN and is dropped.
    bp = text.str.extract(r"^(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)$").astype(np.float64)
    weight = pd.to_numeric(text, errors="coerce") * _LBS_TO_KG
    long = pd.concat([
        table.assign(vital="systolic_bp", value=np.where(is_bp, bp[0], np.nan)),
        table.assign(vital="diastolic_bp", value=np.where(is_bp, bp[1], np.nan)),
        table.assign(vital="weight", value=np.where(is_bp, np.nan, weight)),
    ], ignore_index=True).dropna(subset=["value"])
    long = long.assign(time=long["chartdate"].dt.normalize())
    long = long.merge(adm[["subject_id", "hadm_id", "admittime"]], on="subject_id", how="inner")
    # A date matches when its day [d, d + 1 day) overlaps [admittime - window, admittime + window].
    start, end = long["admittime"] - window, long["admittime"] + window
    long = _plausible(long[(long["time"] + pd.Timedelta(days=1) > start) & (long["time"] <= end)])
    return _earliest(long, ("time", "seq_num", "rank", "row"))[["hadm_id", "vital", "value"]]


def extract_admission_vitals(
    admissions: pd.DataFrame | str | os.PathLike,
    chartevents: pd.DataFrame | str | os.PathLike | None = None,
    omr: pd.DataFrame | str | os.PathLike | None = None,
    window_hours: float = 24.0,
    drop_empty: bool = False,
) -> pd.DataFrame:
    """Per-admission raw vitals: the earliest plausible value within ``admittime +- window_hours``.

    See the module docstring for the itemids, the omr join and the rule.

    Args:
        admissions: MIMIC-IV ``hosp/admissions`` (DataFrame or ``.csv``/``.csv.gz`` path); needs
            ``subject_id, hadm_id, admittime``.
        chartevents: ``icu/chartevents``; needs ``hadm_id, charttime, itemid, valuenum``.
        omr: ``hosp/omr``; needs ``subject_id, chartdate, seq_num, result_name, result_value``.
        window_hours: half-width of the window around ``admittime`` in hours (> 0).
        drop_empty: drop admissions without any vital.

    Returns:
        DataFrame ``subject_id, hadm_id`` then one float64 column per :data:`VITAL_NAMES` entry
        in :data:`VITAL_UNITS` (NaN = not charted in the window), rows in ``admissions`` order.

    Raises:
        FileNotFoundError: when a path does not exist.
        ValueError: when neither ``chartevents`` nor ``omr`` is given, ``window_hours`` is not
            positive, or a table lacks a column or holds unparsable values in it (names the file
            and the column).

    Example:
        >>> table = extract_admission_vitals("hosp/admissions.csv.gz", omr="hosp/omr.csv.gz")  # doctest: +SKIP
        >>> table.columns.tolist()[:4]  # doctest: +SKIP
        ['subject_id', 'hadm_id', 'heart_rate', 'systolic_bp']
    """
    if chartevents is None and omr is None:
        raise ValueError("extract_admission_vitals needs chartevents, omr or both; got neither")
    if isinstance(window_hours, bool) or not isinstance(window_hours, (int, float, np.number)) or not window_hours > 0:
        raise ValueError(f"window_hours must be a positive number of hours, got {window_hours!r}")
    name = _columns_of(admissions, _ADMISSION_COLUMNS, "admissions")
    adm = _table(admissions, _ADMISSION_COLUMNS, "admissions")
    adm = adm.assign(admittime=_parsed(adm["admittime"], "date", name, np.arange(len(adm))))
    window = pd.Timedelta(hours=float(window_hours))
    wide = pd.DataFrame(index=pd.Index([], name="hadm_id"), columns=list(VITAL_NAMES), dtype=np.float64)
    # chartevents first: omr only fills what they lack (combine_first keeps existing values).
    for best in (
        _chart_values(chartevents, adm, window) if chartevents is not None else None,
        _omr_values(omr, adm, window) if omr is not None else None,
    ):
        if best is not None and not best.empty:
            wide = wide.combine_first(best.pivot(index="hadm_id", columns="vital", values="value").astype(np.float64))
    wide = wide.reindex(columns=list(VITAL_NAMES)).astype(np.float64)
    out = adm[["subject_id", "hadm_id"]].merge(wide, left_on="hadm_id", right_index=True, how="left")
    out = out.reset_index(drop=True)[["subject_id", "hadm_id", *VITAL_NAMES]]
    if drop_empty:
        out = out[out[list(VITAL_NAMES)].notna().any(axis=1)].reset_index(drop=True)
    return out


# ----------------------------------------------------------------------------------------------
# Stored representation
# ----------------------------------------------------------------------------------------------
def _vitals_matrix(values: np.ndarray | pd.DataFrame, what: str) -> np.ndarray:
    if isinstance(values, pd.DataFrame):
        missing = [c for c in VITAL_NAMES if c not in values.columns]
        if missing:
            raise ValueError(f"{what} lacks vitals columns {missing}; it has {list(values.columns)}")
        values = values[list(VITAL_NAMES)].to_numpy(dtype=np.float64)
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != NUM_VITALS:
        raise ValueError(f"{what} must have shape (N, {NUM_VITALS}) in VITAL_NAMES order, got {arr.shape}")
    return arr


def fit_vitals_percentiles(train_values: np.ndarray | pd.DataFrame) -> LabPercentiles:
    """The percentile transform of the vitals, fitted on the TRAIN split's raw values.

    Args:
        train_values: ``(N, 7)`` raw values in :data:`VITAL_NAMES` order (NaN = missing), or a
            DataFrame with those columns (e.g. :func:`extract_admission_vitals` output).

    Returns:
        A :class:`pacx.data.labs.LabPercentiles` over :data:`VITAL_ITEMIDS`; its ``transform``
        gives ``(percentiles float32, observed int64)``.

    Raises:
        ValueError: on a wrong shape, a missing column, an infinite value or a vital never
            observed in the train split.

    Example:
        >>> train = np.array([[70, 120, 80, 97, 16, 36.8, 80], [90, 140, 70, 93, 22, 38.0, np.nan]])
        >>> pct, observed = fit_vitals_percentiles(train).transform(train[1:])
        >>> pct[0, :2].tolist(), observed[0].tolist()
        ([1.0, 1.0], [1, 1, 1, 1, 1, 1, 0])
    """
    return LabPercentiles.fit(_vitals_matrix(train_values, "train_values"), itemids=VITAL_ITEMIDS)


def write_vitals_arrays(
    root: str | os.PathLike,
    table: pd.DataFrame,
    splits: Sequence[str] | None = None,
    train_split: str = "train",
) -> LabPercentiles:
    """Write ``vitals_*`` arrays aligned to each split's ``hadm_id_<split>.npy``.

    Args:
        root: cohort root holding ``data_npy/<split>/hadm_id_<split>.npy`` (e.g. Symile-MIMIC).
        table: raw vitals per ``hadm_id`` (:func:`extract_admission_vitals` output); an
            admission absent from it has every vital missing.
        splits: splits to write; default every ``data_npy`` folder with a ``hadm_id`` file.
        train_split: the split the percentiles are fitted on (it must be among ``splits``).

    Returns:
        The fitted percentile transform.

    Raises:
        FileNotFoundError: when a split folder or its ``hadm_id`` file is missing.
        ValueError: when ``table`` lacks a column or repeats a ``hadm_id``, or ``train_split``
            is not written.
    """
    by_hadm = _by_hadm(table)
    if splits is None:
        data = Path(root) / "data_npy"
        folders = sorted(data.iterdir()) if data.is_dir() else []
        splits = [p.name for p in folders if (p / f"hadm_id_{p.name}.npy").is_file()]
    if train_split not in splits:
        raise ValueError(f"train_split {train_split!r} must be one of the splits written, got {list(splits)}")
    raw = {}
    for split in splits:
        _, folder = resolve_symile_root(root, split)
        hadm = _load(folder / f"hadm_id_{split}.npy").astype(np.int64)
        raw[split] = (folder, by_hadm.reindex(hadm).to_numpy(dtype=np.float64))
    reference = fit_vitals_percentiles(raw[train_split][1])
    for split, (folder, values) in raw.items():
        pct, observed = reference.transform(values)
        for stem, arr in (("vitals", pct), ("vitals_observed", observed), ("vitals_raw", values.astype(np.float32))):
            atomic_write(folder / f"{stem}_{split}.npy", lambda tmp, a=arr: _save(tmp, a))
    return reference


def _by_hadm(table: pd.DataFrame) -> pd.DataFrame:
    """The vitals columns of ``table`` indexed by a unique int64 ``hadm_id``."""
    missing = [c for c in ("hadm_id", *VITAL_NAMES) if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks columns {missing}; it has {list(table.columns)}")
    dup = table["hadm_id"].duplicated()
    if dup.any():
        raise ValueError(f"table repeats hadm_id {table.loc[dup, 'hadm_id'].iloc[0]}; one row per admission")
    values = table[list(VITAL_NAMES)].astype(np.float64)
    return values.set_axis(pd.Index(table["hadm_id"].astype(np.int64), name="hadm_id"), axis=0)


def _save(tmp: str, arr: np.ndarray) -> None:
    with open(tmp, "wb") as fh:  # np.save on a name would append ".npy" to the temporary path
        np.save(fh, arr, allow_pickle=False)
