"""Stage 2 of PaCX-MAE: distil frozen physiological teachers into a CXR ViT."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pacx.adapters import LoRALinear, apply_tuning, unwrap_lora
from pacx.losses import CosineRegressionLoss, GlobalInfoNCE

from .heads import ProjectionHead

__all__ = ["LOSS_WEIGHT_PRESETS", "PaCXDistiller"]

# (lambda_c, lambda_r). "paper_module" are the defaults of the authors' loss module and match the
# paper text; "authors_training" are the command-line defaults the released model was trained with.
LOSS_WEIGHT_PRESETS: dict[str, tuple[float, float]] = {
    "paper_module": (1.0, 0.1),
    "authors_training": (0.5, 1.0),
}

_LORA_OPTIONS = frozenset({"targets", "r", "alpha", "dropout", "rslora"})
_STUDENT_NAME = "cxr"


def _check_weight(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _describe(x: Any) -> str:
    return f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__


def _student_dim(student: nn.Module) -> int:
    dim = getattr(student, "num_features", None) or getattr(student, "embed_dim", None)
    if not isinstance(dim, int) or dim <= 0:
        raise ValueError(
            "student must be a timm VisionTransformer exposing num_features (its pooled embedding size), "
            f"got {type(student).__name__}"
        )
    return dim


class PaCXDistiller(nn.Module):
    """CXR student, projection and regression heads, and the PaCX-MAE Stage-2 loss.

    The student is a timm ``VisionTransformer`` built with ``num_classes=0``; its pooled embedding
    (the class token after the final norm in pacx) is

    - projected by ``proj["cxr"]`` into a shared space and contrasted with every teacher's
      projection ``proj[name]`` through one :class:`~pacx.losses.GlobalInfoNCE` (one temperature
      shared by all pairs; there is no teacher-teacher pair), and
    - regressed by ``regress[name]`` onto each teacher's raw embedding with
      :class:`~pacx.losses.CosineRegressionLoss`.

    All heads are :class:`ProjectionHead` (Dropout -> Linear -> LayerNorm), as the authors used for
    both roles. The loss is ``L = lambda_c * mean_t InfoNCE(cxr, t) + lambda_r * mean_t (1 - cos_t)``
    over the teachers present in the batch. Teachers are never run here: their embeddings arrive
    precomputed and are detached.

    Loss weights: ``loss_weights="paper_module"`` (default) gives ``(lambda_c, lambda_r) = (1.0, 0.1)``,
    the authors' loss-module defaults and the paper text; ``"authors_training"`` gives ``(0.5, 1.0)``,
    the values the released checkpoint was trained with, which the pacx recipes use. An explicit
    ``lambda_c``/``lambda_r`` overrides the preset. A zero weight switches its term off entirely: it
    is not computed, and its heads (and, for ``lambda_c=0``, the temperature) are frozen, so they get
    no gradient and DDP needs no ``find_unused_parameters`` for them.

    The student is tuned in place with :func:`pacx.adapters.apply_tuning` (LoRA by default, with
    the authors' r=8, alpha=16, dropout=0.1 on qkv/fc1/fc2 and the final norm trainable).

    Args:
        student: timm ``VisionTransformer`` with ``num_classes=0``; modified in place by the tuning.
        teacher_dims: raw embedding size of each teacher, e.g. ``{"ecg": 1024, "labs": 256}``; any
            non-empty subset of modalities (names must not contain "." nor be "cxr").
        shared_dim: size of the shared contrastive space. Defaults to 256.
        lambda_c: contrastive weight >= 0, or None for the preset's. Defaults to None.
        lambda_r: regression weight >= 0, or None for the preset's. Defaults to None.
        temperature: initial InfoNCE temperature (learnable, shared). Defaults to 0.07.
        label_smoothing: InfoNCE label smoothing. Defaults to 0.02.
        head_dropout: input dropout of every head. Defaults to 0.2.
        tuning: "lora", "last_n_blocks" or "full". Defaults to "lora".
        lora: LoRA options (any of ``targets``, ``r``, ``alpha``, ``dropout``, ``rslora``), used
            when ``tuning="lora"``. Defaults to None (the authors' values).
        trainable_norms: "final", "all" or "none" (see :func:`pacx.adapters.apply_lora`).
            Defaults to "final".
        last_n_blocks: blocks unfrozen by ``tuning="last_n_blocks"``. Defaults to 4.
        max_logit_scale: upper clamp of the InfoNCE scale. Defaults to 100.0.
        loss_weights: preset of ``(lambda_c, lambda_r)`` in :data:`LOSS_WEIGHT_PRESETS`; the pacx
            recipes pass "authors_training". Defaults to "paper_module".

    Raises:
        ValueError: for an empty or malformed ``teacher_dims``, a negative or non-finite weight,
            both weights zero, an unknown preset, tuning strategy or LoRA option, a student that is
            not a headless timm ViT, or any invalid head/loss/adapter option.

    Example:
        >>> from timm.models.vision_transformer import VisionTransformer
        >>> vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=0)
        >>> model = PaCXDistiller(vit, {"ecg": 32, "labs": 16}, shared_dim=16)
        >>> loss, parts = model(torch.randn(4, 3, 32, 32), {"ecg": torch.randn(4, 32), "labs": torch.randn(4, 16)})
        >>> loss.shape, sorted(parts)[:3]
        (torch.Size([]), ['contrastive/ecg', 'contrastive/labs', 'logit_scale'])
    """

    def __init__(
        self,
        student: nn.Module,
        teacher_dims: Mapping[str, int],
        shared_dim: int = 256,
        lambda_c: float | None = None,
        lambda_r: float | None = None,
        temperature: float = 0.07,
        label_smoothing: float = 0.02,
        head_dropout: float = 0.2,
        tuning: str = "lora",
        lora: Mapping[str, Any] | None = None,
        trainable_norms: str = "final",
        last_n_blocks: int = 4,
        max_logit_scale: float = 100.0,
        loss_weights: str = "paper_module",
    ) -> None:
        super().__init__()
        if not isinstance(student, nn.Module):
            raise ValueError(f"student must be an nn.Module (a timm VisionTransformer), got {type(student).__name__}")
        if not isinstance(getattr(student, "head", None), nn.Identity):
            raise ValueError(
                "student must be built with num_classes=0 so that it returns its pooled embedding, "
                f"got head {type(getattr(student, 'head', None)).__name__}"
            )
        student_dim = _student_dim(student)
        if not isinstance(teacher_dims, Mapping) or not teacher_dims:
            raise ValueError(f"teacher_dims must be a non-empty mapping of teacher name -> dim, got {teacher_dims!r}")
        for name, dim in teacher_dims.items():
            if not isinstance(name, str) or not name or "." in name or name == _STUDENT_NAME:
                raise ValueError(f"teacher names must be non-empty strings without '.' other than 'cxr', got {name!r}")
            if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
                raise ValueError(f"teacher_dims[{name!r}] must be a positive int, got {dim!r}")
        if isinstance(shared_dim, bool) or not isinstance(shared_dim, int) or shared_dim <= 0:
            raise ValueError(f"shared_dim must be a positive int, got {shared_dim!r}")
        if loss_weights not in LOSS_WEIGHT_PRESETS:
            raise ValueError(f"loss_weights must be one of {sorted(LOSS_WEIGHT_PRESETS)}, got {loss_weights!r}")
        preset_c, preset_r = LOSS_WEIGHT_PRESETS[loss_weights]
        self.lambda_c = _check_weight("lambda_c", preset_c if lambda_c is None else lambda_c)
        self.lambda_r = _check_weight("lambda_r", preset_r if lambda_r is None else lambda_r)
        if self.lambda_c == 0 and self.lambda_r == 0:
            raise ValueError("lambda_c and lambda_r cannot both be 0: the loss would be empty")
        if lora is not None and not isinstance(lora, Mapping):
            raise ValueError(f"lora must be a mapping of LoRA options or None, got {type(lora).__name__}")
        lora_options = dict(lora or {})
        unknown = set(lora_options) - _LORA_OPTIONS
        if unknown:
            raise ValueError(f"lora options must be among {sorted(_LORA_OPTIONS)}, got unknown {sorted(unknown)}")

        self.student = student
        self.teacher_dims: dict[str, int] = dict(teacher_dims)
        self.student_dim = student_dim
        self.shared_dim = shared_dim
        self.loss_weights = loss_weights
        self.tuning = tuning

        self.proj = nn.ModuleDict({_STUDENT_NAME: ProjectionHead(student_dim, shared_dim, head_dropout)})
        for name, dim in self.teacher_dims.items():
            self.proj[name] = ProjectionHead(dim, shared_dim, head_dropout)
        self.regress = nn.ModuleDict(
            {name: ProjectionHead(student_dim, dim, head_dropout) for name, dim in self.teacher_dims.items()}
        )
        self.infonce = GlobalInfoNCE(
            temperature=temperature,
            learnable_temperature=True,
            max_logit_scale=max_logit_scale,
            label_smoothing=label_smoothing,
            normalize=True,
        )
        self.regression = CosineRegressionLoss()
        # A switched-off term has nothing to learn; freezing keeps its parameters out of the
        # optimiser and out of DDP's unused-parameter bookkeeping.
        if self.lambda_c == 0:
            self.proj.requires_grad_(False)
            self.infonce.requires_grad_(False)
        if self.lambda_r == 0:
            self.regress.requires_grad_(False)

        # Tuning goes last: every option above is validated before the student is modified.
        self.tuning_summary = apply_tuning(
            student, tuning, n_blocks=last_n_blocks, trainable_norms=trainable_norms, **lora_options
        )

    @classmethod
    def from_preset(
        cls, student: nn.Module, teacher_dims: Mapping[str, int], preset: str = "authors_training", **kwargs: Any
    ) -> PaCXDistiller:
        """Build a distiller with the loss weights of a named preset (see :data:`LOSS_WEIGHT_PRESETS`)."""
        return cls(student, teacher_dims, loss_weights=preset, **kwargs)

    @property
    def teacher_names(self) -> list[str]:
        """The teachers this distiller was built for, in order."""
        return list(self.teacher_dims)

    def _check_images(self, cxr: torch.Tensor) -> None:
        if not isinstance(cxr, torch.Tensor) or cxr.ndim != 4 or not cxr.is_floating_point():
            got = _describe(cxr)
            raise ValueError(f"cxr must be a float tensor (B, C, H, W), got {got}")

    def _check_teacher(self, name: str, emb: torch.Tensor, batch: int | None = None) -> None:
        if name not in self.teacher_dims:
            raise ValueError(f"unknown teacher {name!r}; this distiller was built for {self.teacher_names}")
        expected = self.teacher_dims[name]
        if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or not emb.is_floating_point():
            got = _describe(emb)
            raise ValueError(f"teacher embedding {name!r} must be a float tensor (B, {expected}), got {got}")
        if emb.shape[1] != expected:
            raise ValueError(
                f"teacher embedding {name!r} must have dimension {expected}, got shape {tuple(emb.shape)}"
            )
        if batch is not None and emb.shape[0] != batch:
            raise ValueError(f"teacher embedding {name!r} has batch size {emb.shape[0]}, expected {batch} (from cxr)")

    def embed(self, cxr: torch.Tensor) -> torch.Tensor:
        """Pooled student embedding (B, student_dim) of images (B, C, H, W).

        Raises:
            ValueError: when ``cxr`` is not a 4-D float tensor.
        """
        self._check_images(cxr)
        return self.student(cxr)

    def project(self, cxr: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """CXR embedding in the shared space (B, shared_dim), through ``proj["cxr"]``.

        Args:
            cxr: images (B, C, H, W).
            normalize: L2-normalise the rows (the InfoNCE normalises internally). Defaults to False.
        """
        out = self.proj[_STUDENT_NAME](self.embed(cxr))
        return nn.functional.normalize(out, dim=1) if normalize else out

    def project_teacher(self, name: str, emb: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """A teacher's embedding in the shared space (B, shared_dim), through ``proj[name]``.

        Args:
            name: teacher name.
            emb: the teacher's raw embedding (B, teacher_dims[name]).
            normalize: L2-normalise the rows. Defaults to False.

        Raises:
            ValueError: for an unknown teacher or a wrongly shaped embedding.
        """
        self._check_teacher(name, emb)
        out = self.proj[name](emb.detach())
        return nn.functional.normalize(out, dim=1) if normalize else out

    def forward(
        self, cxr: torch.Tensor, teacher_embeddings: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Stage-2 loss of a batch.

        Args:
            cxr: images (B, C, H, W).
            teacher_embeddings: precomputed teacher embeddings ``{name: (B, teacher_dims[name])}``,
                detached here. A teacher absent from the mapping is skipped (the means run over the
                teachers present); its heads then get no gradient in that step, which DDP only
                accepts with ``find_unused_parameters=True``.

        Returns:
            ``(loss, parts)``. ``parts`` holds detached 0-dim tensors: ``loss/total``, and for each
            active term ``loss/contrastive`` and ``loss/regression`` (unweighted means); per present
            teacher ``t`` with ``lambda_c > 0``: ``contrastive/t`` (loss), ``mi_lower_bound/t``
            (log N - unsmoothed InfoNCE), ``top1/cxr_to_t``, ``top1/t_to_cxr`` (in-batch retrieval
            accuracy) and ``logit_scale`` (the clamped scale multiplying the cosine logits); with
            ``lambda_r > 0``: ``regression/t`` (1 - cos) and ``regression_cosine/t``.

        Raises:
            ValueError: for malformed images, an unknown teacher name, a teacher embedding of the
                wrong dimension or batch size, or, in training mode, no teacher present.
        """
        self._check_images(cxr)
        if not isinstance(teacher_embeddings, Mapping):
            raise ValueError(
                f"teacher_embeddings must be a mapping name -> tensor, got {type(teacher_embeddings).__name__}"
            )
        batch = cxr.shape[0]
        for name, emb in teacher_embeddings.items():
            self._check_teacher(name, emb, batch)
        present = [name for name in self.teacher_dims if name in teacher_embeddings]
        if not present:
            if self.training:
                raise ValueError(
                    f"teacher_embeddings holds none of the teachers {self.teacher_names}; "
                    "a training step needs at least one"
                )
            zero = cxr.new_zeros((), dtype=torch.float32)
            return zero, {"loss/total": zero}

        pooled = self.student(cxr)
        parts: dict[str, torch.Tensor] = {}
        total = pooled.new_zeros((), dtype=torch.float32)

        if self.lambda_c > 0:
            cxr_shared = self.proj[_STUDENT_NAME](pooled)
            contrastive = []
            for name in present:
                teacher_shared = self.proj[name](teacher_embeddings[name].detach())
                loss, diag = self.infonce(cxr_shared, teacher_shared, return_diagnostics=True)
                contrastive.append(loss)
                parts[f"contrastive/{name}"] = loss.detach()
                parts[f"mi_lower_bound/{name}"] = diag["mi_lower_bound"]
                parts[f"top1/cxr_to_{name}"] = diag["top1_a_to_b"]
                parts[f"top1/{name}_to_cxr"] = diag["top1_b_to_a"]
                parts["logit_scale"] = diag["scale"]
            loss_c = torch.stack(contrastive).mean()
            parts["loss/contrastive"] = loss_c.detach()
            total = total + self.lambda_c * loss_c

        if self.lambda_r > 0:
            regression = []
            for name in present:
                pred = self.regress[name](pooled)
                loss = self.regression(pred, teacher_embeddings[name].detach())
                regression.append(loss)
                parts[f"regression/{name}"] = loss.detach()
                parts[f"regression_cosine/{name}"] = 1.0 - loss.detach()
            loss_r = torch.stack(regression).mean()
            parts["loss/regression"] = loss_r.detach()
            total = total + self.lambda_r * loss_r

        parts["loss/total"] = total.detach()
        return total, parts

    def export_encoder(self) -> nn.Module:
        """A deep copy of the student as a plain timm ViT: adapters merged and unwrapped, heads dropped.

        The copy's state dict loads strictly into ``timm.create_model(..., num_classes=0)`` of the
        same architecture. It is returned ready for inference and frozen feature extraction: eval
        mode, every parameter with ``requires_grad=False`` and no gradients (call
        ``requires_grad_(True)`` and ``train()`` to fine-tune it). The distiller itself is unchanged.
        """
        encoder = copy.deepcopy(self.student)
        if any(isinstance(m, LoRALinear) for m in encoder.modules()):
            unwrap_lora(encoder)
        for param in encoder.parameters():
            param.grad = None
        encoder.requires_grad_(False)
        return encoder.eval()

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW parameter groups over the trainable parameters: :func:`pacx.engine.param_groups`.

        Norm weights, biases, the temperature, ``pos_embed`` and the tokens get no weight decay.
        This deliberately deviates from the authors, who decayed everything.

        Args:
            weight_decay: decay of the matrices (LoRA factors, head and block weights), >= 0.

        Returns:
            Up to two groups, ``[{"params": decayed, "weight_decay": weight_decay, "name": "decay"},
            {"params": others, "weight_decay": 0.0, "name": "no_decay"}]``, empty groups omitted.

        Raises:
            ValueError: when ``weight_decay`` is negative or not finite.
        """
        from pacx.engine.optim import param_groups  # imported here: the engine builds on the nets

        return param_groups(self, weight_decay, use_model_groups=False)

    def extra_repr(self) -> str:
        return (
            f"teachers={self.teacher_dims}, shared_dim={self.shared_dim}, lambda_c={self.lambda_c:g}, "
            f"lambda_r={self.lambda_r:g}, tuning={self.tuning!r}"
        )
