"""pacx LoRA adapters in peft's on-disk format, to hand adapters to and from Hugging Face peft.

A peft LoRA adapter folder holds ``adapter_config.json`` (a ``peft.LoraConfig``) and
``adapter_model.safetensors``, whose keys carry peft's wrapper prefix and ``.weight`` suffix:
``base_model.model.<module>.lora_A.weight`` (r x in), ``...lora_B.weight`` (out x r), and the
parameters of ``modules_to_save`` under their plain names (``base_model.model.norm.weight``).
peft computes the same update as :class:`pacx.adapters.LoRALinear`
(``scaling * B @ A``, ``scaling = lora_alpha / r`` or ``lora_alpha / sqrt(r)`` with
``use_rslora``), with one adapter over a fused ``qkv``, so the tensors map one to one.

timm's ViT is a plain ``nn.Module`` for peft: load an exported adapter with
``peft.PeftModel.from_pretrained(timm_vit, folder)``; save one for pacx with
``peft.get_peft_model(vit, LoraConfig(...)).save_pretrained(folder)``. Only what pacx's LoRA
expresses is read or written: one rank, alpha and dropout for every layer, no bias, no DoRA.
peft itself is not needed here; files go through :mod:`pacx.io` (atomic, safetensors + JSON).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pacx.io import load_json, load_safetensors, save_json, save_safetensors

from .lora import LoRALinear
from .tuning import (
    LoRASummary,
    _base_module,
    _matches,
    _norm_names_for_state,
    _require_lora,
    _select_norms,
    apply_lora,
    load_lora_state_dict,
    lora_state_dict,
)

__all__ = ["PEFT_CONFIG_NAME", "PEFT_WEIGHTS_NAME", "export_peft_adapter", "load_peft_adapter"]

PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
_PREFIX = "base_model.model."  # PeftModel.base_model (a LoraModel) .model (the wrapped network)
# LoraConfig options pacx's LoRA cannot express, with the value that means "not used".
_UNSUPPORTED = {
    "bias": "none",
    "use_dora": False,
    "fan_in_fan_out": False,
    "lora_bias": False,
    "rank_pattern": {},
    "alpha_pattern": {},
    "target_parameters": None,
}


def _shared(lora: list[tuple[str, LoRALinear]], attr: str) -> Any:
    values = {getattr(module, attr) for _, module in lora}
    if len(values) != 1:
        raise ValueError(f"peft's LoraConfig needs one {attr} for every adapter, got {sorted(values)}")
    return values.pop()


def _target_modules(model: nn.Module, wrapped: list[str]) -> list[str]:
    """Last name segments when, under peft's matching rule, they select exactly the wrapped layers."""
    inner = tuple(f"{name}." for name in wrapped)  # the LoRA layers' own submodules
    names = [n for n, _ in model.named_modules() if n and not n.startswith(inner)]
    suffixes = sorted({name.rsplit(".", 1)[-1] for name in wrapped})
    selected = {n for n in names if any(_matches(n, s) for s in suffixes)}
    return suffixes if selected == set(wrapped) else sorted(wrapped)


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def export_peft_adapter(
    model: nn.Module, path_dir: str | os.PathLike, base_model_name_or_path: str | None = None
) -> Path:
    """Write a model's LoRA adapters (and trainable norms) as a peft LoRA adapter folder.

    The adapter does not depend on the merge state (merged models export the same files); it
    applies to the base weights the adapters were trained on.

    Args:
        model: a model carrying pacx LoRA adapters (e.g. after :func:`pacx.adapters.apply_lora`).
        path_dir: destination folder; ``adapter_config.json`` and ``adapter_model.safetensors``
            are written into it (atomically, file by file).
        base_model_name_or_path: recorded in the config for peft's ``AutoPeftModel`` (e.g. the
            timm name or the exported backbone folder). Defaults to None.

    Returns:
        The folder.

    Raises:
        ValueError: when the model has no adapters or its adapters differ in rank, alpha,
            dropout or scaling rule (one ``LoraConfig`` describes them all).

    Example:
        >>> import timm
        >>> vit = timm.create_model("vit_tiny_patch16_224", num_classes=0)
        >>> _ = apply_lora(vit, r=8)
        >>> sorted(p.name for p in export_peft_adapter(vit, "adapter").iterdir())  # doctest: +SKIP
        ['adapter_config.json', 'adapter_model.safetensors']
    """
    base = _base_module(model)
    lora = _require_lora(base, "export_peft_adapter")
    wrapped = [name for name, _ in lora]
    norms = _norm_names_for_state(base)
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model_name_or_path,
        "r": _shared(lora, "r"),
        "lora_alpha": _number(_shared(lora, "alpha")),
        "lora_dropout": _shared(lora, "dropout_p"),
        "use_rslora": _shared(lora, "rslora"),
        "target_modules": _target_modules(base, wrapped),
        "modules_to_save": norms or None,
        "init_lora_weights": True,
        "inference_mode": True,
        **_UNSUPPORTED,
        "auto_mapping": {"base_model_class": type(base).__name__, "parent_library": type(base).__module__},
    }
    state = {}
    for key, value in lora_state_dict(base).items():
        module, _, param = key.rpartition(".")
        suffix = f"{param}.weight" if param in ("lora_A", "lora_B") else param
        state[f"{_PREFIX}{module}.{suffix}"] = value
    path_dir = Path(path_dir)
    save_safetensors(state, path_dir / PEFT_WEIGHTS_NAME, {"format": "pt"})
    save_json(config, path_dir / PEFT_CONFIG_NAME)
    return path_dir


