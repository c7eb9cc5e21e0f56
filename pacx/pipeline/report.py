"""``results.json``, ``results.md`` and the check of the paper's claims on a finished run."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pacx.eval.tables import alignment_table, main_results_table
from pacx.io import atomic_write, save_json

__all__ = ["check_claims", "render_markdown", "write_report"]

ANATOMY_TOLERANCE = 0.01
PHYSIOLOGY_MIN_GAIN = 0.02
REGRESSION_ONLY_MARGIN = 0.01


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


def check_claims(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The paper's claims, each with whether this run supports it and the numbers behind it."""
    tasks = results.get("tasks", {})
    phys = {t: v for t, v in tasks.items() if v["kind"] == "physiology"}
    anat = {t: v for t, v in tasks.items() if v["kind"] == "anatomy"}
    claims = []
    gains = {t: v["pacx"]["mean"] - v["mae"]["mean"] for t, v in phys.items()}
    pvals = {t: v["p_value"] for t, v in phys.items()}
    claims.append({
        "claim": f"PaCX beats MAE on every physiology task by >= {PHYSIOLOGY_MIN_GAIN} AUROC, p < 0.05 on at least one",
        "holds": bool(phys) and all(g >= PHYSIOLOGY_MIN_GAIN for g in gains.values())
        and any(p < 0.05 for p in pvals.values()),
        "detail": {"gain": gains, "p_value": pvals},
    })
    diffs = {t: v["pacx"]["mean"] - v["mae"]["mean"] for t, v in anat.items()}
    claims.append({
        "claim": f"anatomy tasks: PaCX within {ANATOMY_TOLERANCE} of MAE",
        "holds": bool(anat) and all(abs(d) <= ANATOMY_TOLERANCE for d in diffs.values()),
        "detail": {"difference": diffs},
    })
    low = results.get("low_data", {})
    if low:
        fractions = sorted(low, key=float)
        gain_at = {f: float(np.mean([r["pacx"] - r["mae"] for r in low[f].values()])) for f in fractions}
        claims.append({
            "claim": "the gain at the smallest label fraction is larger than at 100%",
            "holds": len(fractions) > 1 and gain_at[fractions[0]] > gain_at[fractions[-1]],
            "detail": {"mean_gain_by_fraction": gain_at},
        })
    align = results.get("alignment", {})
    if align:
        claims.append({
            "claim": "alignment (centred cosine of a ridge readout) to each teacher is higher for PaCX than MAE",
            "holds": all(v["pacx"] > v["mae"] for v in align.values()),
            "detail": {t: {"mae": v["mae"], "pacx": v["pacx"]} for t, v in align.items()},
        })
    abl = results.get("ablations", {})
    if "regression_only" in abl and "full_objective" in abl:
        full = float(np.mean(list(abl["full_objective"]["physiology_auroc"].values())))
        reg = float(np.mean(list(abl["regression_only"]["physiology_auroc"].values())))
        claims.append({
            "claim": f"regression-only is clearly worse than the full objective (>= {REGRESSION_ONLY_MARGIN} mean AUROC)",
            "holds": full - reg >= REGRESSION_ONLY_MARGIN,
            "detail": {"full_objective": full, "regression_only": reg},
        })
    return claims


def _f(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}f}"


def render_markdown(results: Mapping[str, Any]) -> str:
    """The human-readable report of a run."""
    lines = [f"# PaCX-MAE results (profile `{results.get('profile')}`, seed {results.get('seed')})", ""]
    lines += [f"MAE mask ratio used in Stage 1: {results.get('mask_ratio')}.",
              "Values are linear-probe AUROC (mean over probe seeds; per-seed values and their std are in results.json) or mean per-image Dice/IoU; the CI is a "
              "95% bootstrap over test images of the seed-averaged prediction; p is a paired bootstrap of PaCX "
              "against MAE on the same test images. Low-data figures plot the seed-averaged prediction's AUROC with "
              "its bootstrap band, so their points can differ slightly from the per-seed means in the tables.", ""]
    rows = [{"task": task, "kind": v["kind"], "metric": v["metric"], "random": v["random"]["mean"],
             "mae": v["mae"]["mean"], "pacx": v["pacx"]["mean"], "ci": v["pacx"].get("ci"), "p": v.get("p_value")}
            for task, v in results.get("tasks", {}).items()]
    lines += ["## Main table", "", main_results_table(rows).rstrip()]
    low = results.get("low_data", {})
    if low:
        lines += ["", "## Low-data linear probe (AUROC, mean over seeds)", "",
                  "| fraction | task | MAE | PaCX | gain (pts) |", "|---|---|---|---|---|"]
        for frac in sorted(low, key=float):
            for task, r in low[frac].items():
                lines.append(f"| {float(frac):.0%} | {task} | {_f(r['mae'])} | {_f(r['pacx'])} | "
                             f"{(r['pacx'] - r['mae']) * 100:+.1f} |")
    details = results.get("alignment_details", {})
    if details:
        lines += ["", "## Alignment to the teachers (ridge readout from frozen CXR features, test split)", "",
                  alignment_table(details).rstrip()]
    heads = results.get("retrieval_through_heads", {})
    if heads:
        lines += ["", "Retrieval CXR → teacher through the trained Stage-2 projection heads (test split): " + "; ".join(
            f"{t}: R@1 {_f(m.get('recall@1'))}, R@10 {_f(m.get('recall@10'))} (n={m.get('n')})" for t, m in heads.items())]
    readout = results.get("latent_readout", {})
    if readout:
        variables = list(next(iter(readout.values())))
        lines += ["", "## What the CXR features read of the latent state (synthetic cohort; ridge R², probe test split)", "",
                  "| encoder | " + " | ".join(variables) + " |", "|---|" + "---|" * len(variables)]
        lines += [f"| {enc} | " + " | ".join(_f(r.get(v), 2) for v in variables) + " |" for enc, r in readout.items()]
    abl = results.get("ablations", {})
    if abl:
        tasks = list(next(iter(abl.values()))["physiology_auroc"])
        lines += ["", "## Ablations (physiology AUROC, mean over seeds; alignment = centred cosine)", "",
                  "| variant | " + " | ".join(tasks) + " | mean | alignment |",
                  "|---|" + "---|" * (len(tasks) + 2)]
        for name, row in abl.items():
            vals = [row["physiology_auroc"].get(t) for t in tasks]
            al = ", ".join(f"{t} {_f(c)}" for t, c in row.get("alignment", {}).items())
            lines.append(f"| {name} | " + " | ".join(_f(v) for v in vals) + f" | {_f(float(np.mean(vals)))} | {al} |")
    real = results.get("real_data")
    if real:
        lines += ["", "## Real radiographs: Montgomery TB (patient-level split)", "",
                  "| encoder | TB AUROC | lung Dice | lung IoU |", "|---|---|---|---|"]
        for enc in real.get("tb_auroc", {}):
            lines.append(f"| {enc} | {_f(real['tb_auroc'][enc]['mean'])} | {_f(real['lung_dice'][enc]['mean'])} | "
                         f"{_f(real['lung_iou'][enc]['mean'])} |")
    claims = results.get("claims", [])
    if claims:
        lines += ["", "## The paper's claims on this run", ""]
        lines += [f"- [{'x' if c['holds'] else ' '}] {c['claim']}" for c in claims]
    timings = results.get("timings", {})
    if timings:
        lines += ["", "## Timings (seconds)", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
    figures = results.get("figures", [])
    if figures:
        lines += ["", "## Figures", ""] + [f"- `{Path(f).name}`" for f in figures]
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
