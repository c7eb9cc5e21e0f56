"""pacx.adapters: hand-written LoRA, the Stage-2 tuning strategies and peft-format adapter files."""

from __future__ import annotations

from .lora import LoRALinear
from .peft_format import export_peft_adapter, load_peft_adapter
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
    "export_peft_adapter",
    "load_lora_state_dict",
    "load_peft_adapter",
    "lora_state_dict",
    "merge_lora",
    "unmerge_lora",
    "unwrap_lora",
]
