"""Loading MAE and ViT weights from the layouts found in the wild, with strict key accounting.

Every layout is first brought to one canonical form, the flat facebookresearch/mae layout:

* encoder keys exactly as timm's ``VisionTransformer`` names them (``cls_token``,
  ``pos_embed``, ``patch_embed.proj.*``, ``blocks.{i}.*``, ``norm.*``);
* decoder keys ``mask_token`` and ``decoder_*`` (``decoder_embed``, ``decoder_pos_embed``,
  ``decoder_blocks.{i}.*``, ``decoder_norm``, ``decoder_pred``).

Recognised inputs: facebookresearch/mae files (``{'model': state_dict}``, encoder-only or
with decoder), timm ViT state dicts, Lightning checkpoints (``{'state_dict': {'model.<key>':
...}}``), DDP ``module.`` prefixes, and pacx's own :class:`~pacx.nets.mae.MaskedAutoencoderViT`
state dicts (encoder under ``encoder.``). Files are read only through
:func:`pacx.io.load_state_dict_file` (safetensors, or ``torch.load(weights_only=True)``).

The canonical form then maps onto a target explicitly:

==========================  =====================================  ==========================
canonical key               ``MaskedAutoencoderViT`` key           timm ``VisionTransformer``
==========================  =====================================  ==========================
``<ViT key>``               ``encoder.<ViT key>``                  ``<ViT key>``
``mask_token``              ``mask_token``                         (unexpected)
``decoder_<rest>``          ``decoder_<rest>``                     (unexpected)
``<other key>``             ``<other key>`` (unexpected)           (unexpected)
==========================  =====================================  ==========================

Nothing is loaded silently: a :class:`KeyReport` lists missing, unexpected and
shape-mismatched keys, and the load raises unless every missing/unexpected key starts with a
prefix the caller allowed. On an error the model is left untouched.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from pacx.io import load_state_dict_file

from .mae import MaskedAutoencoderViT

__all__ = [
    "KeyReport",
    "MAE_DECODER_PREFIXES",
    "canonical_mae_state_dict",
    "load_mae_checkpoint",
    "mae_state_dict_to_timm",
]

#: Canonical-key prefixes of the MAE decoder. Pass as ``allow_missing`` to load encoder-only
#: weights into a :class:`MaskedAutoencoderViT`, or as ``allow_unexpected`` to load a full MAE
#: file into a plain ViT.
MAE_DECODER_PREFIXES: tuple[str, ...] = ("decoder_", "mask_token")

# Wrappers whose value is the state dict itself: facebookresearch/mae and timm use 'model',
# Lightning and many trainers 'state_dict'.
_WRAPPER_KEYS = ("model", "state_dict")
# Prefixes added by wrappers around the model: Lightning's attribute name in the reference
# code ('model.'), DDP ('module.'), torch.compile ('_orig_mod.').
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")
_ENCODER_PREFIX = "encoder."
# Top-level names a timm VisionTransformer state dict can hold, optional parts included.
_VIT_ROOTS = frozenset(
    {"cls_token", "reg_token", "pos_embed", "patch_embed", "norm_pre", "blocks", "norm", "fc_norm", "attn_pool", "head"}
)


@dataclass(frozen=True)
class KeyReport:
    """Key accounting of one load.

    Attributes:
        loaded: target keys that received a tensor.
        missing: target keys absent from the checkpoint.
        unexpected: checkpoint keys (in target naming) the target does not have.
        mismatched: ``(key, expected_shape, checkpoint_shape)`` for keys whose shapes differ;
            never allowed.
        allowed_missing: the part of ``missing`` covered by the caller's allowed prefixes.
        allowed_unexpected: the part of ``unexpected`` covered by the caller's allowed prefixes.
        source_layout: the layout detected in the checkpoint (``"mae"``, ``"mae_encoder"``,
            ``"pacx"``, ``"lightning"``).

    Example:
        >>> report = KeyReport(loaded=("norm.weight",), missing=(), unexpected=("head.weight",))
        >>> report.ok, report.unexpected
        (False, ('head.weight',))
    """

    loaded: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()
    allowed_missing: tuple[str, ...] = ()
    allowed_unexpected: tuple[str, ...] = ()
    source_layout: str = ""

    @property
    def ok(self) -> bool:
        """True when the load was exact: nothing missing, unexpected or mismatched."""
        return not (self.missing or self.unexpected or self.mismatched)

    @property
    def disallowed_missing(self) -> tuple[str, ...]:
        """Missing keys not covered by an allowed prefix."""
        return tuple(k for k in self.missing if k not in self.allowed_missing)

    @property
    def disallowed_unexpected(self) -> tuple[str, ...]:
        """Unexpected keys not covered by an allowed prefix."""
        return tuple(k for k in self.unexpected if k not in self.allowed_unexpected)

    def summary(self) -> str:
        """One human-readable paragraph, for logs and error messages."""
        lines = [f"loaded {len(self.loaded)} tensors (source layout: {self.source_layout or 'unknown'})"]
        if self.missing:
            lines.append(f"missing ({len(self.missing)}, allowed {len(self.allowed_missing)}): {list(self.missing)}")
        if self.unexpected:
            lines.append(
                f"unexpected ({len(self.unexpected)}, allowed {len(self.allowed_unexpected)}): {list(self.unexpected)}"
            )
        if self.mismatched:
            lines.append(
                "shape mismatch (key, expected, checkpoint): "
                + ", ".join(f"({k}, {tuple(e)}, {tuple(g)})" for k, e, g in self.mismatched)
            )
        return "; ".join(lines)


def _check_prefixes(name: str, prefixes: Any) -> tuple[str, ...]:
    if isinstance(prefixes, str):
        prefixes = (prefixes,)
    try:
        out = tuple(prefixes)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of key prefixes (str), got {prefixes!r}") from None
    if not all(isinstance(p, str) and p for p in out):
        raise ValueError(f"{name} must hold non-empty str prefixes, got {out!r}")
    return out


def _unwrap(obj: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """Peel ``{'model': ...}`` / ``{'state_dict': ...}`` wrappers and keep the tensors."""
    layout = ""
    current: Any = obj
    # A wrapper is a dict holding a dict under a known name; real state dicts hold tensors only.
    while isinstance(current, Mapping):
        nested = next((k for k in _WRAPPER_KEYS if isinstance(current.get(k), Mapping)), None)
        if nested is None:
            break
        if nested == "state_dict" and not layout:
            layout = "lightning"
        current = current[nested]
    if not isinstance(current, Mapping):
        raise ValueError(f"state dict must be a mapping of tensors, got {type(current).__name__}")
    tensors = {str(k): v for k, v in current.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(
            "state dict holds no tensors; expected a state dict, {'model': state_dict} or "
            f"{{'state_dict': state_dict}}, got top-level keys {sorted(map(str, obj))[:10]}"
        )
    return tensors, layout


def _strip_wrapper_prefixes(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    stripped = False
    for prefix in _WRAPPER_PREFIXES:
        if any(k.startswith(prefix) for k in state_dict):
            # Only prefixed keys are renamed; others (e.g. a Lightning module's loss buffers)
            # stay as they are and show up as unexpected rather than vanishing silently.
            state_dict = {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state_dict.items()}
            stripped = True
    return state_dict, stripped


def _is_decoder_key(key: str) -> bool:
    return key.startswith("decoder_") or key == "mask_token"


def canonical_mae_state_dict(state_dict: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """Bring any supported layout to the flat facebookresearch/mae layout.

    Args:
        state_dict: a raw checkpoint object (``{'model': ...}``, ``{'state_dict': ...}``) or a
            state dict in MAE, timm, Lightning (``model.``), DDP (``module.``) or pacx
            (``encoder.``) naming.

    Returns:
        ``(canonical, layout)``: encoder keys in timm naming plus ``decoder_*``/``mask_token``,
        and the detected layout name.

    Raises:
        ValueError: when the object is not a mapping or holds no tensors.
    """
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
    tensors, layout = _unwrap(state_dict)
    tensors, had_prefix = _strip_wrapper_prefixes(tensors)
    if had_prefix and not layout:
        layout = "lightning"
    if any(k.startswith(_ENCODER_PREFIX) for k in tensors):
        tensors = {(k[len(_ENCODER_PREFIX) :] if k.startswith(_ENCODER_PREFIX) else k): v for k, v in tensors.items()}
        layout = layout or "pacx"
    if not layout:
        layout = "mae" if any(_is_decoder_key(k) for k in tensors) else "mae_encoder"
    return tensors, layout


def mae_state_dict_to_timm(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Encoder-only state dict in timm ``VisionTransformer`` naming.

    Drops ``decoder_*`` and ``mask_token``: timm's checkpoint filter takes a ``mask_token`` as
    the sign of a DINOv2 checkpoint and keeps every ``decoder_*`` key, so a full MAE file must be
    reduced before timm sees it.

    Args:
        state_dict: any layout accepted by :func:`canonical_mae_state_dict`.

    Returns:
        A new dict ``{timm key: tensor}`` that loads strictly into
        ``timm.create_model(..., num_classes=0)`` of the matching size.

    Example:
        >>> sd = {"cls_token": torch.zeros(1, 1, 8), "mask_token": torch.zeros(1, 1, 4),
        ...       "decoder_pred.bias": torch.zeros(3)}
        >>> sorted(mae_state_dict_to_timm({"model": sd}))
        ['cls_token']
    """
    canonical, _ = canonical_mae_state_dict(state_dict)
    return {k: v for k, v in canonical.items() if not _is_decoder_key(k)}


