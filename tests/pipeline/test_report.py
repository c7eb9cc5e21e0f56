"""The claims check and the report: setting checks gate the claims; the control claim."""

from __future__ import annotations

import json

from pacx.pipeline.report import check_claims, render_markdown, write_report


def _entry(kind: str, random: float, mae: float, pacx: float, control: float, p: float = 0.01) -> dict:
    m = lambda v: {"mean": v, "ci": [v - 0.01, v + 0.01]}  # noqa: E731
    return {"kind": kind, "metric": "auroc", "random": m(random), "mae": m(mae), "pacx": m(pacx),
            "shuffled_teachers": m(control), "p_value": p, "p_value_control": p}


def _results(passed: bool = True, control_phys: float = 0.60, control_nodule: float = 0.60) -> dict:
    setting = {"passed": passed,
               "prior": {"holds": passed, "detail": {"auroc_val": {"nodule": {"random": 0.5, "mae": 0.6}},
                                                      "gain": {"nodule": 0.1}, "threshold": 0.03}},
               "teachers": {"holds": True, "detail": {}, "threshold": 0.05},
               "pixel_gap": {"nodule": {"pixels": 0.7, "mae": 0.6, "mae_minus_pixels": -0.1}},
               "n": {"probe_val": 4000, "cohort_val": 200}}
    return {"profile": "cpu", "seed": 0, "setting_checks": setting,
            "tasks": {"reduced_ef": _entry("physiology", 0.55, 0.60, 0.65, control_phys),
                      "fluid_overload": _entry("physiology", 0.55, 0.60, 0.64, control_phys),
                      "nodule": _entry("anatomy", 0.55, 0.60, 0.605, control_nodule)}}


def _claim(claims: list, word: str) -> dict:
    return next(c for c in claims if word in c["claim"])


def test_control_claim_needs_a_physiology_gain_and_none_on_the_anatomy_probe() -> None:
    assert _claim(check_claims(_results()), "control")["holds"]
    assert not _claim(check_claims(_results(control_phys=0.64)), "control")["holds"]  # 0.01 above the control
    assert not _claim(check_claims(_results(control_nodule=0.55)), "control")["holds"]  # nodule gains too


def test_failed_setting_checks_mark_every_claim_not_tested() -> None:
    good = check_claims(_results(passed=True))
    assert {c["status"] for c in good} <= {"holds", "fails"}
    assert _claim(good, "physiology task by")["status"] == "holds"
    bad = check_claims(_results(passed=False))
    assert all(c["status"] == "setting not reproduced" for c in bad)
    text = render_markdown({**_results(passed=False), "claims": bad})
    assert text.index("## Setting checks") < text.index("## The paper's claims")
    assert "Setting NOT reproduced" in text and "not tested: setting not reproduced" in text
    assert "| control |" in text or "control" in text.split("## Main table")[1].splitlines()[2]


def test_write_report_is_json_safe(tmp_path) -> None:
    results = _results()
    results["tasks"]["nodule"]["p_value"] = float("nan")
    write_report(results, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["tasks"]["nodule"]["p_value"] is None and saved["claims"]
    assert (tmp_path / "results.md").read_text().startswith("# PaCX-MAE results")
