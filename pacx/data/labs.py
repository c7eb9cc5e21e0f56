"""The 50 Symile-MIMIC laboratory tests: extraction from MIMIC-IV, percentiles, observed mask.

Definition used (Symile-MIMIC's ``process_mimic_data.py``): lab events are matched to an
admission by ``subject_id`` (not ``hadm_id``, so emergency-department and outpatient draws
without a ``hadm_id`` count), with ``charttime`` within +-24 h of ``admittime`` (both ends
inclusive); for each of the 50 itemids the value kept is the non-missing ``valuenum`` with the
earliest ``charttime`` (ties: the first row in file order). Admissions without any of the 50
labs are dropped, as Symile required at least one.

Percentiles follow Symile: a NaN-aware empirical CDF fit on the TRAIN split only, evaluated
as the fraction of train values ``<= x`` (a right-continuous step function, 0 below the train
minimum); a missing lab is filled with that lab's train mean percentile (``labs_means.json``,
keys ``"<itemid>_percentile"``) and flagged 0 in the observed mask (1 = observed). Columns are
in ascending itemid order, which is Symile's ``sorted(labs_means.keys())``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pacx.io import read_csv

__all__ = [
    "SYMILE_LAB_ITEMIDS",
    "SYMILE_LAB_NAMES",
    "LabPercentiles",
    "extract_admission_labs",
    "load_labs_means",
]

_SYMILE_LABS: dict[int, str] = {
    50802: "Base Excess",
    50804: "Calculated Total CO2",
    50813: "Lactate",
    50818: "pCO2",
    50820: "pH",
    50821: "pO2",
    50861: "Alanine Aminotransferase (ALT)",
    50862: "Albumin",
    50863: "Alkaline Phosphatase",
    50868: "Anion Gap",
    50878: "Asparate Aminotransferase (AST)",
    50882: "Bicarbonate",
    50885: "Bilirubin, Total",
    50893: "Calcium, Total",
    50902: "Chloride",
    50910: "Creatine Kinase (CK)",
    50912: "Creatinine",
    50931: "Glucose",
    50934: "H",
    50947: "I",
    50960: "Magnesium",
    50970: "Phosphate",
    50971: "Potassium",
    50983: "Sodium",
    51006: "Urea Nitrogen",
    51133: "Absolute Lymphocyte Count",
    51146: "Basophils",
    51200: "Eosinophils",
    51221: "Hematocrit",
    51222: "Hemoglobin",
    51237: "INR(PT)",
    51244: "Lymphocytes",
    51248: "MCH",
    51249: "MCHC",
    51250: "MCV",
    51254: "Monocytes",
    51256: "Neutrophils",
    51265: "Platelet Count",
    51274: "PT",
    51275: "PTT",
    51277: "RDW",
    51279: "Red Blood Cells",
    51301: "White Blood Cells",
    51678: "L",
    52069: "Absolute Basophil Count",
    52073: "Absolute Eosinophil Count",
    52074: "Absolute Monocyte Count",
    52075: "Absolute Neutrophil Count",
    52135: "Immature Granulocytes",
    52172: "RDW-SD",
}
# Tensor column order = ascending itemid (all are 5 digits, so string and numeric sort agree).
SYMILE_LAB_ITEMIDS: tuple[int, ...] = tuple(sorted(_SYMILE_LABS))
# "H", "L" and "I" are MIMIC's hemolysis, lipemia and icterus indices (names as in Symile).
SYMILE_LAB_NAMES: tuple[str, ...] = tuple(_SYMILE_LABS[i] for i in SYMILE_LAB_ITEMIDS)

_LAB_COLUMNS = ["subject_id", "itemid", "charttime", "valuenum"]
_ADMISSION_COLUMNS = ["subject_id", "hadm_id", "admittime"]
_CHUNK_ROWS = 2_000_000


def _require_columns(table: pd.DataFrame, needed: Sequence[str], what: str) -> None:
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}; it has {list(table.columns)}")


def _parsed(values: pd.Series, parse, kind: str, what: str, rows: np.ndarray | None = None) -> pd.Series:
    """``parse(values, errors="coerce")``, refusing a non-empty cell it cannot parse.

    The message names the column, the value and its row: ``rows[i]`` for the i-th value when
    given (positions in the file), else ``i``.
    """
    out = parse(values, errors="coerce")
    bad = (out.isna() & values.notna()).to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        row = int(rows[i]) if rows is not None else i
        raise ValueError(f"{what}: column {values.name!r} holds {values.iloc[i]!r} at row {row}, which is not {kind}")
    return out


def _read_admissions(admissions: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    if isinstance(admissions, pd.DataFrame):
        table, what = admissions, "admissions DataFrame"
    else:
        what = f"admissions file {admissions}"
        header = read_csv(admissions, "admissions file", nrows=0)
        _require_columns(header, _ADMISSION_COLUMNS, what)
        table = read_csv(admissions, "admissions file", usecols=_ADMISSION_COLUMNS)
    _require_columns(table, _ADMISSION_COLUMNS, what)
    table = table[_ADMISSION_COLUMNS].copy()
    table["admittime"] = _parsed(table["admittime"], pd.to_datetime, "a date/time", what)
    return table


def _describe_labevents(labevents: pd.DataFrame | str | os.PathLike) -> str:
    return "labevents DataFrame" if isinstance(labevents, pd.DataFrame) else f"labevents file {labevents}"


def _lab_chunks(labevents: pd.DataFrame | str | os.PathLike):
    """``(chunk, first row)`` of labevents, with ``valuenum`` parsed as numbers."""
    what = _describe_labevents(labevents)
    if isinstance(labevents, pd.DataFrame):
        _require_columns(labevents, _LAB_COLUMNS, what)
        chunks = (labevents.iloc[lo : lo + _CHUNK_ROWS][_LAB_COLUMNS] for lo in range(0, len(labevents), _CHUNK_ROWS))
    else:
        header = read_csv(labevents, "labevents file", nrows=0)
        _require_columns(header, _LAB_COLUMNS, what)
        # Chunked so that the full MIMIC-IV labevents (~120M rows) never sits in memory at once.
        chunks = pd.read_csv(labevents, usecols=_LAB_COLUMNS, chunksize=_CHUNK_ROWS)
    offset = 0
    while True:
        try:
            chunk = next(chunks)
        except StopIteration:
            return
        except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError) as err:
            raise ValueError(f"{what} cannot be read after row {offset}: {type(err).__name__}: {err}") from err
        if not pd.api.types.is_numeric_dtype(chunk["valuenum"]):
            rows = np.arange(offset, offset + len(chunk))
            chunk = chunk.assign(valuenum=_parsed(chunk["valuenum"], pd.to_numeric, "a number", what, rows))
        yield chunk, offset
        offset += len(chunk)


def extract_admission_labs(
    labevents: pd.DataFrame | str | os.PathLike,
    admissions: pd.DataFrame | str | os.PathLike,
    window_hours: float = 24.0,
    itemids: Sequence[int] = SYMILE_LAB_ITEMIDS,
    drop_empty: bool = True,
) -> pd.DataFrame:
    """Per-admission raw values of the Symile labs (earliest ``valuenum`` within +-window).

    Args:
        labevents: MIMIC-IV ``hosp/labevents`` as a DataFrame or a path (``.csv``/``.csv.gz``);
            needs ``subject_id, itemid, charttime, valuenum``.
        admissions: MIMIC-IV ``hosp/admissions`` as a DataFrame or a path; needs
            ``subject_id, hadm_id, admittime``.
        window_hours: half-width of the window around ``admittime``, in hours (Symile: 24).
        itemids: lab itemids to extract, output in this order. Defaults to the 50 Symile labs.
        drop_empty: drop admissions with none of the labs (Symile does). Defaults to True.

    Returns:
        DataFrame with columns ``subject_id``, ``hadm_id`` then one float column per itemid
        (column name = the int itemid; NaN = not measured in the window), rows in the order of
        ``admissions``.

    Raises:
        FileNotFoundError: when a path does not exist.
        ValueError: on missing columns (names them and lists the available ones), an empty or
            malformed file (names it), a ``valuenum`` that is not a number or a ``charttime``/
            ``admittime`` that is not a date (names the file or DataFrame, column, value and
            row), or a non-positive ``window_hours``.

    Warns:
        UserWarning: naming the requested itemids that never occur with a value in
            ``labevents`` (a typo or another itemid dictionary would otherwise give an empty
            table silently).

    Example:
        >>> table = extract_admission_labs("hosp/labevents.csv.gz", "hosp/admissions.csv.gz")  # doctest: +SKIP
        >>> table.columns[:3].tolist()  # doctest: +SKIP
        ['subject_id', 'hadm_id', 50802]
    """
    if not window_hours > 0:
        raise ValueError(f"window_hours must be positive, got {window_hours}")
    itemids = [int(i) for i in itemids]
    if not itemids or len(set(itemids)) != len(itemids):
        raise ValueError(f"itemids must be a non-empty list of distinct ids, got {itemids}")
    adm = _read_admissions(admissions)
    window = pd.Timedelta(hours=float(window_hours))
    best = []
    seen: set[int] = set()
    what = _describe_labevents(labevents)
    for chunk, offset in _lab_chunks(labevents):
        rows = np.flatnonzero((chunk["itemid"].isin(itemids) & chunk["valuenum"].notna()).to_numpy())
        if rows.size == 0:
            continue
        chunk = chunk.iloc[rows]
        seen.update(int(i) for i in chunk["itemid"].unique())
        rows = offset + rows  # positions in the file (or DataFrame), for messages and tie-breaking
        charttime = _parsed(chunk["charttime"], pd.to_datetime, "a date/time", what, rows)
        chunk = chunk.assign(row=rows, charttime=charttime)
        # Match on subject (as Symile) so that draws before the hadm_id exists are kept.
        pairs = chunk.merge(adm, on="subject_id", how="inner")
        delta = pairs["charttime"] - pairs["admittime"]
        pairs = pairs[(delta >= -window) & (delta <= window)]
        pairs = pairs.sort_values(["hadm_id", "itemid", "charttime", "row"], kind="mergesort")
        best.append(pairs.drop_duplicates(["hadm_id", "itemid"], keep="first"))
    absent = [i for i in itemids if i not in seen]
    if absent:
        warnings.warn(
            f"itemids {absent} never occur with a value in {what}: their columns are all NaN"
            + (" and every admission is dropped" if len(absent) == len(itemids) and drop_empty else ""),
            UserWarning,
            stacklevel=2,
        )
    columns = ["subject_id", "hadm_id", *itemids]
    if best:
        found = pd.concat(best, ignore_index=True)
        # A (hadm, itemid) pair may have a candidate in several chunks: keep the earliest again.
        found = found.sort_values(["hadm_id", "itemid", "charttime", "row"], kind="mergesort")
        found = found.drop_duplicates(["hadm_id", "itemid"], keep="first")
        wide = found.pivot(index="hadm_id", columns="itemid", values="valuenum")
    else:
        wide = pd.DataFrame(index=pd.Index([], name="hadm_id"))
    wide = wide.reindex(columns=itemids)
    out = adm[["subject_id", "hadm_id"]].merge(wide, left_on="hadm_id", right_index=True, how="left")
    out = out.reset_index(drop=True)
    out = out[columns]
    out[itemids] = out[itemids].astype(np.float64)
    if drop_empty:
        out = out[out[itemids].notna().any(axis=1)].reset_index(drop=True)
    return out


def _values_matrix(values: np.ndarray | pd.DataFrame, itemids: Sequence[int], name: str) -> np.ndarray:
    if isinstance(values, pd.DataFrame):
        cols = []
        for itemid in itemids:
            if itemid in values.columns:
                cols.append(itemid)
            elif str(itemid) in values.columns:
                cols.append(str(itemid))
            else:
                raise ValueError(f"{name} has no column for itemid {itemid}; it has {list(values.columns)}")
        arr = values[cols].to_numpy(dtype=np.float64)
    else:
        arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != len(itemids):
        raise ValueError(f"{name} must have shape (N, {len(itemids)}), got {arr.shape}")
    if np.isinf(arr).any():
        row, col = np.argwhere(np.isinf(arr))[0]
        raise ValueError(f"{name} contains an infinite value at row {row}, column {col} (itemid {itemids[col]})")
    return arr


class LabPercentiles:
    """Empirical-CDF percentiles of lab values, fit on the training split only.

    ``percentile(x) = #{train values <= x} / #{train values}`` per lab (0 below the training
    minimum, 1 at or above its maximum); missing values (NaN) get the lab's training mean
    percentile and an observed flag of 0.

    Args:
        train_sorted: per lab, the sorted non-missing training values.
        itemids: the lab itemids, in column order.

    Example:
        >>> train = np.array([[1.0, np.nan], [2.0, 5.0], [3.0, 7.0], [4.0, np.nan]])
        >>> lp = LabPercentiles.fit(train, itemids=[1, 2])
        >>> pct, observed = lp.transform(np.array([[2.5, np.nan]]))
        >>> pct.tolist(), observed.tolist()
        ([[0.5, 0.75]], [[1, 0]])
    """

    def __init__(self, train_sorted: Sequence[np.ndarray], itemids: Sequence[int] = SYMILE_LAB_ITEMIDS) -> None:
        if len(train_sorted) != len(itemids):
            raise ValueError(f"train_sorted has {len(train_sorted)} labs, itemids has {len(itemids)}")
        self.itemids = tuple(int(i) for i in itemids)
        self.train_sorted = [np.sort(np.asarray(v, dtype=np.float64)) for v in train_sorted]
        empty = [i for i, v in zip(self.itemids, self.train_sorted) if v.size == 0]
        if empty:
            raise ValueError(f"cannot fit a percentile for itemids {empty}: no observed training values")
        # Train mean percentile: the mean of the ECDF over the training values themselves.
        self.means = np.array([self._cdf(v, v).mean() for v in self.train_sorted], dtype=np.float64)

    @staticmethod
    def _cdf(sorted_train: np.ndarray, x: np.ndarray) -> np.ndarray:
        return np.searchsorted(sorted_train, x, side="right") / sorted_train.size

    @classmethod
    def fit(
        cls, train_values: np.ndarray | pd.DataFrame, itemids: Sequence[int] = SYMILE_LAB_ITEMIDS
    ) -> LabPercentiles:
        """Fit on the TRAIN split's raw values ``(N, L)`` (NaN = missing) or a DataFrame with
        one column per itemid (int or str names, e.g. :func:`extract_admission_labs` output).

        Raises:
            ValueError: on a wrong shape, a missing itemid column, an infinite value or a lab
                without any observed training value.
        """
        arr = _values_matrix(train_values, list(itemids), "train_values")
        return cls([col[~np.isnan(col)] for col in arr.T], itemids)

    def transform(self, values: np.ndarray | pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Percentiles and observed mask of raw values ``(N, L)`` (NaN = missing).

        Returns:
            ``(percentiles, observed)``: float32 ``(N, L)`` in [0, 1] with missing entries set to
            the train mean percentile, and int64 ``(N, L)`` with 1 = observed (the Symile
            ``labs_missingness`` convention).

        Raises:
            ValueError: on a wrong shape, a missing itemid column or an infinite value.
        """
        arr = _values_matrix(values, self.itemids, "values")
        observed = ~np.isnan(arr)
        pct = np.empty_like(arr)
        for j, sorted_train in enumerate(self.train_sorted):
            pct[:, j] = np.where(observed[:, j], self._cdf(sorted_train, np.nan_to_num(arr[:, j])), self.means[j])
        return pct.astype(np.float32), observed.astype(np.int64)

    def labs_means_json(self) -> dict[str, float]:
        """Train mean percentiles in Symile's ``labs_means.json`` format (``"<itemid>_percentile"``)."""
        return {f"{itemid}_percentile": float(m) for itemid, m in zip(self.itemids, self.means)}