def _to_target_keys(canonical: Mapping[str, torch.Tensor], target: nn.Module) -> dict[str, torch.Tensor]:
    """The explicit canonical -> target key mapping of the module docstring."""
    if not isinstance(target, MaskedAutoencoderViT):
        return dict(canonical)
    vit_roots = _VIT_ROOTS | {k.split(".", 1)[0] for k in target.encoder.state_dict()}
    out = {}
    for key, value in canonical.items():
        # Only ViT names move under ``encoder.``; anything else (a trainer's loss buffers, say)
        # keeps its own name so the report shows it as the stranger it is.
        is_encoder = not _is_decoder_key(key) and key.split(".", 1)[0] in vit_roots
        out[_ENCODER_PREFIX + key if is_encoder else key] = value
    return out


def load_mae_checkpoint(
    mae_or_vit: nn.Module,
    path_or_state_dict: str | os.PathLike | Mapping[str, Any],
    allow_missing: Iterable[str] = (),
    allow_unexpected: Iterable[str] = (),
) -> KeyReport:
    """Load MAE/ViT weights into a :class:`MaskedAutoencoderViT` or a timm ``VisionTransformer``.

    Args:
        mae_or_vit: the target; a :class:`MaskedAutoencoderViT` or a timm ``VisionTransformer``
            (e.g. ``mae.encoder`` or ``timm.create_model("vit_base_patch16_224", num_classes=0)``).
        path_or_state_dict: a file path (``.safetensors`` or a torch file readable with
            ``weights_only=True``) or an in-memory checkpoint/state dict, in any layout of
            :func:`canonical_mae_state_dict`.
        allow_missing: key prefixes (in target naming) that may be absent, e.g.
            :data:`MAE_DECODER_PREFIXES` for encoder-only weights into an MAE, or ``("head.",)``
            for a classifier ViT.
        allow_unexpected: key prefixes (in target naming) that may be present without a target,
            e.g. :data:`MAE_DECODER_PREFIXES` for a full MAE file into a plain ViT.

    Returns:
        The :class:`KeyReport` of the load.

    Raises:
        ValueError: when ``mae_or_vit`` has an unsupported type, the checkpoint holds no tensors,
            a shape differs, or a missing/unexpected key is not covered by an allowed prefix;
            the message lists the offending keys and the model is left unchanged.
        FileNotFoundError: when the file does not exist.
        pacx.io.UnsafeCheckpointError: when the file can only be read by running pickled code.

    Example:
        >>> from pacx.nets import create_mae
        >>> mae = create_mae("mae_vit_tiny_patch8_64")
        >>> report = load_mae_checkpoint(mae, {"model": mae.encoder.state_dict()},
        ...                              allow_missing=MAE_DECODER_PREFIXES)
        >>> report.source_layout, len(report.missing) > 0, report.disallowed_missing
        ('mae_encoder', True, ())
    """
    model = mae_or_vit
    if not isinstance(model, (MaskedAutoencoderViT, VisionTransformer)):
        raise ValueError(
            f"mae_or_vit must be a MaskedAutoencoderViT or a timm VisionTransformer, got {type(model).__name__}"
        )
    allow_missing = _check_prefixes("allow_missing", allow_missing)
    allow_unexpected = _check_prefixes("allow_unexpected", allow_unexpected)
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        raw: Mapping[str, Any] = load_state_dict_file(path_or_state_dict)
    elif isinstance(path_or_state_dict, Mapping):
        raw = path_or_state_dict
    else:
        raise ValueError(
            f"path_or_state_dict must be a file path or a mapping, got {type(path_or_state_dict).__name__}"
        )

    canonical, layout = canonical_mae_state_dict(raw)
    incoming = _to_target_keys(canonical, model)
    expected = model.state_dict()

    missing = tuple(k for k in expected if k not in incoming)
    unexpected = tuple(k for k in incoming if k not in expected)
    mismatched = tuple(
        (k, tuple(expected[k].shape), tuple(v.shape))
        for k, v in incoming.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    )
    report = KeyReport(
        loaded=tuple(k for k in incoming if k in expected and k not in {m[0] for m in mismatched}),
        missing=missing,
        unexpected=unexpected,
        mismatched=mismatched,
        allowed_missing=tuple(k for k in missing if k.startswith(allow_missing)),
        allowed_unexpected=tuple(k for k in unexpected if k.startswith(allow_unexpected)),
        source_layout=layout,
    )
    problems = []
    if report.disallowed_missing:
        problems.append(f"missing keys {list(report.disallowed_missing)}")
    if report.disallowed_unexpected:
        problems.append(f"unexpected keys {list(report.disallowed_unexpected)}")
    if report.mismatched:
        problems.append(
            "shape mismatches (key, expected, checkpoint) "
            + ", ".join(f"({k}, {e}, {g})" for k, e, g in report.mismatched)
        )
    if problems:
        raise ValueError(
            f"checkpoint does not match {type(model).__name__} (source layout {layout!r}): "
            + "; ".join(problems)
            + f". Expected the target's keys, allowing missing prefixes {list(allow_missing)} and unexpected "
            f"prefixes {list(allow_unexpected)}."
        )
    # strict=False is safe here: every difference was accounted for and allowed above.
    model.load_state_dict({k: incoming[k] for k in report.loaded}, strict=False)
    return report
