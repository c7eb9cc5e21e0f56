"""``results.json``, ``results.md`` and the check of the paper's claims on a finished run."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pacx.eval.tables import alignment_table, main_results_table
from pacx.io import atomic_write, save_json

from .evaluation import CONTROL, SETTING_THRESHOLDS

__all__ = ["check_claims", "render_markdown", "write_report"]

ANATOMY_TOLERANCE = 0.01
PHYSIOLOGY_MIN_GAIN = 0.02
REGRESSION_ONLY_MARGIN = 0.01
CONTROL_MIN_GAIN = 0.02


def _clean(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN/inf to None, large arrays dropped."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist()) if obj.size <= 64 else None
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    return obj


def _gain(entry: Mapping[str, Any], a: str, b: str) -> float:
    return entry[a]["mean"] - entry[b]["mean"]


def _claim(text: str, holds: bool, detail: Any) -> dict[str, Any]:
    return {"claim": text, "holds": bool(holds), "detail": detail}


def _table_claims(tasks: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Claims read off the main table: physiology gain, anatomy parity, the control."""
    phys = {t: v for t, v in tasks.items() if v["kind"] == "physiology"}
    anat = {t: v for t, v in tasks.items() if v["kind"] == "anatomy"}
    gains = {t: _gain(v, "pacx", "mae") for t, v in phys.items()}
    pvals = {t: v["p_value"] for t, v in phys.items()}
    claims = [_claim(f"PaCX beats MAE on every physiology task by >= {PHYSIOLOGY_MIN_GAIN} AUROC, p < 0.05 on at "
                     "least one", bool(phys) and all(g >= PHYSIOLOGY_MIN_GAIN for g in gains.values())
                     and any(p < 0.05 for p in pvals.values()), {"gain": gains, "p_value": pvals})]
    diffs = {t: _gain(v, "pacx", "mae") for t, v in anat.items()}
    claims.append(_claim(f"anatomy tasks: PaCX within {ANATOMY_TOLERANCE} of MAE",
                         bool(anat) and all(abs(d) <= ANATOMY_TOLERANCE for d in diffs.values()), {"difference": diffs}))
    if phys and all(CONTROL in v for v in phys.values()):
        ctrl = {t: _gain(v, "pacx", CONTROL) for t, v in tasks.items() if CONTROL in v}
        ctrl_p = {t: v.get("p_value_control") for t, v in tasks.items() if CONTROL in v}
        holds = all(ctrl[t] >= CONTROL_MIN_GAIN for t in phys) and all(
            ctrl[t] < CONTROL_MIN_GAIN for t in anat if t in ctrl)
        claims.append(_claim(f"PaCX beats the shuffled-teacher control by >= {CONTROL_MIN_GAIN} AUROC on every "
                             "physiology task, and not on the anatomy probe", holds, {"gain": ctrl, "p_value": ctrl_p}))
    return claims