def _check_config(config: Mapping[str, Any], path: Path) -> None:
    if not isinstance(config, Mapping) or config.get("peft_type") != "LORA":
        got = config.get("peft_type") if isinstance(config, Mapping) else type(config).__name__
        raise ValueError(f"{path}: peft_type must be 'LORA', got {got!r}")
    for key, unused in _UNSUPPORTED.items():
        value = config.get(key, unused)
        if value != unused and not (unused in ({}, None) and not value):
            raise ValueError(f"{path}: {key}={value!r} is not supported by pacx's LoRA (expected {unused!r})")


def _split_state(state: Mapping[str, torch.Tensor], path: Path) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """peft keys -> pacx :func:`lora_state_dict` keys, the adapted layers and the saved norms."""
    pacx_state: dict[str, torch.Tensor] = {}
    layers: list[str] = []
    norms: set[str] = set()
    for key, value in state.items():
        if not key.startswith(_PREFIX):
            raise ValueError(f"{path}: key {key!r} lacks peft's {_PREFIX!r} prefix")
        name = key[len(_PREFIX) :]
        for part in ("lora_A", "lora_B"):
            if name.endswith(f".{part}.weight"):
                module = name[: -len(f".{part}.weight")]
                pacx_state[f"{module}.{part}"] = value
                if part == "lora_A":
                    layers.append(module)
                break
        else:
            if "lora_" in name:  # embeddings, DoRA magnitudes, ...: nothing pacx can hold
                raise ValueError(f"{path}: adapter tensor {key!r} is not a plain LoRA linear adapter")
            norms.add(name.rpartition(".")[0])
            pacx_state[name] = value
    return pacx_state, sorted(layers), sorted(norms)


def _norm_option(model: nn.Module, norms: list[str], path: Path) -> str:
    """The :func:`apply_lora` ``trainable_norms`` option that selects exactly ``norms``."""
    if not norms:
        return "none"
    for option in ("final", "all"):
        try:
            if sorted(_select_norms(model, option)) == norms:
                return option
        except ValueError:  # no final norm on this model
            continue
    raise ValueError(
        f"{path}: the saved modules {norms} are neither the model's final norm nor all its LayerNorms, "
        "the norm sets pacx's LoRA trains"
    )


def load_peft_adapter(model: nn.Module, path_dir: str | os.PathLike) -> LoRASummary:
    """Apply a peft LoRA adapter folder to a plain model as pacx :class:`LoRALinear` layers.

    The adapted layers are read from the weights (every ``...lora_A.weight``), the rank, alpha,
    dropout and scaling rule from ``adapter_config.json``; saved ``modules_to_save`` must be the
    model's final norm or all its LayerNorms (the norms pacx trains) and are loaded too.
    Afterwards the model is exactly as after :func:`pacx.adapters.apply_lora` plus
    :func:`pacx.adapters.load_lora_state_dict`: train it, merge it, export it.

    Args:
        model: the base network the adapter was trained on (e.g. the same timm ViT), without
            LoRA; modified in place.
        path_dir: folder with ``adapter_config.json`` and ``adapter_model.safetensors``.

    Returns:
        The :class:`LoRASummary` of :func:`pacx.adapters.apply_lora`.

    Raises:
        FileNotFoundError: when a file is missing.
        ValueError: on a config pacx's LoRA cannot express (DoRA, bias, per-layer ranks or
            alphas, ...; names the option), keys that are not LoRA linear adapters or norms,
            a rank that differs from ``r``, or any error of :func:`pacx.adapters.apply_lora` or
            :func:`pacx.adapters.load_lora_state_dict` (e.g. a layer the model does not have).

    Example:
        >>> import timm
        >>> vit = timm.create_model("vit_tiny_patch16_224", num_classes=0)
        >>> load_peft_adapter(vit, "adapter").adapter_params  # doctest: +SKIP
        258048
    """
    path_dir = Path(path_dir)
    config_path, weights_path = path_dir / PEFT_CONFIG_NAME, path_dir / PEFT_WEIGHTS_NAME
    config = load_json(config_path)
    _check_config(config, config_path)
    state, layers, norms = _split_state(load_safetensors(weights_path), weights_path)
    if not layers:
        raise ValueError(f"{weights_path}: no LoRA adapter weights (keys ending in .lora_A.weight)")
    rank = int(config["r"])
    wrong = [name for name in layers if state[f"{name}.lora_A"].shape[0] != rank]
    if wrong:
        raise ValueError(f"{weights_path}: adapters of {wrong[:5]} do not have rank r={rank} of {config_path}")
    summary = apply_lora(
        model,
        targets=layers,
        r=rank,
        alpha=config.get("lora_alpha", 8),
        dropout=config.get("lora_dropout", 0.0),
        rslora=bool(config.get("use_rslora", False)),
        trainable_norms=_norm_option(_base_module(model), norms, weights_path),
    )
    load_lora_state_dict(model, state)
    return summary
