"""The vitals reader: dataset validation, MIMIC-IV extraction (chartevents, omr), stored arrays."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pacx.data import vitals as vt
from pacx.data.vitals import (VITAL_ITEMIDS, VITAL_NAMES, VitalsDataset, extract_admission_vitals,
                              fit_vitals_percentiles, write_vitals_arrays)
from tests.utils import require_shared_data


# ----------------------------------------------------------------------------------------------
# VitalsDataset
# ----------------------------------------------------------------------------------------------
def _write_split(root: Path, split: str, vitals, observed, hadm) -> Path:
    folder = root / "data_npy" / split
    folder.mkdir(parents=True, exist_ok=True)
    for stem, arr in (("vitals", vitals), ("vitals_observed", observed), ("hadm_id", hadm)):
        np.save(folder / f"{stem}_{split}.npy", np.asarray(arr))
    return folder


def _good(n: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.random((n, 7)).astype(np.float32), (rng.random((n, 7)) < 0.7).astype(np.int64),
            np.arange(100, 100 + n, dtype=np.int64))


def test_dataset_items(tmp_path: Path) -> None:
    vitals, observed, hadm = _good()
    _write_split(tmp_path, "train", vitals, observed, hadm)
    ds = VitalsDataset(tmp_path / "data_npy", "train")  # the data_npy folder itself is accepted too
    assert len(ds) == 5 and "n=5" in repr(ds)
    item = ds[-1]
    assert item["index"] == 4 and item["hadm_id"] == 104
    assert item["vitals"].dtype == torch.float32 and item["vitals_observed"].dtype == torch.float32
    np.testing.assert_array_equal(item["vitals"].numpy(), vitals[4])
    np.testing.assert_array_equal(item["vitals_observed"].numpy(), observed[4])
    item["vitals"][0] = 5.0  # items are copies: the dataset is unchanged
    assert ds[4]["vitals"][0] == vitals[4, 0]
    with pytest.raises(IndexError, match="out of range"):
        ds[5]
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch["vitals"].shape == (2, 7)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda v, o, h: (v[:, :6], o, h), r"vitals_train\.npy: expected \(N, 7\) float32"),
        (lambda v, o, h: (v.astype(np.int64), o, h), r"vitals_train\.npy: expected"),
        (lambda v, o, h: (v, o[:, :3], h), r"vitals_observed_train\.npy: expected \(N, 7\)"),
        (lambda v, o, h: (v, o, h.astype(np.float32)), r"hadm_id_train\.npy: expected \(N,\) integer"),
        (lambda v, o, h: (v[:4], o, h), r"different row counts.*vitals_train\.npy: N=4"),
        (lambda v, o, h: (np.where(np.arange(5)[:, None] == 3, np.float32(1.5), v), o, h),
         r"vitals_train\.npy: .*first bad value 1\.5 at row 3, column 0 \(heart_rate\)"),
        (lambda v, o, h: (np.where(np.arange(7) == 6, np.float32(np.nan), v), o, h),
         r"vitals_train\.npy: .*without NaN; first bad value nan at row 0, column 6 \(weight\)"),
        (lambda v, o, h: (v, np.where(np.arange(7) == 2, 2, o), h),
         r"vitals_observed_train\.npy: values must be 0/1; first bad value 2 at row 0, column 2"),
    ],
)
def test_dataset_validation_names_file_and_row(tmp_path: Path, change, match: str) -> None:
    _write_split(tmp_path, "train", *change(*_good()))
    with pytest.raises(ValueError, match=match):
        VitalsDataset(tmp_path, "train")


def test_dataset_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="split folder not found"):
        VitalsDataset(tmp_path, "train")
    folder = _write_split(tmp_path, "train", *_good())
    (folder / "vitals_observed_train.npy").unlink()
    with pytest.raises(FileNotFoundError, match="vitals_observed_train.npy"):
        VitalsDataset(tmp_path, "train")


# ----------------------------------------------------------------------------------------------
# MIMIC-IV extraction
# ----------------------------------------------------------------------------------------------
ADMISSIONS = """subject_id,hadm_id,admittime,dischtime
1,100,2150-01-01 10:00:00,2150-01-05 10:00:00
1,101,2151-06-01 08:00:00,2151-06-02 08:00:00
2,200,2150-03-03 00:00:00,2150-03-09 00:00:00
3,300,2152-02-02 22:00:00,2152-02-04 10:00:00
"""
# The real icu/chartevents column layout.
CHARTEVENTS = """subject_id,hadm_id,stay_id,caregiver_id,charttime,storetime,itemid,value,valuenum,valueuom,warning
1,100,30,5,2150-01-01 12:00:00,2150-01-01 12:05:00,220045,88,88,bpm,0
1,100,30,5,2150-01-01 11:00:00,2150-01-01 11:05:00,220045,0,0,bpm,0
1,100,30,5,2150-01-01 14:00:00,2150-01-01 14:05:00,220045,70,70,bpm,0
1,100,30,5,2150-01-01 13:00:00,,223761,99.5,99.5,°F,0
1,100,30,5,2150-01-01 13:30:00,,223762,36.1,36.1,°C,0
1,100,30,5,2150-01-01 13:00:00,,220050,130,130,mmHg,0
1,100,30,5,2150-01-01 13:00:00,,220179,121,121,mmHg,0
1,100,30,5,2150-01-01 13:00:00,,220180,,,mmHg,0
1,100,30,5,2150-01-01 13:10:00,,220051,65,65,mmHg,0
1,100,30,5,2150-01-02 10:00:00,,220277,97,97,%,0
1,100,30,5,2150-01-02 10:00:01,,220277,91,91,%,0
1,,30,5,2150-01-01 10:30:00,,220210,30,30,insp/min,0
1,100,30,5,2150-01-01 16:00:00,,224639,81.5,81.5,kg,0
2,200,31,5,2150-03-02 01:00:00,,224690,22,22,insp/min,1
2,200,31,5,2150-03-01 23:59:00,,220210,18,18,insp/min,0
2,200,31,5,2150-03-02 01:00:00,,220046,120,120,bpm,0
2,200,31,5,2150-03-03 02:00:00,,226512,1800,1800,kg,0
9,900,99,5,2150-03-03 02:00:00,,220045,60,60,bpm,0
"""
# The real hosp/omr column layout.
OMR = """subject_id,chartdate,seq_num,result_name,result_value
1,2150-01-01,1,Blood Pressure,140/90
1,2150-01-01,1,Weight (Lbs),200
1,2150-01-02,1,Weight (Lbs),190
2,2150-03-02,2,Blood Pressure,118/76
2,2150-03-02,1,Blood Pressure Sitting,124/80
2,2150-03-02,1,Blood Pressure Standing (3 mins),90/60
2,2150-03-05,1,Weight (Lbs),150
3,2152-02-03,1,Weight (Lbs),abc
3,2152-02-03,2,Weight (Lbs),165
3,2152-02-04,1,Blood Pressure,150/95
3,2152-02-01,1,Blood Pressure,120/80
3,2152-02-01,1,BMI (kg/m2),23.9
"""


def _frame(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text))


def _row(table: pd.DataFrame, hadm: int) -> dict[str, float]:
    return table.set_index("hadm_id").loc[hadm, list(VITAL_NAMES)].to_dict()


def test_chartevents_earliest_plausible_value_in_the_window(tmp_path: Path) -> None:
    (tmp_path / "chartevents.csv").write_text(CHARTEVENTS)
    (tmp_path / "admissions.csv").write_text(ADMISSIONS)
    table = extract_admission_vitals(tmp_path / "admissions.csv", chartevents=tmp_path / "chartevents.csv")
    assert table.columns.tolist() == ["subject_id", "hadm_id", *VITAL_NAMES]
    assert table["hadm_id"].tolist() == [100, 101, 200, 300]  # admissions order, empty ones kept
    assert all(table[c].dtype == np.float64 for c in VITAL_NAMES)
    got = _row(table, 100)
    assert got["heart_rate"] == 88.0  # the 11:00 value 0 is implausible; 14:00 is later
    assert got["temperature"] == pytest.approx((99.5 - 32) * 5 / 9)  # Fahrenheit converted, earliest wins
    assert got["systolic_bp"] == 121.0  # same time: the non-invasive cuff (listed first) wins
    assert got["diastolic_bp"] == 65.0  # the empty valuenum is skipped
    assert got["spo2"] == 97.0  # exactly +24 h is inside; a second later is not
    assert np.isnan(got["resp_rate"])  # the row without hadm_id is ignored
    assert got["weight"] == 81.5
    got = _row(table, 200)
    assert got["resp_rate"] == 22.0  # 23:59 the day before is 24 h 01 min early; itemid 224690 counts
    assert np.isnan(got["heart_rate"]) and np.isnan(got["weight"])  # other itemid; 1800 kg implausible
    assert table.set_index("hadm_id").loc[[101, 300], list(VITAL_NAMES)].isna().all().all()
    kept = extract_admission_vitals(tmp_path / "admissions.csv", chartevents=_frame(CHARTEVENTS), drop_empty=True)
    assert kept["hadm_id"].tolist() == [100, 200]


def test_chartevents_chunks_keep_the_earliest(monkeypatch: pytest.MonkeyPatch) -> None:
    whole = extract_admission_vitals(_frame(ADMISSIONS), chartevents=_frame(CHARTEVENTS))
    monkeypatch.setattr(vt, "_CHUNK_ROWS", 2)  # candidates for one admission now span chunks
    pd.testing.assert_frame_equal(extract_admission_vitals(_frame(ADMISSIONS), chartevents=_frame(CHARTEVENTS)), whole)


def test_omr_joins_on_subject_and_day_and_only_fills_gaps() -> None:
    table = extract_admission_vitals(_frame(ADMISSIONS), chartevents=_frame(CHARTEVENTS), omr=_frame(OMR))
    got = _row(table, 100)
    assert (got["systolic_bp"], got["diastolic_bp"]) == (121.0, 65.0)  # charted values win over omr
    assert got["weight"] == 81.5
    got = _row(table, 200)
    # 2150-03-02 overlaps [03-02 00:00, 03-04 00:00]; seq_num 1 (sitting) before 2; standing is not read
    assert (got["systolic_bp"], got["diastolic_bp"]) == (124.0, 80.0)
    assert np.isnan(got["weight"])  # 03-05 is outside the window
    got = _row(table, 300)
    assert got["weight"] == pytest.approx(165 * 0.45359237)  # "abc" is not a value
    # window [02-01 22:00, 02-03 22:00]: the day 02-01 overlaps it, 02-04 does not
    assert (got["systolic_bp"], got["diastolic_bp"]) == (120.0, 80.0)
    assert np.isnan(_row(table, 101)["weight"])
    only_omr = extract_admission_vitals(_frame(ADMISSIONS), omr=_frame(OMR))
    got = _row(only_omr, 100)
    assert got["systolic_bp"] == 140.0 and got["weight"] == pytest.approx(200 * 0.45359237)


def test_extraction_errors_name_the_file_and_column(tmp_path: Path) -> None:
    (tmp_path / "chartevents.csv").write_text(CHARTEVENTS.replace("valuenum", "value_num"))
    with pytest.raises(ValueError, match=r"chartevents file .*chartevents\.csv lacks columns \['valuenum'\]"):
        extract_admission_vitals(_frame(ADMISSIONS), chartevents=tmp_path / "chartevents.csv")
    with pytest.raises(ValueError, match=r"admissions DataFrame lacks columns \['admittime'\]"):
        extract_admission_vitals(_frame(ADMISSIONS).drop(columns="admittime"), omr=_frame(OMR))
    with pytest.raises(ValueError, match=r"omr DataFrame lacks columns \['seq_num'\]"):
        extract_admission_vitals(_frame(ADMISSIONS), omr=_frame(OMR).drop(columns="seq_num"))
    bad = _frame(CHARTEVENTS).astype({"charttime": object})
    bad.loc[2, "charttime"] = "yesterday"
    with pytest.raises(ValueError, match=r"chartevents DataFrame: column 'charttime' holds 'yesterday' at row 2, "
                                         r"which is not a date"):
        extract_admission_vitals(_frame(ADMISSIONS), chartevents=bad)
    lines = CHARTEVENTS.splitlines()
    lines[4] = lines[4].replace(",99.5,°F", ",high,°F")  # data row 3: valuenum is not a number
    (tmp_path / "bad.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"chartevents file .*bad\.csv: column 'valuenum' holds 'high' at row 3"):
        extract_admission_vitals(_frame(ADMISSIONS), chartevents=tmp_path / "bad.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match=r"admissions file .*empty\.csv is empty"):
        extract_admission_vitals(tmp_path / "empty.csv", omr=_frame(OMR))
    with pytest.raises(FileNotFoundError, match="omr file not found"):
        extract_admission_vitals(_frame(ADMISSIONS), omr=tmp_path / "nope.csv.gz")
    with pytest.raises(ValueError, match="neither"):
        extract_admission_vitals(_frame(ADMISSIONS))
    with pytest.raises(ValueError, match="window_hours"):
        extract_admission_vitals(_frame(ADMISSIONS), omr=_frame(OMR), window_hours=0)


@pytest.mark.real_data
def test_real_mimic_iv_demo_omr() -> None:
    hosp = require_shared_data("mimic_iv_demo") / "hosp"
    table = extract_admission_vitals(hosp / "admissions.csv.gz", omr=hosp / "omr.csv.gz")
    admissions = pd.read_csv(hosp / "admissions.csv.gz")
    assert table["hadm_id"].tolist() == admissions["hadm_id"].tolist()
    # omr holds blood pressure and weight only; the demo matches a fair share of admissions
    assert table[["heart_rate", "spo2", "resp_rate", "temperature"]].isna().all().all()
    assert table["weight"].notna().sum() > 50 and table["systolic_bp"].notna().sum() > 10
    for name in ("systolic_bp", "diastolic_bp", "weight"):
        lo, hi = vt.PLAUSIBLE_RANGES[name]
        assert table[name].dropna().between(lo, hi).all(), name
    bp = table.dropna(subset=["systolic_bp"])
    assert (bp["systolic_bp"] > bp["diastolic_bp"]).all()
    # one admission checked by hand against the raw rows
    omr = pd.read_csv(hosp / "omr.csv.gz")
    row = table.dropna(subset=["weight"]).iloc[0]
    adm = admissions.set_index("hadm_id").loc[row["hadm_id"]]
    day = pd.Timestamp(adm["admittime"]).normalize()
    days = pd.to_datetime(omr["chartdate"])
    rows = omr[(omr["subject_id"] == adm["subject_id"]) & (omr["result_name"] == "Weight (Lbs)")
               & (days >= day - pd.Timedelta(days=1)) & (days <= day + pd.Timedelta(days=1))]
    first = rows.assign(d=days[rows.index]).sort_values(["d", "seq_num"], kind="mergesort").iloc[0]
    assert row["weight"] == pytest.approx(float(first["result_value"]) * 0.45359237)


# ----------------------------------------------------------------------------------------------
# Stored representation
# ----------------------------------------------------------------------------------------------
def test_percentiles_fit_on_train_only() -> None:
    train = np.full((4, 7), np.nan)
    train[:, 0] = [60.0, 70.0, 80.0, 90.0]
    train[:, 1:] = 1.0
    ref = fit_vitals_percentiles(pd.DataFrame(train, columns=list(VITAL_NAMES)))
    assert ref.itemids == VITAL_ITEMIDS
    pct, observed = ref.transform(np.array([[75.0, *[1.0] * 5, np.nan], [200.0, *[1.0] * 6]]))
    assert pct[0, 0] == 0.5 and pct[1, 0] == 1.0 and observed[0].tolist() == [1] * 6 + [0]
    assert pct[0, 6] == pytest.approx(ref.means[6])
    with pytest.raises(ValueError, match="no observed training values"):
        fit_vitals_percentiles(np.where(np.arange(7) == 3, np.nan, train))
    with pytest.raises(ValueError, match=r"shape \(N, 7\)"):
        fit_vitals_percentiles(train[:, :5])
    with pytest.raises(ValueError, match=r"lacks vitals columns \['weight'\]"):
        fit_vitals_percentiles(pd.DataFrame(train[:, :6], columns=list(VITAL_NAMES[:6])))


def test_write_vitals_arrays_aligns_on_hadm_id(tmp_path: Path) -> None:
    for split, hadm in (("train", [100, 200, 300]), ("val", [101, 999])):
        (tmp_path / "data_npy" / split).mkdir(parents=True)
        np.save(tmp_path / "data_npy" / split / f"hadm_id_{split}.npy", np.array(hadm, dtype=np.int64))
    table = extract_admission_vitals(_frame(ADMISSIONS), chartevents=_frame(CHARTEVENTS), omr=_frame(OMR))
    table.loc[table["hadm_id"] == 101, "heart_rate"] = 500.0  # a val value above every train value
    for name in VITAL_NAMES:  # every vital needs one observed train value to have a percentile
        table.loc[table["hadm_id"] == 300, name] = table.loc[table["hadm_id"] == 300, name].fillna(1.0)
    ref = write_vitals_arrays(tmp_path, table)
    val = VitalsDataset(tmp_path, "val")
    assert val[0]["vitals"][0] == 1.0 and val[0]["vitals_observed"][0] == 1.0
    assert val[1]["vitals_observed"].sum() == 0  # hadm 999 is absent from the table: all missing
    np.testing.assert_allclose(val[1]["vitals"].numpy(), ref.means.astype(np.float32))
    raw = np.load(tmp_path / "data_npy" / "train" / "vitals_raw_train.npy")
    assert raw.dtype == np.float32 and raw[0, 0] == 88.0 and raw[1, 3] != raw[1, 3]  # NaN: no SpO2 for 200
    train = VitalsDataset(tmp_path, "train")
    # train heart rates {88, missing, 1}: the ECDF of the observed ones
    assert (train[0]["vitals"][0], train[2]["vitals"][0]) == (1.0, 0.5)
    assert train[1]["vitals"][0] == pytest.approx(ref.means[0]) and ref.means[0] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="repeats hadm_id 100"):
        write_vitals_arrays(tmp_path, pd.concat([table, table.iloc[:1]]))
    with pytest.raises(ValueError, match="train_split 'dev'"):
        write_vitals_arrays(tmp_path, table, train_split="dev")
