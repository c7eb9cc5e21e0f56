"""Parameter-efficient tuning of a ViT: LoRA injection, merging, unwrapping and adapter-only state.

Everything here works on any ``nn.Module`` whose linear layers are addressed by qualified names,
and is written with timm's ``VisionTransformer`` in mind (``blocks.{i}.attn.qkv``,
``blocks.{i}.mlp.fc1``/``fc2``, final ``norm`` or ``fc_norm``). A model wrapped by
``torch.compile`` is handled through its ``_orig_mod``, so state-dict keys never carry the
``_orig_mod.`` prefix. Apply LoRA before compiling: replacing modules afterwards forces a
recompile.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .lora import LoRALinear

__all__ = [
    "DEFAULT_LORA_TARGETS",
    "LoRASummary",
    "TRAINABLE_NORM_OPTIONS",
    "TUNING_STRATEGIES",
    "apply_lora",
    "apply_tuning",
    "load_lora_state_dict",
    "lora_state_dict",
    "merge_lora",
    "unmerge_lora",
    "unwrap_lora",
]

DEFAULT_LORA_TARGETS: tuple[str, ...] = ("qkv", "fc1", "fc2")
TRAINABLE_NORM_OPTIONS: tuple[str, ...] = ("final", "all", "none")
TUNING_STRATEGIES: tuple[str, ...] = ("lora", "last_n_blocks", "full")

# Names of the norm modules chosen at apply time, kept on the model so that
# lora_state_dict saves the same norms later even if requires_grad flags change meanwhile.
_NORMS_ATTR = "_pacx_lora_norm_names"
# timm applies ``norm`` before pooling and ``fc_norm`` after it; only one holds parameters.
_FINAL_NORM_NAMES: tuple[str, ...] = ("norm", "fc_norm")


@dataclass(frozen=True)
class LoRASummary:
    """What a tuning strategy made trainable.

    Attributes:
        strategy: the tuning strategy ("lora", "last_n_blocks" or "full").
        adapter_params: parameters in the LoRA matrices (0 for other strategies).
        trainable_norm_params: trainable parameters that belong to normalisation layers.
        total_trainable: all parameters with ``requires_grad=True``.
        total_params: all parameters of the model, adapters included.
        fraction: ``total_trainable / total_params``.
        wrapped: qualified names of the linear layers wrapped by ``LoRALinear``.
        trainable_norms: qualified names of the normalisation layers left trainable.
    """

    strategy: str
    adapter_params: int
    trainable_norm_params: int
    total_trainable: int
    total_params: int
    fraction: float
    wrapped: list[str] = field(default_factory=list)
    trainable_norms: list[str] = field(default_factory=list)


def _base_module(model: nn.Module) -> nn.Module:
    """The module under a ``torch.compile`` wrapper, or the model itself."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    return getattr(model, "_orig_mod", model)


def _lora_modules(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(name, module) for name, module in model.named_modules() if isinstance(module, LoRALinear)]


def _matches(name: str, target: str) -> bool:
    # Match whole name segments so that "fc1" does not match "xfc1" and "attn.qkv" works.
    return name == target or name.endswith("." + target)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)) or (
        type(module).__name__.lower().endswith("norm") and any(True for _ in module.parameters(recurse=False))
    )


def _final_norm_names(model: nn.Module) -> list[str]:
    names = [n for n in _FINAL_NORM_NAMES if isinstance(getattr(model, n, None), nn.Module)]
    names = [n for n in names if sum(p.numel() for p in getattr(model, n).parameters()) > 0]
    if not names:
        raise ValueError(
            "trainable_norms='final' needs a final norm with parameters at model.norm or model.fc_norm "
            f"(timm VisionTransformer layout), found none on {type(model).__name__}"
        )
    return names


def _select_norms(model: nn.Module, trainable_norms: str) -> list[str]:
    if trainable_norms not in TRAINABLE_NORM_OPTIONS:
        raise ValueError(f"trainable_norms must be one of {TRAINABLE_NORM_OPTIONS}, got {trainable_norms!r}")
    if trainable_norms == "none":
        return []
    if trainable_norms == "final":
        return _final_norm_names(model)
    return [name for name, module in model.named_modules() if isinstance(module, nn.LayerNorm)]


