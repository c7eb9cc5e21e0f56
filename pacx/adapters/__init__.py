"""pacx.adapters: hand-written LoRA and the Stage-2 tuning strategies (torch only)."""

from __future__ import annotations

from .lora import LoRALinear
from .tuning import (
    LoRASummary,
    apply_lora,
    apply_tuning,
    load_lora_state_dict,
    lora_state_dict,
    merge_lora,
    unmerge_lora,
    unwrap_lora,
)

__all__ = [
    "LoRALinear",
    "LoRASummary",
    "apply_lora",
    "apply_tuning",
    "load_lora_state_dict",
    "lora_state_dict",
    "merge_lora",
    "unmerge_lora",
    "unwrap_lora",
]
