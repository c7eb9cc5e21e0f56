"""pacx.nets: the models of every stage."""

from __future__ import annotations

from .distiller import LOSS_WEIGHT_PRESETS, PaCXDistiller
from .heads import ProjectionHead
from .lab_dae import LabDAE
from .mae import MAE_PRESETS, MAEOutput, MaskedAutoencoderViT, create_mae, list_mae_presets, sincos_2d_pos_embed
from .mae_checkpoints import (
    MAE_DECODER_PREFIXES,
    KeyReport,
    canonical_mae_state_dict,
    load_mae_checkpoint,
    mae_state_dict_to_timm,
)
from .net1d import Net1D, ecgfounder_12lead, load_ecgfounder_checkpoint, net1d_small
from .teachers import ECGTeacher, LabTeacher, Teacher, compute_teacher_embeddings

__all__ = [
    "ECGTeacher",
    "KeyReport",
    "LabDAE",
    "LabTeacher",
    "LOSS_WEIGHT_PRESETS",
    "MAEOutput",
    "MAE_DECODER_PREFIXES",
    "MAE_PRESETS",
    "MaskedAutoencoderViT",
    "Net1D",
    "PaCXDistiller",
    "ProjectionHead",
    "Teacher",
    "canonical_mae_state_dict",
    "compute_teacher_embeddings",
    "create_mae",
    "ecgfounder_12lead",
    "list_mae_presets",
    "load_ecgfounder_checkpoint",
    "load_mae_checkpoint",
    "mae_state_dict_to_timm",
    "net1d_small",
    "sincos_2d_pos_embed",
]
