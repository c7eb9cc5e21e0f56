"""Markdown tables."""

from __future__ import annotations

from pacx.eval.tables import alignment_table, low_data_table, main_results_table, main_table_row, metric_point


def test_main_table_row_from_results_and_format():
    results = {
        "random": {"pooled": {"auroc": 0.61}, "ci": {"auroc": [0.5, 0.7]}},
        "mae": {"pooled": {"auroc": 0.695}, "ci": {"auroc": [0.6, 0.8]}},
        "pacx": {"pooled": {"auroc": 0.722}, "ci": {"auroc": [0.70, 0.75]}},
    }
    row = main_table_row("MedMod", "physiology", "auroc", results, {"p_value": 0.0004}, metric_label="AUROC (macro)")
    seg_results = {"mae": {"iou": 0.9, "ci": {"iou": [0.88, 0.92]}}, "pacx": {"iou": 0.9}}
    seg = main_table_row("lung", "anatomy", "iou", seg_results)
    text = main_results_table([row, seg])
    lines = text.strip().splitlines()
    assert lines[0].startswith("| task | kind | metric | random init | MAE | PaCX | gain (pts) | 95% CI (PaCX)")
    assert lines[2] == (
        "| MedMod | physiology | AUROC (macro) | 0.610 | 0.695 | 0.722 | +2.7 | [0.700, 0.750] | <0.001 |"
    )
    assert lines[3] == "| lung | anatomy | iou | - | 0.900 | 0.900 | +0.0 | - | - |"


def test_low_data_and_alignment_tables():
    curves = {"NIH": {"MAE": {0.01: (0.637, 0.62, 0.65), 1.0: (0.772, 0.76, 0.78)},
                      "PaCX": {0.01: (0.673, 0.66, 0.69), 1.0: (0.784, 0.77, 0.80)}}}
    text = low_data_table(curves)
    assert "| NIH | 1% | 0.637 [0.620, 0.650] | 0.673 [0.660, 0.690] | +3.6 |" in text
    assert "| NIH | 100% |" in text
    al = alignment_table({"PaCX": {"ecg": {"r2": 0.1, "cosine_raw": 0.9, "cosine_centered": 0.3,
                                           "random_pair_cosine_centered": 0.0, "recall@1": 0.05, "recall@5": 0.2,
                                           "recall@10": 0.3, "n_test": 464}}})
    assert "| PaCX | ecg | 0.100 | 0.900 | 0.300 | 0.000 | 0.050 | 0.200 | 0.300 | 464 |" in al
    assert metric_point(0.5, "auroc") == (0.5, None)
