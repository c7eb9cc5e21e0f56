"""pacx.engine: the training loop of every stage, checkpoints, export and seeding.

Heavy optional imports (timm, MONAI, ONNX, TensorBoard) happen inside the functions that need
them, so importing the engine stays cheap in every worker process.
"""

from __future__ import annotations

from .checkpoint import (
    Checkpoint,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_weights,
    pack_state,
    prune_checkpoints,
    remove_incomplete_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
    save_final,
    unpack_state,
)
from .config import TrainerConfig
from .data import ResumableSampler, make_loader, move_to_device
from .embed import EmbeddingReport, embed_files, embed_folder, list_images, load_image
from .export import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    backbone_config,
    backbone_input_config,
    export_backbone,
    export_onnx,
    load_backbone,
    onnx_max_abs_diff,
)
from .launch import DistributedInfo, distributed_context
from .logging import MetricLogger
from .optim import build_optimizer, param_groups
from .schedule import WarmupCosine, warmup_cosine
from .seed import get_rng_state, seed_everything, seed_worker, set_rng_state
from .trainer import StepFn, Trainer, unwrap_model

__all__ = [
    "Checkpoint",
    "DistributedInfo",
    "EmbeddingReport",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MetricLogger",
    "ResumableSampler",
    "StepFn",
    "Trainer",
    "TrainerConfig",
    "WarmupCosine",
    "backbone_config",
    "backbone_input_config",
    "build_optimizer",
    "distributed_context",
    "embed_files",
    "embed_folder",
    "export_backbone",
    "export_onnx",
    "get_rng_state",
    "latest_checkpoint",
    "list_checkpoints",
    "list_images",
    "load_backbone",
    "load_checkpoint",
    "load_image",
    "load_weights",
    "make_loader",
    "move_to_device",
    "onnx_max_abs_diff",
    "pack_state",
    "param_groups",
    "prune_checkpoints",
    "remove_incomplete_checkpoints",
    "resolve_checkpoint",
    "save_checkpoint",
    "save_final",
    "seed_everything",
    "seed_worker",
    "set_rng_state",
    "unpack_state",
    "unwrap_model",
    "warmup_cosine",
]
