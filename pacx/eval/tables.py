"""Markdown tables of the evaluation, shaped like the paper's.

* :func:`main_results_table`: task, kind, metric, random init, MAE, PaCX, gain (PaCX - MAE in
  points), 95 % CI of PaCX and the paired p-value (PaCX vs MAE).
* :func:`low_data_table`: per task and training fraction, each encoder with its CI and the gain.
* :func:`alignment_table`: ridge readout and retrieval per encoder and teacher.

Values come from :func:`pacx.eval.probe_task` / :func:`pacx.eval.segmentation_probe`
results (their pooled value and bootstrap CI) or from plain numbers; :func:`main_table_row`
builds a row from such results.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["alignment_table", "low_data_table", "main_results_table", "main_table_row", "metric_point"]


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    v = float(value)
    return "n/a" if math.isnan(v) else f"{v:.{digits}f}"


def _fmt_ci(ci: Any, digits: int = 3) -> str:
    if ci is None or len(ci) != 2:
        return "-"
    return f"[{_fmt(ci[0], digits)}, {_fmt(ci[1], digits)}]"


def _fmt_gain(a: Any, b: Any) -> str:
    if a is None or b is None or math.isnan(float(a)) or math.isnan(float(b)):
        return "-"
    return f"{100 * (float(a) - float(b)):+.1f}"


def _fmt_p(p: Any) -> str:
    if p is None or math.isnan(float(p)):
        return "-"
    return "<0.001" if float(p) < 0.001 else f"{float(p):.3f}"


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def metric_point(result: Any, metric: str) -> tuple[float | None, list[float] | None]:
    """``(value, ci)`` of ``metric`` from a probe/segmentation result, a ``(value, low, high)`` tuple or a number.

    Probe results give their pooled (seed-averaged) value and its bootstrap CI; segmentation
    results give the mean per-image value and its CI.
    """
    if result is None:
        return None, None
    if isinstance(result, Mapping):
        if "pooled" in result:
            return result["pooled"].get(metric), result.get("ci", {}).get(metric)
        if metric in result:
            return result[metric], result.get("ci", {}).get(metric)
        if "value" in result:
            return result["value"], [result["low"], result["high"]] if "low" in result else None
        raise ValueError(f"metric {metric!r} not found in result with keys {sorted(result)}")
    if isinstance(result, (tuple, list)):
        return result[0], list(result[1:3]) if len(result) >= 3 else None
    return float(result), None


def main_table_row(
    task: str,
    kind: str,
    metric: str,
    results: Mapping[str, Any],
    comparison: Mapping[str, float] | None = None,
    names: Sequence[str] = ("random", "mae", "pacx"),
    metric_label: str | None = None,
) -> dict[str, Any]:
    """One row of :func:`main_results_table` from per-encoder results.

    Args:
        task: task name.
        kind: e.g. ``"physiology"`` or ``"anatomy"``.
        metric: metric key (``"auroc"``, ``"f1"``, ``"f1_tuned"``, ``"dice"``, ``"iou"``).
        results: ``{encoder name: result}``.
        comparison: :func:`pacx.eval.compare` output of PaCX vs MAE (for the p-value).
        names: keys of the random-init, MAE and PaCX encoders in ``results``.
        metric_label: printed metric name (defaults to ``metric``).

    Returns:
        A row dict.
    """
    random_v, _ = metric_point(results.get(names[0]), metric)
    mae_v, _ = metric_point(results.get(names[1]), metric)
    pacx_v, pacx_ci = metric_point(results.get(names[2]), metric)
    return {
        "task": task,
        "kind": kind,
        "metric": metric_label or metric,
        "random": random_v,
        "mae": mae_v,
        "pacx": pacx_v,
        "ci": pacx_ci,
        "p": None if comparison is None else comparison.get("p_value"),
    }


def main_results_table(rows: Sequence[Mapping[str, Any]], confidence_level: float = 0.95) -> str:
    """The paper-shaped main table in Markdown.

    Args:
        rows: dicts with ``task``, ``kind``, ``metric``, ``random``, ``mae``, ``pacx``, ``ci``
            (``[low, high]`` of PaCX) and ``p`` (see :func:`main_table_row`); optionally
            ``control`` (the shuffled-teacher control) and ``p_control`` (PaCX vs control),
            which add three columns when any row has them.
        confidence_level: printed in the CI column header.

    Returns:
        Markdown text; the gain is PaCX - MAE in points (x100).

    Example:
        >>> print(main_results_table([dict(task="TB", kind="anatomy", metric="AUROC", random=0.6,
        ...       mae=0.899, pacx=0.910, ci=[0.88, 0.94], p=0.04)]).splitlines()[2])
        | TB | anatomy | AUROC | 0.600 | 0.899 | 0.910 | +1.1 | [0.880, 0.940] | 0.040 |
    """
    header = [
        "task", "kind", "metric", "random init", "MAE", "PaCX", "gain (pts)",
        f"{confidence_level:.0%} CI (PaCX)", "p (PaCX vs MAE)",
    ]
    body = [
        [
            r["task"], r.get("kind", "-"), r["metric"], _fmt(r.get("random")), _fmt(r.get("mae")), _fmt(r.get("pacx")),
            _fmt_gain(r.get("pacx"), r.get("mae")), _fmt_ci(r.get("ci")), _fmt_p(r.get("p")),
        ]
        for r in rows
    ]
    if any(r.get("control") is not None for r in rows):  # the shuffled-teacher control, when it was run
        header += ["control", "PaCX - control (pts)", "p (PaCX vs control)"]
        for row, r in zip(body, rows):
            row += [_fmt(r.get("control")), _fmt_gain(r.get("pacx"), r.get("control")), _fmt_p(r.get("p_control"))]
    return _markdown(header, body)


def low_data_table(
    curves_by_task: Mapping[str, Mapping[str, Mapping[float, Any]]],
    metric: str = "auroc",
    reference: str = "MAE",
    candidate: str = "PaCX",
    confidence_level: float = 0.95,
) -> str:
    """Low-data results: one row per task and training fraction.

    Args:
        curves_by_task: ``{task: {encoder: {fraction: point}}}`` (points as in
            :func:`metric_point`).
        metric: metric key.
        reference: encoder the gain is measured against.
        candidate: encoder whose gain is reported.
        confidence_level: printed in the header.

    Returns:
        Markdown text with each encoder's value and CI and the gain (candidate - reference, points).
    """
    encoders: list[str] = []
    for curves in curves_by_task.values():
        encoders += [e for e in curves if e not in encoders]
    header = (
        ["task", "train fraction"]
        + [f"{e} ({confidence_level:.0%} CI)" for e in encoders]
        + [f"gain {candidate} - {reference} (pts)"]
    )
    body = []
    for task, curves in curves_by_task.items():
        fractions = sorted({float(f) for pts in curves.values() for f in pts})
        for f in fractions:
            cells, values = [], {}
            for e in encoders:
                point = curves.get(e, {}).get(f)
                v, ci = metric_point(point, metric)
                values[e] = v
                cells.append("-" if v is None else f"{_fmt(v)} {_fmt_ci(ci)}" if ci is not None else _fmt(v))
            label = f"{f:.0%}" if f >= 0.01 else f"{f:.1%}"
            body.append([task, label] + cells + [_fmt_gain(values.get(candidate), values.get(reference))])
    return _markdown(header, body)


def alignment_table(results: Mapping[str, Mapping[str, Mapping[str, Any]]], ks: Sequence[int] = (1, 5, 10)) -> str:
    """Alignment results per encoder and teacher.

    Args:
        results: ``{encoder: {teacher: alignment_metrics(...) output}}``.
        ks: recall cut-offs shown.

    Returns:
        Markdown text: R², raw and centred cosine, the random-pair centred cosine (chance),
        and recall@k of identity retrieval from the ridge predictions.
    """
    header = (
        ["encoder", "teacher", "R²", "cos (raw)", "cos (centred)", "random-pair cos (centred)"]
        + [f"R@{k}" for k in ks]
        + ["n test"]
    )
    body = []
    for encoder, by_teacher in results.items():
        for teacher, m in by_teacher.items():
            body.append(
                [encoder, teacher, _fmt(m.get("r2")), _fmt(m.get("cosine_raw")), _fmt(m.get("cosine_centered")),
                 _fmt(m.get("random_pair_cosine_centered"))]
                + [_fmt(m.get(f"recall@{k}")) for k in ks]
                + [str(m.get("n_test", "-"))]
            )
    return _markdown(header, body)
