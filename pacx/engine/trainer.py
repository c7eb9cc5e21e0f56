"""One training loop for every stage (MAE, teachers, distillation, probes).

A stage supplies a model, a loader and a ``step_fn(model, batch) -> (loss, logs)``; the
:class:`Trainer` does the rest the same way everywhere: device placement, DDP under
``torchrun``, gradient accumulation, clipping, AMP, the warmup-cosine schedule, progress,
CSV/TensorBoard logs, resumable checkpoints and the final weights.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

import pacx
from pacx.distributed import all_gather_object, barrier, get_rank, get_world_size, is_distributed
from pacx.io import save_json

from .checkpoint import (
    load_checkpoint,
    remove_incomplete_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
    save_final,
)
from .config import TrainerConfig
from .data import ResumableSampler, epoch_generator_seed, move_to_device
from .logging import MetricLogger
from .optim import build_optimizer
from .schedule import warmup_cosine
from .seed import get_rng_state, seed_everything, set_rng_state

__all__ = ["StepFn", "Trainer", "unwrap_model"]

StepFn = Callable[[nn.Module, Any], "tuple[torch.Tensor, Mapping[str, float | torch.Tensor]]"]
ExtraMeta = Mapping[str, Any] | Callable[[nn.Module], Mapping[str, Any]] | None


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module inside ``torch.compile`` and ``DistributedDataParallel`` wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, DistributedDataParallel):
            model = model.module
        else:
            return model


class Trainer:
    """Train a model with a stage-specific ``step_fn``.

    ``step_fn(model, batch)`` receives the model as the trainer runs it (DDP- and
    compile-wrapped when enabled) and the batch already on the device, and returns
    ``(loss, logs)``: a scalar loss tensor to minimise and a dict of scalars (floats or
    tensors) to log. Under DDP, gradients are synchronised by the wrapper's ``forward``, so
    ``step_fn`` must obtain the outputs it differentiates by *calling* ``model(...)``; to reach
    other methods, route them through ``forward`` (``unwrap_model(model)`` gives the bare
    module for anything that does not need gradients).

    Output layout under ``out_dir``: ``config.json`` (resolved configuration, written at
    start), ``logs/metrics.csv`` and ``logs/tb/``, ``checkpoints/step_<n>/`` (see
    :mod:`pacx.engine.checkpoint`) with a ``checkpoints/latest`` pointer, and
    ``final/model.safetensors`` + ``final/config.json`` at the end. Only rank 0 writes.

    Exact resumption (same weights as an uninterrupted run) holds on CPU when the loader
    comes from :func:`pacx.engine.make_loader` (or at least has a ``generator``) and any
    randomness of the dataset is drawn either in the main process (``num_workers=0``) or
    from the sample index and epoch; worker processes' own RNG streams are not checkpointed.

    Args:
        config: a :class:`TrainerConfig` (or a dict of its fields).
        out_dir: run folder.
        run_config: the stage's own configuration (model, data, ...), stored beside the
            trainer configuration in ``config.json``, every ``meta.json`` and the final config.

    Example:
        >>> import tempfile
        >>> net = nn.Linear(2, 1)
        >>> data = [(torch.randn(2), torch.randn(1)) for _ in range(8)]
        >>> loader = torch.utils.data.DataLoader(data, batch_size=4)
        >>> def step_fn(model, batch):
        ...     x, y = batch
        ...     loss = nn.functional.mse_loss(model(x), y)
        ...     return loss, {}
        >>> cfg = TrainerConfig(epochs=1, lr=1e-2, progress=False, tensorboard=False)
        >>> Trainer(cfg, tempfile.mkdtemp()).fit(net, loader, step_fn)["step"]
        2
    """

    def __init__(
        self,
        config: TrainerConfig | Mapping[str, Any],
        out_dir: str | os.PathLike,
        run_config: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(config, Mapping):
            config = TrainerConfig.from_dict(dict(config))
        if not isinstance(config, TrainerConfig):
            raise ValueError(f"config must be a TrainerConfig or a dict, got {type(config).__name__}")
        self.config = config
        self.out_dir = Path(out_dir)
        self.run_config = dict(run_config or {})

    # ------------------------------------------------------------------------------------
    # folders

    @property
    def checkpoints_dir(self) -> Path:
        """``<out>/checkpoints``."""
        return self.out_dir / "checkpoints"

    @property
    def final_dir(self) -> Path:
        """``<out>/final``."""
        return self.out_dir / "final"

    @property
    def logs_dir(self) -> Path:
        """``<out>/logs``."""
        return self.out_dir / "logs"

    # ------------------------------------------------------------------------------------
    # set-up helpers

    def resolve_device(self) -> torch.device:
        """The device this process trains on."""
        if self.config.device != "auto":
            return torch.device(self.config.device)
        if torch.cuda.is_available():
            index = int(os.environ.get("LOCAL_RANK", "0")) if is_distributed() else torch.cuda.current_device()
            return torch.device("cuda", index)
        return torch.device("cpu")

    def amp_dtype(self, device: torch.device) -> torch.dtype | None:
        """Autocast dtype for ``device`` (None: full precision)."""
        amp = self.config.amp
        if amp == "auto":
            return torch.bfloat16 if device.type == "cuda" else None
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]

    # ------------------------------------------------------------------------------------

    def fit(
        self,
        model: nn.Module,
        train_loader: Any,
        step_fn: StepFn,
        resume: str | os.PathLike | None = None,
        extra_meta: ExtraMeta = None,
    ) -> dict[str, Any]:
        """Train ``model`` for ``config.epochs`` epochs (or ``config.max_steps`` steps).

        Args:
            model: the module; its trainable parameters are optimised with AdamW.
            train_loader: an iterable with ``len()`` yielding batches (nested dicts, lists and
                tuples of tensors), ideally from :func:`pacx.engine.make_loader`.
            step_fn: ``step_fn(model, batch) -> (loss, logs)``, see the class docstring.
            resume: None, ``"latest"`` or a checkpoint/run folder to continue from.
            extra_meta: metadata stored in every checkpoint's ``meta.json`` and in
                ``final/config.json`` under ``"extra"``: a dict, or a callable receiving the
                unwrapped model and returning one (evaluated at each save).

        Returns:
            ``{"step", "epoch", "total_steps", "steps_per_epoch", "checkpoint", "final_dir",
            "metrics", "out_dir"}``; ``metrics`` holds the last logged scalars.

        Raises:
            ValueError: on an empty loader, a loader shorter than ``accumulation_steps``,
                ranks with different step counts, or a malformed ``step_fn`` output.
            FloatingPointError: when the logged loss is not finite.
        """
        cfg = self.config
        rank, world_size = get_rank(), get_world_size()
        is_main = rank == 0
        device = self.resolve_device()
        amp_dtype = self.amp_dtype(device)
        seed_everything(cfg.seed, rank, deterministic=cfg.deterministic)

        steps_per_epoch = self._steps_per_epoch(train_loader)
        total_steps = cfg.epochs * steps_per_epoch
        if cfg.max_steps is not None:
            total_steps = min(total_steps, cfg.max_steps)
        warmup_steps = cfg.resolve_warmup(steps_per_epoch, total_steps)

        model.to(device)
        optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas, cfg.eps)
        scheduler = warmup_cosine(optimizer, warmup_steps, total_steps, cfg.min_lr_ratio)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

        step, epoch, skip_batches = 0, 0, 0
        rng_to_restore: dict[str, Any] | None = None
        resumed_from: Path | None = None
        if resume is not None:
            resumed_from = resolve_checkpoint(resume, self.out_dir)
            step, epoch, skip_batches, rng_to_restore = self._load_resume(
                resumed_from, model, optimizer, scheduler, scaler, steps_per_epoch, rank, world_size
            )

        runner: nn.Module = model
        ddp: DistributedDataParallel | None = None
        if is_distributed():
            ddp = DistributedDataParallel(
                model,
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=cfg.find_unused_parameters,
            )
            runner = ddp
        if cfg.compile:
            runner = torch.compile(runner, backend=cfg.compile_backend)

        if is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            # Folders of saves interrupted by a crash (``step_<n>.tmp-*``, ``final.tmp-*``).
            remove_incomplete_checkpoints(self.checkpoints_dir)
            remove_incomplete_checkpoints(self.out_dir)
            save_json(
                {
                    "trainer": cfg.to_dict(),
                    "run_config": self.run_config,
                    "resolved": {
                        "device": str(device),
                        "amp_dtype": str(amp_dtype).replace("torch.", "") if amp_dtype else "float32",
                        "world_size": world_size,
                        "per_rank_batch_size": getattr(train_loader, "batch_size", None),
                        "steps_per_epoch": steps_per_epoch,
                        "total_steps": total_steps,
                        "warmup_steps": warmup_steps,
                        "resumed_from": str(resumed_from) if resumed_from else None,
                        "pacx_version": pacx.__version__,
                        "torch_version": torch.__version__,
                    },
                },
                self.out_dir / "config.json",
            )
        barrier()

        logger = MetricLogger(
            self.logs_dir,
            enabled=is_main,
            tensorboard=cfg.tensorboard,
            resume_step=step if resumed_from is not None else None,
        )
        progress = tqdm(
            total=total_steps,
            initial=step,
            desc="train",
            disable=not (is_main and cfg.progress),
            dynamic_ncols=True,
        )
        last_saved = step if resumed_from is not None else None
        last_checkpoint: Path | None = resumed_from
        last_metrics: dict[str, float] = {}
        window = _ScalarWindow()
        accum = cfg.accumulation_steps

        def save(position: tuple[int, int]) -> Path | None:
            return self._save(model, optimizer, scheduler, scaler, step, position, steps_per_epoch, extra_meta)

        try:
            if rng_to_restore is not None:
                set_rng_state(rng_to_restore)  # last, so nothing above shifts the streams
            runner.train()
            position = (epoch, skip_batches)
            while step < total_steps:
                batches = self._start_epoch(train_loader, epoch, skip_batches)
                first = skip_batches // accum
                skip_batches = 0
                if first >= steps_per_epoch:  # a position at the very end of an epoch
                    epoch += 1
                    continue
                for step_in_epoch in range(first, steps_per_epoch):
                    if step >= total_steps:
                        break
                    for micro in range(accum):
                        batch = next(batches, _EXHAUSTED)
                        if batch is _EXHAUSTED:
                            raise ValueError(
                                f"train_loader yielded fewer batches than len(train_loader)={len(train_loader)} "
                                f"in epoch {epoch}"
                            )
                        batch = move_to_device(batch, device, non_blocking=device.type == "cuda")
                        sync = ddp.no_sync() if ddp is not None and micro < accum - 1 else nullcontext()
                        with sync:
                            autocast = (
                                torch.autocast(device_type=device.type, dtype=amp_dtype)
                                if amp_dtype is not None
                                else nullcontext()
                            )
                            with autocast:
                                loss, logs = _check_step_output(step_fn(runner, batch))
                            # Mean over micro-batches: the accumulated gradient equals a big batch's.
                            scaler.scale(loss / accum).backward()
                        window.add("loss", loss)
                        for key, value in logs.items():
                            window.add(key, value)

                    if cfg.grad_clip is not None:
                        scaler.unscale_(optimizer)
                        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                        window.add("grad_norm", grad_norm)
                    lr = optimizer.param_groups[0]["lr"]
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    with warnings.catch_warnings():
                        # GradScaler skips the optimiser step on overflow; the schedule still advances.
                        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                        scheduler.step()
                    step += 1
                    done_in_epoch = (step_in_epoch + 1) * accum
                    position = (epoch + 1, 0) if step_in_epoch + 1 == steps_per_epoch else (epoch, done_in_epoch)
                    progress.update(1)

                    if step % cfg.log_every == 0 or step == total_steps:
                        last_metrics = self._log(window, logger, progress, step, lr, steps_per_epoch, scaler)
                    if cfg.save_every is not None and step % cfg.save_every == 0 and step < total_steps:
                        last_checkpoint = save(position)
                        last_saved = step
                epoch = position[0]

            if last_saved != step:
                last_checkpoint = save(position)
            if is_main:
                save_final(
                    self.final_dir,
                    model.state_dict(),
                    {
                        "format": "pacx-final/1",
                        "step": step,
                        "epoch": position[0],
                        "trainer": cfg.to_dict(),
                        "run_config": self.run_config,
                        "extra": _resolve_extra(extra_meta, model),
                    },
                )
            barrier()
        finally:
            progress.close()
            logger.close()
        return {
            "step": step,
            "epoch": position[0],
            "total_steps": total_steps,
            "steps_per_epoch": steps_per_epoch,
            "checkpoint": str(last_checkpoint) if last_checkpoint is not None else None,
            "final_dir": str(self.final_dir),
            "metrics": last_metrics,
            "out_dir": str(self.out_dir),
        }

    # ------------------------------------------------------------------------------------
    # internals

    def _steps_per_epoch(self, loader: Any) -> int:
        try:
            num_batches = len(loader)
        except TypeError as err:
            raise ValueError(f"train_loader must have a length, got {type(loader).__name__} without __len__") from err
        accum = self.config.accumulation_steps
        if num_batches < accum:
            raise ValueError(
                f"train_loader must yield at least accumulation_steps={accum} batches per epoch, got {num_batches}"
            )
        # Trailing micro-batches that do not fill an optimiser step are dropped, like drop_last.
        steps = num_batches // accum
        if is_distributed():
            counts = all_gather_object(steps)
            if len(set(counts)) != 1:
                raise ValueError(
                    f"every rank must take the same number of steps per epoch, got {counts}; build the loader with "
                    "pacx.engine.make_loader(..., drop_last=True)"
                )
        return steps

    def _start_epoch(self, loader: Any, epoch: int, skip_batches: int) -> Iterator[Any]:
        """Iterator over the epoch's batches, positioned after ``skip_batches`` batches."""
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        generator = getattr(loader, "generator", None)
        if isinstance(generator, torch.Generator):
            # Worker base seeds (and a RandomSampler's order) then depend on the epoch only.
            base = sampler.seed if isinstance(sampler, ResumableSampler) else self.config.seed
            generator.manual_seed(epoch_generator_seed(base, epoch))
        batch_size = getattr(loader, "batch_size", None)
        if skip_batches and isinstance(sampler, ResumableSampler) and batch_size:
            sampler.skip_next(skip_batches * batch_size)
            return iter(loader)
        batches = iter(loader)
        for _ in range(skip_batches):  # generic loaders: replay the consumed batches
            next(batches)
        return batches

    def _load_resume(
        self,
        path: Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
        steps_per_epoch: int,
        rank: int,
        world_size: int,
    ) -> tuple[int, int, int, dict[str, Any]]:
        ckpt = load_checkpoint(path)
        state = ckpt.trainer_state
        if state is None:
            raise ValueError(f"checkpoint {path} holds weights only and cannot resume training")
        model.load_state_dict(ckpt.model_state)
        optimizer.load_state_dict(state["optimizer"])
        sched_state = dict(state["scheduler"])
        # The schedule's shape comes from the current configuration, not the saved one (None
        # entries tell LambdaLR to keep its current lambdas).
        sched_state["lr_lambdas"] = [None] * len(getattr(scheduler, "lr_lambdas", []))
        scheduler.load_state_dict(sched_state)
        if scaler.is_enabled() and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if int(state["steps_per_epoch"]) != steps_per_epoch:
            warnings.warn(
                f"resuming from {path}: it was written with {state['steps_per_epoch']} steps per epoch, the loader "
                f"now gives {steps_per_epoch}; the position within the epoch will not match",
                stacklevel=3,
            )
        rng_states = state["rng"]
        if len(rng_states) != world_size:
            warnings.warn(
                f"resuming from {path}: saved by {len(rng_states)} processes, now {world_size}; every rank takes "
                "rank 0's RNG state (offset by its rank is lost)",
                stacklevel=3,
            )
            rng = rng_states[0]
        else:
            rng = rng_states[rank]
        return int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"]), rng

    def _save(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
        step: int,
        position: tuple[int, int],
        steps_per_epoch: int,
        extra_meta: ExtraMeta,
    ) -> Path | None:
        # Every rank contributes its RNG state (collective); rank 0 writes. Exchanged in memory
        # between this run's own processes, never read back from disk through pickle.
        rng_states = all_gather_object(get_rng_state())
        path = None
        if get_rank() == 0:
            epoch, batch_in_epoch = position
            trainer_state = {
                "step": step,
                "epoch": epoch,
                "batch_in_epoch": batch_in_epoch,
                "steps_per_epoch": steps_per_epoch,
                "world_size": get_world_size(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "rng": rng_states,
            }
            meta = {
                "epoch": epoch,
                "batch_in_epoch": batch_in_epoch,
                "trainer": self.config.to_dict(),
                "run_config": self.run_config,
                "extra": _resolve_extra(extra_meta, model),
            }
            path = save_checkpoint(
                self.checkpoints_dir, step, model.state_dict(), trainer_state, meta, keep_last=self.config.keep_last
            )
        barrier()
        return path if path is not None else self.checkpoints_dir / f"step_{step}"

    def _log(
        self,
        window: _ScalarWindow,
        logger: MetricLogger,
        progress: tqdm,
        step: int,
        lr: float,
        steps_per_epoch: int,
        scaler: torch.amp.GradScaler,
    ) -> dict[str, float]:
        scalars = window.pop_means()
        if is_distributed():
            # The logged loss is the mean over ranks (every rank reaches this line at the same step),
            # so the non-finite check below fires on every rank together instead of hanging the others.
            loss = torch.tensor([scalars["loss"]], dtype=torch.float64, device=_collective_device())
            dist.all_reduce(loss)
            scalars["loss"] = loss.item() / get_world_size()
        scalars["lr"] = lr
        scalars["epoch"] = step / steps_per_epoch
        if scaler.is_enabled():
            scalars["amp_scale"] = float(scaler.get_scale())
        if not torch.isfinite(torch.tensor(scalars["loss"])):
            raise FloatingPointError(f"loss is {scalars['loss']} at step {step}; lower lr or check the inputs")
        logger.log(step, scalars)
        progress.set_postfix(loss=f"{scalars['loss']:.4g}", lr=f"{lr:.3g}", refresh=False)
        return scalars


_EXHAUSTED = object()


class _ScalarWindow:
    """Running sums of logged scalars between two log steps (tensors kept lazy: no sync per step)."""

    def __init__(self) -> None:
        self._sums: dict[str, Any] = {}
        self._counts: dict[str, int] = {}

    def add(self, key: str, value: float | torch.Tensor) -> None:
        if isinstance(value, torch.Tensor):
            value = value.detach().float().mean()
        else:
            value = float(value)
        self._sums[key] = self._sums.get(key, 0.0) + value
        self._counts[key] = self._counts.get(key, 0) + 1

    def pop_means(self) -> dict[str, float]:
        out = {k: float(v) / self._counts[k] for k, v in self._sums.items()}
        self._sums.clear()
        self._counts.clear()
        return out


def _check_step_output(out: Any) -> tuple[torch.Tensor, Mapping[str, Any]]:
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ValueError(f"step_fn must return (loss, logs), got {type(out).__name__}")
    loss, logs = out
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"step_fn's loss must be a scalar tensor, got {shape}")
    if not loss.requires_grad:
        raise ValueError("step_fn's loss does not require grad: compute it from the model's outputs")
    if logs is None:
        logs = {}
    if not isinstance(logs, Mapping):
        raise ValueError(f"step_fn's logs must be a dict of scalars, got {type(logs).__name__}")
    return loss.reshape(()), logs


def _resolve_extra(extra_meta: ExtraMeta, model: nn.Module) -> dict[str, Any]:
    if extra_meta is None:
        return {}
    value = extra_meta(unwrap_model(model)) if callable(extra_meta) else extra_meta
    return dict(value)


def _collective_device() -> torch.device:
    backend = dist.get_backend() if is_distributed() else "gloo"
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
