"""The low-data figure shows the low-data table's numbers: the mean AUROC over probe seeds."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import pacx.eval.figures as figures
from pacx.eval import plot_low_data_curves
from pacx.pipeline import evaluation


def _probe_result(per_seed: list[float], pooled: float) -> dict:
    """A probe_task-style result whose pooled AUROC differs from the mean of its seeds (as in real runs)."""
    mean = float(np.mean(per_seed))
    return {"per_seed": [{"auroc": v} for v in per_seed], "mean": {"auroc": mean},
            "std": {"auroc": float(np.std(per_seed, ddof=1))}, "pooled": {"auroc": pooled},
            "ci": {"auroc": [pooled - 0.05, pooled + 0.05]}}


@pytest.fixture
def drawn(monkeypatch):
    """Capture the matplotlib figure plot_low_data_curves saves."""
    saved = []
    monkeypatch.setattr(figures, "_save", lambda fig, path, dpi: saved.append(fig) or path)
    return saved


def test_figure_points_equal_the_table(monkeypatch, drawn, tmp_path):
    # The numbers of the report that showed the mismatch: pooled 0.553 -> 0.537, seed means 0.542 -> 0.480.
    low = {("mae", 0.1): _probe_result([0.50, 0.56, 0.57], 0.553),
           ("pacx", 0.1): _probe_result([0.45, 0.47, 0.52], 0.537)}
    monkeypatch.setattr(evaluation, "_probe", lambda ctx, name, task, fraction: low[(name, fraction)])
    ctx = SimpleNamespace(cfg={"eval": {"low_data_fractions": [0.1, 1.0]}}, tasks=lambda kind=None: ["reduced_ef"])
    probes = {"reduced_ef": {"mae": _probe_result([0.60, 0.62, 0.64], 0.65),
                             "pacx": _probe_result([0.66, 0.70, 0.71], 0.72)}}

    table, curves = evaluation._low_data(ctx, probes)
    plot_low_data_curves(curves["reduced_ef"], tmp_path / "low.png")

    ax = drawn[0].axes[0]
    plotted = {line.get_label(): dict(zip(line.get_xdata(), line.get_ydata())) for line in ax.lines}
    for label, name in (("MAE", "mae"), ("PaCX", "pacx")):
        for fraction in ("0.1", "1.0"):
            expected = table[fraction]["reduced_ef"][name]
            assert plotted[label][float(fraction) * 100] == pytest.approx(expected, abs=1e-12)
    assert plotted["PaCX"][10.0] == pytest.approx(0.48)  # the mean of the seeds, not the pooled 0.537
    # The band is one SD over the seeds, and the title says so.
    band = curves["reduced_ef"]["PaCX"][0.1]
    assert band[2] - band[0] == pytest.approx(np.std([0.45, 0.47, 0.52], ddof=1))
    assert "1 SD over probe seeds" in ax.get_title()


def test_probe_results_are_plotted_as_their_seed_mean(drawn, tmp_path):
    result = _probe_result([0.45, 0.47, 0.52], 0.537)
    plot_low_data_curves({"PaCX": {0.1: result, 1.0: (0.7, 0.69, 0.71)}}, tmp_path / "low.png")
    (line,) = drawn[0].axes[0].lines
    assert list(line.get_ydata()) == pytest.approx([0.48, 0.7])
