"""Tests for pacx.data.labs: itemid order, admission-window extraction, ECDF percentiles."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pacx.data.labs import (
    SYMILE_LAB_ITEMIDS,
    SYMILE_LAB_NAMES,
    LabPercentiles,
    extract_admission_labs,
    load_labs_means,
)
from tests.utils import require_shared_data


def test_itemids_are_the_50_symile_labs_in_ascending_order():
    assert len(SYMILE_LAB_ITEMIDS) == 50 == len(set(SYMILE_LAB_ITEMIDS))
    assert list(SYMILE_LAB_ITEMIDS) == sorted(SYMILE_LAB_ITEMIDS)
    assert list(SYMILE_LAB_ITEMIDS) == sorted(SYMILE_LAB_ITEMIDS, key=str)  # Symile sorts key strings
    assert SYMILE_LAB_ITEMIDS[0] == 50802 and SYMILE_LAB_NAMES[0] == "Base Excess"
    assert SYMILE_LAB_NAMES[SYMILE_LAB_ITEMIDS.index(51221)] == "Hematocrit"
    assert SYMILE_LAB_ITEMIDS[-1] == 52172 and SYMILE_LAB_NAMES[-1] == "RDW-SD"


def _toy_tables():
    admissions = pd.DataFrame(
        {"subject_id": [1, 1, 2], "hadm_id": [100, 101, 200],
         "admittime": ["2150-01-01 12:00:00", "2150-03-01 00:00:00", "2150-01-01 00:00:00"]}
    )
    labevents = pd.DataFrame(
        {
            "subject_id": [1, 1, 1, 1, 1, 1, 2],
            "hadm_id": [np.nan, 100, 100, 100, 101, 100, 200],  # the first draw precedes the admission
            "itemid": [50912, 50912, 50912, 51221, 50912, 99999, 51221],
            "charttime": ["2150-01-01 02:00:00", "2150-01-01 13:00:00", "2150-01-01 13:00:00",
                          "2150-01-03 12:00:01", "2150-03-01 23:00:00", "2150-01-01 12:00:00", "2150-01-02 00:00:00"],
            "valuenum": [1.1, 2.2, 3.3, 40.0, 0.9, 5.0, 35.0],
        }
    )
    return labevents, admissions


def test_extract_earliest_value_within_window_matched_by_subject():
    labevents, admissions = _toy_tables()
    table = extract_admission_labs(labevents, admissions, itemids=(50912, 51221), drop_empty=False)
    assert table.columns.tolist() == ["subject_id", "hadm_id", 50912, 51221]
    rows = table.set_index("hadm_id")
    assert rows.loc[100, 50912] == 1.1  # pre-admission draw without hadm_id, 10 h before admittime
    assert np.isnan(rows.loc[100, 51221])  # 48 h + 1 s after admission: outside the window
    assert rows.loc[101, 50912] == 0.9 and np.isnan(rows.loc[101, 51221])
    assert rows.loc[200, 51221] == 35.0  # exactly +24 h is inside (inclusive)
    # A smaller window drops the pre-admission draw; ties keep the first row in file order.
    narrow = extract_admission_labs(labevents, admissions, window_hours=2, itemids=(50912,)).set_index("hadm_id")
    assert narrow.loc[100, 50912] == 2.2


def test_extract_drops_admissions_without_labs_by_default():
    labevents, admissions = _toy_tables()
    table = extract_admission_labs(labevents, admissions, itemids=(51221,))
    assert table["hadm_id"].tolist() == [200]


def test_extract_reports_missing_columns():
    labevents, admissions = _toy_tables()
    with pytest.raises(ValueError, match=r"labevents DataFrame lacks columns \['valuenum'\]"):
        extract_admission_labs(labevents.drop(columns="valuenum"), admissions)
    with pytest.raises(ValueError, match=r"admissions DataFrame lacks columns \['admittime'\]"):
        extract_admission_labs(labevents, admissions.drop(columns="admittime"))
    with pytest.raises(ValueError, match="window_hours"):
        extract_admission_labs(labevents, admissions, window_hours=0)


def test_itemids_absent_from_labevents_are_named_in_a_warning():
    labevents, admissions = _toy_tables()
    with pytest.warns(UserWarning, match=r"itemids \[12345, 54321\] never occur"):
        table = extract_admission_labs(labevents, admissions, itemids=(50912, 12345, 54321), drop_empty=False)
    assert table[12345].isna().all() and table[50912].notna().any()


def test_bad_values_and_unreadable_files_are_named(tmp_path):
    labevents, admissions = _toy_tables()
    bad = labevents.astype({"valuenum": object})
    bad.loc[3, "valuenum"] = "high"
    bad.to_csv(tmp_path / "labevents.csv", index=False)
    with pytest.raises(ValueError, match=r"labevents.csv.*'valuenum'.*'high'.*row 3"):
        extract_admission_labs(tmp_path / "labevents.csv", admissions, itemids=(51221,))
    late = labevents.copy()
    late.loc[4, "charttime"] = "yesterday"  # the 4th kept row of itemid 50912, file row 4
    with pytest.raises(ValueError, match=r"labevents DataFrame.*'charttime'.*'yesterday'.*row 4"):
        extract_admission_labs(late, admissions, itemids=(50912,))
    odd = admissions.copy()
    odd.loc[2, "admittime"] = "soon"
    with pytest.raises(ValueError, match=r"admissions DataFrame.*'admittime'.*'soon'.*row 2"):
        extract_admission_labs(labevents, odd, itemids=(50912,))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match=r"labevents file .*empty.csv.*empty"):
        extract_admission_labs(tmp_path / "empty.csv", admissions)
    with pytest.raises(ValueError, match=r"admissions file .*empty.csv.*empty"):
        extract_admission_labs(labevents, tmp_path / "empty.csv")


def test_percentiles_are_right_continuous_ecdf_fit_on_train():
    train = np.array([[1.0, np.nan], [2.0, 5.0], [2.0, 7.0], [4.0, np.nan]])
    lp = LabPercentiles.fit(train, itemids=[1, 2])
    values = np.array([[0.5, 4.0], [2.0, 5.0], [3.0, 7.0], [9.0, np.nan]])
    pct, observed = lp.transform(values)
    assert pct.dtype == np.float32 and observed.dtype == np.int64
    np.testing.assert_allclose(pct[:, 0], [0.0, 0.75, 0.75, 1.0])  # side='right': ties count as <=
    # Lab 2: 0 below the min, 0.5 at 5, 1 at the max; missing -> train mean percentile (0.5+1)/2.
    np.testing.assert_allclose(pct[:, 1], [0.0, 0.5, 1.0, 0.75])
    np.testing.assert_array_equal(observed[:, 1], [1, 1, 1, 0])
    assert lp.labs_means_json() == {"1_percentile": pytest.approx((0.25 + 0.75 + 0.75 + 1.0) / 4), "2_percentile": 0.75}


def test_percentiles_validation():
    with pytest.raises(ValueError, match=r"itemids \[2\]: no observed training values"):
        LabPercentiles.fit(np.array([[1.0, np.nan]]), itemids=[1, 2])
    lp = LabPercentiles.fit(np.ones((3, 2)), itemids=[1, 2])
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        lp.transform(np.ones((3, 3)))
    with pytest.raises(ValueError, match="infinite value at row 1"):
        lp.transform(np.array([[1.0, 1.0], [np.inf, 1.0]]))
    with pytest.raises(ValueError, match="no column for itemid 2"):
        lp.transform(pd.DataFrame({1: [1.0]}))


def test_load_labs_means(tmp_path):
    means = {f"{i}_percentile": 0.5 for i in SYMILE_LAB_ITEMIDS}
    path = tmp_path / "labs_means.json"
    path.write_text(json.dumps(means))
    assert load_labs_means(path).shape == (50,)
    del means["50802_percentile"]
    with pytest.raises(ValueError, match="50802_percentile"):
        load_labs_means(means)


@pytest.mark.real_data
def test_mimic_demo_extraction_and_percentiles():
    hosp = require_shared_data("mimic_iv_demo") / "hosp"
    table = extract_admission_labs(hosp / "labevents.csv.gz", hosp / "admissions.csv.gz")
    assert table.columns.tolist() == ["subject_id", "hadm_id", *SYMILE_LAB_ITEMIDS]
    assert len(table) > 100 and table["hadm_id"].is_unique
    assert table[list(SYMILE_LAB_ITEMIDS)].notna().any(axis=1).all()
    # Spot check against a direct pandas computation for creatinine (50912).
    events = pd.read_csv(hosp / "labevents.csv.gz", usecols=["subject_id", "itemid", "charttime", "valuenum"])
    events = events[(events["itemid"] == 50912) & events["valuenum"].notna()]
    events["charttime"] = pd.to_datetime(events["charttime"])
    admissions = pd.read_csv(hosp / "admissions.csv.gz", usecols=["subject_id", "hadm_id", "admittime"])
    admissions["admittime"] = pd.to_datetime(admissions["admittime"])
    for _, adm in admissions.set_index("hadm_id").loc[table["hadm_id"].iloc[:15]].iterrows():
        ev = events[events["subject_id"] == adm["subject_id"]]
        ev = ev[(ev["charttime"] - adm["admittime"]).abs() <= pd.Timedelta(hours=24)].sort_values("charttime", kind="mergesort")
        got = table.set_index("hadm_id").loc[adm.name, 50912]
        assert (np.isnan(got) and ev.empty) or got == ev["valuenum"].iloc[0]
    # Percentiles fit on a "train" half, applied to the rest.
    train, rest = table.iloc[: len(table) // 2], table.iloc[len(table) // 2 :]
    lp = LabPercentiles.fit(train)
    pct, observed = lp.transform(rest)
    assert pct.shape == (len(rest), 50) and ((pct >= 0) & (pct <= 1)).all()
    np.testing.assert_array_equal(observed, rest[list(SYMILE_LAB_ITEMIDS)].notna().to_numpy().astype(np.int64))
    means = np.array(list(lp.labs_means_json().values()))
    np.testing.assert_allclose(pct[observed == 0], np.broadcast_to(means, pct.shape)[observed == 0], rtol=1e-6)