def _summarize(model: nn.Module, strategy: str, norm_names: Sequence[str]) -> LoRASummary:
    lora = _lora_modules(model)
    adapter = sum(m.lora_A.numel() + m.lora_B.numel() for _, m in lora)
    seen: set[int] = set()
    norm_params = 0
    norm_modules = [m for _, m in model.named_modules() if _is_norm(m)]
    for module in norm_modules:
        for p in module.parameters(recurse=False):
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                norm_params += p.numel()
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return LoRASummary(
        strategy=strategy,
        adapter_params=adapter,
        trainable_norm_params=norm_params,
        total_trainable=trainable,
        total_params=total,
        fraction=trainable / total if total else 0.0,
        wrapped=[name for name, _ in lora],
        trainable_norms=list(norm_names),
    )


def _check_targets(targets: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(targets, str):
        targets = (targets,)
    if not isinstance(targets, Sequence) or not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"targets must be a non-empty sequence of module-name suffixes, got {targets!r}")
    return tuple(targets)


def apply_lora(
    model: nn.Module,
    targets: str | Sequence[str] = DEFAULT_LORA_TARGETS,
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.1,
    rslora: bool = False,
    trainable_norms: str = "final",
) -> LoRASummary:
    """Wrap every ``nn.Linear`` whose qualified name ends with a target in a :class:`LoRALinear`.

    The model is modified in place. Afterwards only the adapters and the chosen normalisation
    layers are trainable; every other parameter (patch embedding, class token, position
    embedding, base weights, ...) is frozen. On a timm ViT-B/16 with the defaults (r=8 on
    ``qkv``, ``fc1`` and ``fc2`` of 12 blocks) the adapters hold 1,032,192 parameters and the
    final norm 1,536, as in the authors' peft setup. A fused ``qkv`` gets one adapter (see
    :class:`LoRALinear`).

    Args:
        model: the network to adapt (a timm ``VisionTransformer`` in pacx).
        targets: name suffixes, matched on whole dot-separated segments (``"qkv"`` matches
            ``blocks.0.attn.qkv``; ``"attn.qkv"`` works too). Every target must match at least one
            module. Defaults to ("qkv", "fc1", "fc2").
        r: adapter rank. Defaults to 8.
        alpha: adapter scale numerator. Defaults to 16.
        dropout: adapter input dropout. Defaults to 0.1.
        rslora: use ``alpha / sqrt(r)`` scaling. Defaults to False.
        trainable_norms: "final" (the encoder's last norm, ``model.norm`` or ``model.fc_norm``, as
            the authors' run effectively did), "all" (every ``nn.LayerNorm``) or "none".
            Defaults to "final".

    Returns:
        A :class:`LoRASummary` of the trainable parameters.

    Raises:
        ValueError: when LoRA is already applied, a target matches nothing or matches a module
            that is not an ``nn.Linear``, ``trainable_norms`` is unknown or finds no final norm,
            or an adapter hyper-parameter is invalid.

    Example:
        >>> import timm
        >>> vit = timm.create_model("vit_tiny_patch16_224", num_classes=0)
        >>> summary = apply_lora(vit, r=8)
        >>> summary.adapter_params
        258048
    """
    model = _base_module(model)
    targets = _check_targets(targets)
    if _lora_modules(model):
        raise ValueError("LoRA is already applied to this model; apply it once (unwrap_lora removes it)")
    norm_names = _select_norms(model, trainable_norms)

    matched: list[tuple[str, nn.Linear]] = []
    for target in targets:
        hits = [(name, module) for name, module in model.named_modules() if name and _matches(name, target)]
        if not hits:
            raise ValueError(f"LoRA target {target!r} matched no module in {type(model).__name__}")
        wrong = [f"{name} ({type(module).__name__})" for name, module in hits if not isinstance(module, nn.Linear)]
        if wrong:
            raise ValueError(f"LoRA target {target!r} must match nn.Linear modules only, got {wrong[:5]}")
        matched.extend(hits)

    # Build every adapter before touching the model so a bad hyper-parameter leaves it unchanged.
    unique = dict(matched)
    adapters = {
        name: LoRALinear(module, r=r, alpha=alpha, dropout=dropout, rslora=rslora) for name, module in unique.items()
    }
    model.requires_grad_(False)
    for name, adapter in adapters.items():
        _set_submodule(model, name, adapter)
        adapter.lora_A.requires_grad_(True)
        adapter.lora_B.requires_grad_(True)
    for name in norm_names:
        model.get_submodule(name).requires_grad_(True)
    setattr(model, _NORMS_ATTR, tuple(norm_names))
    return _summarize(model, "lora", norm_names)