def check_claims(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The paper's claims (and the control claim), each with whether this run supports it.

    When the setting checks failed, every claim keeps its numbers and ``holds`` but gets
    ``status: "setting not reproduced"``: the run cannot test the paper's claims.
    """
    claims = _table_claims(results.get("tasks", {}))
    low = results.get("low_data", {})
    if low:
        fractions = sorted(low, key=float)
        gain_at = {f: float(np.mean([r["pacx"] - r["mae"] for r in low[f].values()])) for f in fractions}
        claims.append(_claim("the gain at the smallest label fraction is larger than at 100%",
                             len(fractions) > 1 and gain_at[fractions[0]] > gain_at[fractions[-1]],
                             {"mean_gain_by_fraction": gain_at}))
    align = results.get("alignment", {})
    if align:
        claims.append(_claim("alignment (centred cosine of a ridge readout) to each teacher is higher for PaCX than MAE",
                             all(v["pacx"] > v["mae"] for v in align.values()),
                             {t: {"mae": v["mae"], "pacx": v["pacx"]} for t, v in align.items()}))
    abl = results.get("ablations", {})
    if "regression_only" in abl and "full_objective" in abl:
        full = float(np.mean(list(abl["full_objective"]["physiology_auroc"].values())))
        reg = float(np.mean(list(abl["regression_only"]["physiology_auroc"].values())))
        claims.append(_claim(f"regression-only is clearly worse than the full objective (>= {REGRESSION_ONLY_MARGIN} "
                             "mean AUROC)", full - reg >= REGRESSION_ONLY_MARGIN,
                             {"full_objective": full, "regression_only": reg}))
    setting = results.get("setting_checks")
    reproduced = setting is None or bool(setting.get("passed"))
    for c in claims:
        c["status"] = ("holds" if c["holds"] else "fails") if reproduced else "setting not reproduced"
    return claims


def _f(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}f}"


def _setting_section(setting: Mapping[str, Any]) -> list[str]:
    """The setting checks, printed first: does this run reproduce the paper's setting?"""
    verdict = "reproduced" if setting.get("passed") else "NOT reproduced: the claims below cannot be tested"
    n = setting.get("n", {})
    lines = ["## Setting checks (validation data)", "", f"**Setting {verdict}.**", "",
             f"- [{'x' if setting['prior']['holds'] else ' '}] the MAE prior beats the random-init encoder by >= "
             f"{SETTING_THRESHOLDS['prior_min_gain']} AUROC on every probe task (probe_val, n={n.get('probe_val')})"]
    lines += [f"  - {t}: random {_f(v['random'])}, MAE {_f(v['mae'])} (gain {_f(setting['prior']['detail']['gain'][t])})"
              for t, v in setting["prior"]["detail"]["auroc_val"].items()]
    lines.append(f"- [{'x' if setting['teachers']['holds'] else ' '}] each teacher's embedding probe beats every CXR "
                 f"encoder by >= {SETTING_THRESHOLDS['teacher_min_margin']} AUROC on every physiology task "
                 f"(cohort val, n={n.get('cohort_val')})")
    for task, d in setting["teachers"]["detail"].items():
        teach = ", ".join(f"{t} {_f(a)}" for t, a in d["teachers"].items())
        cxr = ", ".join(f"{e} {_f(a)}" for e, a in d["cxr"].items())
        lines.append(f"  - {task}: teachers {teach}; CXR encoders {cxr}")
    lines += ["- reported, not gating: a linear probe on 32x32 raw pixels (probe_val): " + "; ".join(
        f"{t} pixels {_f(g['pixels'])} vs MAE {_f(g['mae'])}" for t, g in setting.get("pixel_gap", {}).items())]
    return lines


def _claims_section(claims: list[dict[str, Any]]) -> list[str]:
    lines = ["", "## The paper's claims on this run (probe test split)", ""]
    for c in claims:
        mark = {"holds": "x", "fails": " "}.get(c["status"], "-")
        suffix = "" if c["status"] in ("holds", "fails") else f" (not tested: {c['status']})"
        lines.append(f"- [{mark}] {c['claim']}{suffix}")
    return lines


def _tables_section(results: Mapping[str, Any]) -> list[str]:
    rows = [{"task": task, "kind": v["kind"], "metric": v["metric"], "random": v["random"]["mean"],
             "mae": v["mae"]["mean"], "pacx": v["pacx"]["mean"], "ci": v["pacx"].get("ci"), "p": v.get("p_value"),
             "control": v.get(CONTROL, {}).get("mean"), "p_control": v.get("p_value_control")}
            for task, v in results.get("tasks", {}).items()]
    lines = ["", "## Main table (probe test split)", "", main_results_table(rows).rstrip()]
    low = results.get("low_data", {})
    if low:
        lines += ["", "## Low-data linear probe (AUROC, mean over seeds)", "",
                  "| fraction | task | MAE | PaCX | gain (pts) |", "|---|---|---|---|---|"]
        lines += [f"| {float(frac):.0%} | {task} | {_f(r['mae'])} | {_f(r['pacx'])} | {(r['pacx'] - r['mae']) * 100:+.1f} |"
                  for frac in sorted(low, key=float) for task, r in low[frac].items()]
    details = results.get("alignment_details", {})
    if details:
        lines += ["", "## Alignment to the teachers (ridge readout from frozen CXR features, cohort test split)", "",
                  alignment_table(details).rstrip()]
    abl = results.get("ablations", {})
    if abl:
        tasks = list(next(iter(abl.values()))["auroc"])
        lines += ["", "## Stage-2 variants (probe AUROC, mean over seeds; alignment = centred cosine)", "",
                  "| variant | " + " | ".join(tasks) + " | alignment |", "|---|" + "---|" * (len(tasks) + 1)]
        for name, row in abl.items():
            al = ", ".join(f"{t} {_f(c)}" for t, c in row.get("alignment", {}).items())
            lines.append(f"| {name} | " + " | ".join(_f(row["auroc"].get(t)) for t in tasks) + f" | {al} |")
    return lines


def _diagnostics_section(results: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    heads = results.get("retrieval_through_heads", {})
    if heads:
        lines += ["", "Retrieval CXR → teacher through the trained Stage-2 projection heads (cohort test split): " +
                  "; ".join(f"{t}: R@1 {_f(m.get('recall@1'))}, R@10 {_f(m.get('recall@10'))} (n={m.get('n')})"
                            for t, m in heads.items())]
    readout = results.get("latent_readout", {})
    if readout:
        variables = list(next(iter(readout.values())))
        lines += ["", "## What the CXR features read of the latent state (synthetic cohort; ridge R², probe test split)",
                  "", "| features | " + " | ".join(variables) + " |", "|---|" + "---|" * len(variables)]
        lines += [f"| {enc} | " + " | ".join(_f(r.get(v), 2) for v in variables) + " |" for enc, r in readout.items()]
    real = results.get("real_data")
    if real:
        lines += ["", "## Real radiographs: Montgomery TB (patient-level split)", "",
                  "| encoder | TB AUROC | lung Dice | lung IoU |", "|---|---|---|---|"]
        lines += [f"| {e} | {_f(real['tb_auroc'][e]['mean'])} | {_f(real['lung_dice'][e]['mean'])} | "
                  f"{_f(real['lung_iou'][e]['mean'])} |" for e in real.get("tb_auroc", {})]
    timings = results.get("timings", {})
    if timings:
        lines += ["", "## Timings (seconds)", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
    figures = results.get("figures", {})
    if figures:
        lines += ["", "## Figures", ""] + [f"- `{Path(f).name}`" for f in figures.get("written", [])]
        lines += [f"- `{name}.png` not drawn: {why}" for name, why in figures.get("skipped", {}).items()]
    return lines


def render_markdown(results: Mapping[str, Any]) -> str:
    """The human-readable report of a run: setting checks first, then the claims, tables and diagnostics."""
    lines = [f"# PaCX-MAE results (profile `{results.get('profile')}`, seed {results.get('seed')})", "",
             f"MAE mask ratio used in Stage 1: {results.get('mask_ratio')}. Values are linear-probe AUROC (mean over "
             "probe seeds) or mean per-image Dice/IoU; CIs are 95% bootstraps over test images; p is a paired "
             "bootstrap of PaCX against MAE (and against the shuffled-teacher control) on the same test images.", ""]
    if results.get("setting_checks"):
        lines += _setting_section(results["setting_checks"])
    lines += _claims_section(results.get("claims", []))
    lines += _tables_section(results) + _diagnostics_section(results)
    return "\n".join(lines) + "\n"


def write_report(results: dict[str, Any], out: str | Path) -> None:
    """Add the claim check to ``results`` and write ``results.json`` and ``results.md`` atomically."""
    out = Path(out)
    results["claims"] = check_claims(results)
    clean = _clean(results)
    save_json(clean, out / "results.json")
    text = render_markdown(clean)

    def _write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    atomic_write(out / "results.md", _write)