def load_labs_means(
    path: str | os.PathLike | Mapping[str, float], itemids: Sequence[int] = SYMILE_LAB_ITEMIDS
) -> np.ndarray:
    """Read a Symile ``labs_means.json`` into a float32 vector in ``itemids`` order.

    Args:
        path: the JSON file, or its already-parsed mapping.
        itemids: column order. Defaults to the 50 Symile labs.

    Returns:
        ``(len(itemids),)`` float32 array of train mean percentiles.

    Raises:
        FileNotFoundError: when the file is missing.
        ValueError: when a ``"<itemid>_percentile"`` key is missing or a value is outside [0, 1].
    """
    if isinstance(path, Mapping):
        means, what = path, "labs means mapping"
    else:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"labs means file not found: {p}")
        means, what = json.loads(p.read_text(encoding="utf-8")), str(p)
    keys = [f"{int(i)}_percentile" for i in itemids]
    missing = [k for k in keys if k not in means]
    if missing:
        more = " ..." if len(missing) > 5 else ""
        raise ValueError(f"{what} lacks keys {missing[:5]}{more} ({len(missing)} missing)")
    out = np.array([float(means[k]) for k in keys], dtype=np.float64)
    bad = np.flatnonzero(~((out >= 0.0) & (out <= 1.0)))
    if bad.size:
        raise ValueError(f"{what}: {keys[bad[0]]} = {out[bad[0]]} is not a percentile in [0, 1]")
    return out.astype(np.float32)