def apply_tuning(
    model: nn.Module,
    strategy: str = "lora",
    n_blocks: int = 4,
    targets: str | Sequence[str] = DEFAULT_LORA_TARGETS,
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.1,
    rslora: bool = False,
    trainable_norms: str = "final",
) -> LoRASummary:
    """Make part of a ViT trainable according to a tuning strategy (the Stage-2 ablation axis).

    - ``"lora"``: :func:`apply_lora` with the given adapter options.
    - ``"last_n_blocks"``: freeze everything, then unfreeze ``model.blocks[-n_blocks:]`` and the
      norms chosen by ``trainable_norms`` (default "final", the authors' choice).
    - ``"full"``: every parameter trainable (``trainable_norms`` is then irrelevant), except a
      ``pos_embed`` that is already frozen: that is a fixed sin-cos table (pacx's MAE encoder),
      which no pacx strategy trains.

    Args:
        model: a timm ``VisionTransformer`` (``last_n_blocks`` needs ``model.blocks``).
        strategy: one of "lora", "last_n_blocks", "full". Defaults to "lora".
        n_blocks: blocks to unfreeze for ``last_n_blocks``, in [1, len(model.blocks)]. Defaults to 4.
        targets: LoRA targets, see :func:`apply_lora`.
        r: LoRA rank.
        alpha: LoRA scale numerator.
        dropout: LoRA input dropout.
        rslora: rank-stabilised LoRA scaling.
        trainable_norms: "final", "all" or "none".

    Returns:
        A :class:`LoRASummary` (``adapter_params`` is 0 for non-LoRA strategies).

    Raises:
        ValueError: for an unknown strategy or norm option, a bad ``n_blocks``, a model without
            ``blocks`` for ``last_n_blocks``, a model that already carries LoRA adapters, or any
            error of :func:`apply_lora`.

    Example:
        >>> import timm
        >>> vit = timm.create_model("vit_tiny_patch16_224", num_classes=0)
        >>> apply_tuning(vit, "last_n_blocks", n_blocks=2).strategy
        'last_n_blocks'
    """
    if strategy not in TUNING_STRATEGIES:
        raise ValueError(f"strategy must be one of {TUNING_STRATEGIES}, got {strategy!r}")
    if strategy == "lora":
        return apply_lora(
            model, targets=targets, r=r, alpha=alpha, dropout=dropout, rslora=rslora, trainable_norms=trainable_norms
        )
    model = _base_module(model)
    if _lora_modules(model):
        raise ValueError(f"strategy {strategy!r} expects a model without LoRA adapters; unwrap_lora first")
    if strategy == "full":
        if trainable_norms not in TRAINABLE_NORM_OPTIONS:
            raise ValueError(f"trainable_norms must be one of {TRAINABLE_NORM_OPTIONS}, got {trainable_norms!r}")
        fixed = [p for name, p in model.named_parameters() if name.endswith("pos_embed") and not p.requires_grad]
        model.requires_grad_(True)
        for param in fixed:
            param.requires_grad_(False)
        norm_names = [name for name, module in model.named_modules() if name and _is_norm(module)]
        return _summarize(model, strategy, norm_names)

    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, (nn.Sequential, nn.ModuleList)) or len(blocks) == 0:
        raise ValueError(f"strategy 'last_n_blocks' needs model.blocks (a timm ViT), got {type(model).__name__}")
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or not 1 <= n_blocks <= len(blocks):
        raise ValueError(f"n_blocks must be an int in [1, {len(blocks)}], got {n_blocks!r}")
    norm_names = _select_norms(model, trainable_norms)
    model.requires_grad_(False)
    for block in list(blocks)[-n_blocks:]:
        block.requires_grad_(True)
    for name in norm_names:
        model.get_submodule(name).requires_grad_(True)
    return _summarize(model, strategy, norm_names)


def _require_lora(model: nn.Module, what: str) -> list[tuple[str, LoRALinear]]:
    lora = _lora_modules(model)
    if not lora:
        raise ValueError(f"{what} needs a model with LoRA adapters (apply_lora first), found none")
    return lora


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every adapter into its base weight (idempotent; see :meth:`LoRALinear.merge`).

    Args:
        model: a model carrying LoRA adapters.

    Returns:
        ``model``, merged in place.

    Raises:
        ValueError: when the model has no adapters.
    """
    for _, module in _require_lora(_base_module(model), "merge_lora"):
        module.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo :func:`merge_lora` (idempotent; see :meth:`LoRALinear.unmerge`).

    Args:
        model: a model carrying LoRA adapters.

    Returns:
        ``model``, unmerged in place.

    Raises:
        ValueError: when the model has no adapters.
    """
    for _, module in _require_lora(_base_module(model), "unmerge_lora"):
        module.unmerge()
    return model


