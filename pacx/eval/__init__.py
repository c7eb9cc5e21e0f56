"""pacx.eval: Stage-3 evaluation on frozen encoders.

Cached feature extraction (:func:`extract_features`), linear probes over seeds with
bootstrap CIs and paired tests (:func:`probe_task`, :func:`compare`), low-data subsets,
the segmentation probe on cached patch tokens, ridge alignment and retrieval against
teacher embeddings, attention rollout, metrics (MONAI, NaN-aware), figures and Markdown
tables, and a ready Montgomery evaluation (:func:`evaluate_montgomery`).
"""

from __future__ import annotations

from .alignment import RidgeReadout, alignment_metrics, fit_ridge, predict_ridge, r2_score, retrieval_recall_at_k
from .features import POOLS, dataset_fingerprint, encode_batch, encoder_fingerprint, extract_features, feature_cache_key
from .figures import plot_low_data_curves, plot_mae_reconstruction, plot_rollout_overlays, plot_training_curves
from .linear_probe import PROBE_METHODS, compare, predict_linear_probe, probe_task, train_linear_probe
from .low_data import LOW_DATA_FRACTIONS, low_data_indices, low_data_subsets
from .metrics import (
    TASK_TYPES,
    ConfidenceInterval,
    auroc_statistic,
    binarize_predictions,
    bootstrap_ci,
    classification_metrics,
    delong_test,
    dice_per_image,
    f1_per_label,
    f1_statistic,
    iou_per_image,
    macro_auroc,
    mean_statistic,
    nanmean_warn,
    paired_bootstrap,
    roc_auc_per_label,
    seed_mean_std,
    to_multi_hot,
    tune_thresholds,
)
from .real_data import MONTGOMERY_PROBE_DEFAULTS, MONTGOMERY_SEG_DEFAULTS, default_montgomery_dir, evaluate_montgomery
from .rollout import attention_maps, attention_rollout, select_rescue_cases, upsample_maps
from .segmentation import SegmentationDecoder, compare_segmentation, segmentation_probe, train_segmentation_probe
from .tables import alignment_table, low_data_table, main_results_table, main_table_row, metric_point

__all__ = [
    "ConfidenceInterval",
    "LOW_DATA_FRACTIONS",
    "MONTGOMERY_PROBE_DEFAULTS",
    "MONTGOMERY_SEG_DEFAULTS",
    "POOLS",
    "PROBE_METHODS",
    "RidgeReadout",
    "SegmentationDecoder",
    "TASK_TYPES",
    "alignment_metrics",
    "alignment_table",
    "attention_maps",
    "attention_rollout",
    "auroc_statistic",
    "binarize_predictions",
    "bootstrap_ci",
    "classification_metrics",
    "compare",
    "compare_segmentation",
    "dataset_fingerprint",
    "default_montgomery_dir",
    "delong_test",
    "dice_per_image",
    "encode_batch",
    "encoder_fingerprint",
    "evaluate_montgomery",
    "extract_features",
    "f1_per_label",
    "f1_statistic",
    "feature_cache_key",
    "fit_ridge",
    "iou_per_image",
    "low_data_indices",
    "low_data_subsets",
    "low_data_table",
    "macro_auroc",
    "main_results_table",
    "main_table_row",
    "mean_statistic",
    "metric_point",
    "nanmean_warn",
    "paired_bootstrap",
    "plot_low_data_curves",
    "plot_mae_reconstruction",
    "plot_rollout_overlays",
    "plot_training_curves",
    "predict_linear_probe",
    "predict_ridge",
    "probe_task",
    "r2_score",
    "retrieval_recall_at_k",
    "roc_auc_per_label",
    "seed_mean_std",
    "segmentation_probe",
    "select_rescue_cases",
    "to_multi_hot",
    "train_linear_probe",
    "train_segmentation_probe",
    "tune_thresholds",
    "upsample_maps",
]
