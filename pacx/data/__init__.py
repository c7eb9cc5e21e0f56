"""pacx.data: readers, preprocessing, splits and the synthetic cohort.

Readers: :class:`SymileMIMIC` (Symile-MIMIC ``data_npy`` arrays), :class:`CheXpertDataset`,
:class:`CSVImageDataset`, :class:`ImageMaskDataset`, :func:`read_wfdb_ecg`; wrappers adding
teacher embeddings or labels; ECGFounder ECG preprocessing; lab extraction and percentiles;
the vital signs (:class:`VitalsDataset`, MIMIC-IV extraction); MONAI/torchvision CXR
transforms and the Stage-2 batch augmentation on the device (:class:`BatchAugment`);
patient-level splits and nested low-data subsets.
"""

from __future__ import annotations

from .batch_augment import BatchAugment, eval_batch_transform, stage2_batch_transform
from .chexpert import CHEXPERT_FINDINGS, CheXpertDataset, chexpert_patient_id
from .csv_classification import CSVImageDataset, join_image_path, read_csv_table
from .ecg import (
    ECGFOUNDER_LEADS,
    MIMIC_LEADS,
    filter_ecg,
    mimic_to_ecgfounder,
    preprocess_ecg,
    read_wfdb_ecg,
    zscore_global,
)
from .labs import SYMILE_LAB_ITEMIDS, SYMILE_LAB_NAMES, LabPercentiles, extract_admission_labs, load_labs_means
from .segmentation import IMAGE_SUFFIXES, ImageMaskDataset, montgomery_label, montgomery_patient_id
from .splits import check_overlap, low_data_subset, patient_split
from .symile import SYMILE_MODALITIES, SymileMIMIC, load_task_labels, resolve_symile_root
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CXRTransform,
    denormalize_imagenet,
    eval_transform,
    load_cxr,
    load_cxr_transform,
    load_mask,
    normalize_imagenet,
    stage1_train_transform,
    stage2_train_transform,
    to_grayscale_8bit,
)
from .vitals import VitalsDataset, extract_admission_vitals, fit_vitals_percentiles, write_vitals_arrays
from .wrappers import EmbeddingDataset, LabelledDataset, load_teacher_embeddings

# --- synthetic cohort (pacx.data.synthetic, owned by the synthetic-cohort engineer) ---------
from . import synthetic
from .synthetic import make_cohort

# ----------------------------------------------------------------------------------------------

__all__ = [
    "BatchAugment",
    "CHEXPERT_FINDINGS",
    "CSVImageDataset",
    "CXRTransform",
    "CheXpertDataset",
    "ECGFOUNDER_LEADS",
    "EmbeddingDataset",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_SUFFIXES",
    "ImageMaskDataset",
    "LabPercentiles",
    "LabelledDataset",
    "MIMIC_LEADS",
    "SYMILE_LAB_ITEMIDS",
    "SYMILE_LAB_NAMES",
    "SYMILE_MODALITIES",
    "SymileMIMIC",
    "VitalsDataset",
    "check_overlap",
    "chexpert_patient_id",
    "denormalize_imagenet",
    "eval_batch_transform",
    "eval_transform",
    "extract_admission_labs",
    "extract_admission_vitals",
    "filter_ecg",
    "fit_vitals_percentiles",
    "join_image_path",
    "load_cxr",
    "load_cxr_transform",
    "load_labs_means",
    "load_mask",
    "load_task_labels",
    "load_teacher_embeddings",
    "low_data_subset",
    "make_cohort",
    "mimic_to_ecgfounder",
    "montgomery_label",
    "montgomery_patient_id",
    "normalize_imagenet",
    "patient_split",
    "preprocess_ecg",
    "read_csv_table",
    "read_wfdb_ecg",
    "resolve_symile_root",
    "stage1_train_transform",
    "stage2_batch_transform",
    "stage2_train_transform",
    "to_grayscale_8bit",
    "write_vitals_arrays",
    "zscore_global",
]
