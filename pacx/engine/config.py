"""``TrainerConfig``: every knob of the training loop, as a JSON round-trippable dataclass."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

__all__ = ["AMP_MODES", "RESUME_FREE_FIELDS", "TrainerConfig", "config_differences"]

AMP_MODES = ("auto", "bf16", "fp16", "none")

# Fields a resumed run may change: they decide how the run is shown, logged, saved or executed,
# never which numbers it computes (``compile``/``device``/``find_unused_parameters``/
# ``deterministic`` pick kernels and placement, not the maths).
RESUME_FREE_FIELDS: frozenset[str] = frozenset(
    {
        "log_every", "progress", "tensorboard", "keep_last", "save_every", "name", "validate_every",
        "compile", "compile_backend", "device", "find_unused_parameters", "deterministic",
    }
)  # fmt: skip


@dataclass
class TrainerConfig:
    """Configuration of :class:`pacx.engine.Trainer`.

    Attributes:
        epochs: passes over the training loader.
        max_steps: optional cap on optimiser steps (the schedule spans the capped run).
        lr: peak learning rate.
        weight_decay: AdamW decoupled decay (not applied to norms, biases, tokens, temperature).
        betas: AdamW moment coefficients.
        eps: AdamW epsilon.
        warmup_steps: linear warmup length in optimiser steps; exclusive with ``warmup_epochs``.
        warmup_epochs: warmup length in epochs (fractions allowed), used when ``warmup_steps``
            is None.
        min_lr_ratio: cosine floor as a fraction of ``lr``.
        grad_clip: max global gradient norm, or None for no clipping.
        accumulation_steps: micro-batches per optimiser step.
        amp: "auto" (bf16 autocast on CUDA, fp32 on CPU), "bf16", "fp16" (with a GradScaler)
            or "none".
        compile: wrap the model in ``torch.compile``.
        compile_backend: backend handed to ``torch.compile``.
        find_unused_parameters: DDP option, for models that skip parameters in some steps.
        log_every: optimiser steps between logged rows (CSV/TensorBoard).
        save_every: optimiser steps between checkpoints (None: only at the end).
        keep_last: number of most recent checkpoints kept on disk.
        seed: seed of the run (``seed + rank`` per process).
        deterministic: request deterministic kernels (see :func:`pacx.engine.seed_everything`).
        device: "auto" (``cuda:<LOCAL_RANK>`` when CUDA is available, else CPU) or a torch device.
        progress: show a tqdm bar (rank 0 only).
        tensorboard: write TensorBoard events besides the CSV.
        name: name of the stage, shown in the progress bar (``"distill epoch 3/10"``).
        validate_every: epochs between two validation passes when ``Trainer.fit`` gets a
            ``val_loader`` (the last step is always validated).

    Example:
        >>> cfg = TrainerConfig(epochs=2, lr=1e-3)
        >>> TrainerConfig.from_json(cfg.to_json()) == cfg
        True
    """

    epochs: int = 1
    max_steps: int | None = None
    lr: float = 1e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int | None = None
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0
    grad_clip: float | None = None
    accumulation_steps: int = 1
    amp: str = "auto"
    compile: bool = False
    compile_backend: str = "inductor"
    find_unused_parameters: bool = False
    log_every: int = 10
    save_every: int | None = None
    keep_last: int = 2
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    progress: bool = True
    tensorboard: bool = True
    name: str = "train"
    validate_every: int = 1

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # JSON gives a list back
        _check_int(self, "epochs", minimum=1)
        _check_int(self, "accumulation_steps", minimum=1)
        _check_int(self, "log_every", minimum=1)
        _check_int(self, "keep_last", minimum=1)
        _check_int(self, "seed", minimum=0)
        _check_int(self, "validate_every", minimum=1)
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"TrainerConfig.name must be a non-empty string, got {self.name!r}")
        for name in ("max_steps", "warmup_steps", "save_every"):
            if getattr(self, name) is not None:
                _check_int(self, name, minimum=0 if name == "warmup_steps" else 1)
        if not self.lr > 0:
            raise ValueError(f"TrainerConfig.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"TrainerConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"TrainerConfig.betas must be two numbers in [0, 1), got {self.betas}")
        if self.warmup_epochs < 0:
            raise ValueError(f"TrainerConfig.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.warmup_steps is not None and self.warmup_epochs > 0:
            raise ValueError(
                "TrainerConfig takes warmup_steps or warmup_epochs, not both: got "
                f"warmup_steps={self.warmup_steps}, warmup_epochs={self.warmup_epochs}"
            )
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"TrainerConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"TrainerConfig.grad_clip must be None or > 0, got {self.grad_clip}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"TrainerConfig.amp must be one of {AMP_MODES}, got {self.amp!r}")

    def resolve_warmup(self, steps_per_epoch: int, total_steps: int) -> int:
        """Warmup length in optimiser steps, clipped to ``total_steps``."""
        if self.warmup_steps is not None:
            warmup = self.warmup_steps
        else:
            warmup = int(round(self.warmup_epochs * steps_per_epoch))
        return min(warmup, total_steps)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (tuples become lists), ready for JSON."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["betas"] = list(self.betas)
        return out

    def to_json(self) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainerConfig:
        """Build from a dict, refusing unknown keys (a typo must not be silently ignored).

        Raises:
            ValueError: on keys that are not fields of :class:`TrainerConfig`.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown TrainerConfig keys {unknown}; expected a subset of {sorted(names)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> TrainerConfig:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))


def config_differences(saved: Any, current: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Keys whose values differ between two JSON-like configurations, nested keys dotted.

    Args:
        saved: the configuration read back from a checkpoint.
        current: the configuration of the run now; compare it after a JSON round trip so
            tuples and lists, or NumPy and Python numbers, do not count as differences.
        prefix: dotted path of ``saved`` inside a larger configuration.

    Returns:
        ``[(key, saved_value, current_value), ...]``; a key missing on one side has the
        value ``"<missing>"`` there.

    Example:
        >>> config_differences({"lr": 1e-3, "data": {"batch": 8}}, {"lr": 1e-3, "data": {"batch": 16}})
        [('data.batch', 8, 16)]
    """
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in list(saved) + [k for k in current if k not in saved]:
            name = f"{prefix}.{key}" if prefix else str(key)
            out += config_differences(saved.get(key, _MISSING), current.get(key, _MISSING), name)
        return out
    return [] if saved == current else [(prefix, saved, current)]


_MISSING = "<missing>"


def _check_int(cfg: TrainerConfig, name: str, minimum: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"TrainerConfig.{name} must be an integer >= {minimum}, got {value!r}")