def unwrap_lora(model: nn.Module) -> nn.Module:
    """Replace each adapter by its base ``nn.Linear`` holding the merged weight.

    The original key layout comes back (``blocks.0.attn.qkv.weight`` instead of
    ``...qkv.base_layer.weight``), so the state dict of an unwrapped timm ViT loads strictly into
    ``timm.create_model(..., num_classes=0)``. ``requires_grad`` flags are left as they were
    (base weights stay frozen); call ``model.requires_grad_(True)`` to fine-tune the result.

    Args:
        model: a model carrying LoRA adapters.

    Returns:
        ``model``, modified in place.

    Raises:
        ValueError: when the model has no adapters.
    """
    base = _base_module(model)
    for name, module in _require_lora(base, "unwrap_lora"):
        module.merge()
        _set_submodule(base, name, module.base_layer)
    if hasattr(base, _NORMS_ATTR):
        delattr(base, _NORMS_ATTR)
    return model


def _norm_names_for_state(model: nn.Module) -> list[str]:
    recorded = getattr(model, _NORMS_ATTR, None)
    if recorded is not None:
        return list(recorded)
    # Adapters built by hand: fall back to the norms that are currently trainable.
    return [
        name
        for name, module in model.named_modules()
        if name and _is_norm(module) and any(p.requires_grad for p in module.parameters(recurse=False))
    ]


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter-only state: every ``lora_A``/``lora_B`` plus the parameters of the trainable norms.

    The trainable norms are those chosen by :func:`apply_lora` (or, for hand-built adapters,
    the norms whose parameters require grad). The base weights are never included, so the
    result is the same whether or not the model is merged.

    Args:
        model: a model carrying LoRA adapters (a ``torch.compile`` wrapper is fine).

    Returns:
        A dict from qualified parameter name to detached tensor, e.g.
        ``blocks.0.attn.qkv.lora_A`` and ``norm.weight``.

    Raises:
        ValueError: when the model has no adapters.
    """
    model = _base_module(model)
    state: dict[str, torch.Tensor] = {}
    for name, module in _require_lora(model, "lora_state_dict"):
        state[f"{name}.lora_A"] = module.lora_A.detach()
        state[f"{name}.lora_B"] = module.lora_B.detach()
    for name in _norm_names_for_state(model):
        for pname, param in model.get_submodule(name).named_parameters(recurse=False):
            state[f"{name}.{pname}"] = param.detach()
    return state


def _summarise_keys(keys: Sequence[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_lora_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load a state written by :func:`lora_state_dict`, strictly.

    The key set must equal the model's :func:`lora_state_dict` key set (every adapter and every
    trainable norm present, nothing else) and every shape must match. Values are copied into the
    existing parameters, cast to their dtype and device. ``_orig_mod.`` prefixes left by
    ``torch.compile`` are stripped from the incoming keys.

    Args:
        model: a model carrying unmerged LoRA adapters with the same targets and rank.
        state_dict: the adapter state.

    Returns:
        ``model``.

    Raises:
        ValueError: when the model has no adapters or a merged one (loading new adapters under a
            merged weight would corrupt it: unmerge first), when keys are missing or unexpected,
            or when a value is not a tensor or has the wrong shape.
    """
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"state_dict must be a mapping of name -> tensor, got {type(state_dict).__name__}")
    base = _base_module(model)
    lora = _require_lora(base, "load_lora_state_dict")
    merged = [name for name, module in lora if module.merged]
    if merged:
        raise ValueError(
            f"cannot load adapters into merged layers ({_summarise_keys(merged)}); call unmerge_lora first"
        )
    incoming = {key.replace("_orig_mod.", ""): value for key, value in state_dict.items()}
    current = lora_state_dict(base)
    missing = set(current) - set(incoming)
    unexpected = set(incoming) - set(current)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_summarise_keys(list(missing))}")
        if unexpected:
            parts.append(f"unexpected keys: {_summarise_keys(list(unexpected))}")
        raise ValueError("LoRA state dict does not match the model's adapters; " + "; ".join(parts))
    for key, value in incoming.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"state_dict[{key!r}] must be a tensor, got {type(value).__name__}")
        if tuple(value.shape) != tuple(current[key].shape):
            raise ValueError(
                f"state_dict[{key!r}] has shape {tuple(value.shape)}, expected {tuple(current[key].shape)}"
            )
    with torch.no_grad():
        for key, value in incoming.items():
            current[key].copy_(value)
    return model
