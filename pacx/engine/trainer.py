"""One training loop for every stage (MAE, teachers, distillation, probes).

A stage supplies a model, a loader and a ``step_fn(model, batch) -> (loss, logs)``; the
:class:`Trainer` does the rest the same way everywhere: device placement, DDP under
``torchrun``, gradient accumulation, clipping, AMP, the warmup-cosine schedule, progress,
CSV/TensorBoard logs, validation with a best checkpoint, resumable checkpoints and the final
weights.

The loop never waits for the device between two log steps: losses, logged scalars and their
finiteness accumulate on the device and are read back only when a row is logged or before
anything is written, so a step costs what ``step_fn``, backward and the optimiser cost.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

import pacx
from pacx.distributed import all_gather_object, barrier, get_rank, get_world_size, is_distributed
from pacx.io import _json_default, save_json

from .checkpoint import (
    Checkpoint,
    archive_checkpoints,
    load_checkpoint,
    remove_incomplete_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
    save_final,
)
from .config import RESUME_FREE_FIELDS, TrainerConfig, config_differences
from .data import BatchMover, ResumableSampler, epoch_generator_seed
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


@dataclass
class _Run:
    """The state of one :meth:`Trainer.fit` call, shared by the steps it is split into."""

    model: nn.Module
    device: torch.device
    amp_dtype: torch.dtype | None
    steps_per_epoch: int
    total_steps: int
    num_batches: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    step_fn: StepFn
    val_step_fn: StepFn | None
    val_loader: Any
    extra_meta: ExtraMeta
    batch_size: int | None  # global batch (per-rank batch x world size), when the loader tells it
    runner: nn.Module | None = None  # the model as step_fn receives it (DDP- and compile-wrapped)
    ddp: DistributedDataParallel | None = None
    logger: MetricLogger | None = None
    progress: Any = None
    mover: BatchMover | None = None
    step: int = 0
    position: tuple[int, int] = (0, 0)  # (epoch, batches consumed in it) after ``step``
    resumed_from: Path | None = None
    rng_to_restore: dict[str, Any] | None = None
    last_saved: int | None = None
    last_checkpoint: Path | None = None
    checked_step: int = 0  # the losses up to this step are known to be finite
    lr: float = 0.0
    clip_params: list[nn.Parameter] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    val_metrics: dict[str, float] = field(default_factory=dict)
    best: dict[str, Any] | None = None  # {"step", "epoch", "val_loss"} of the lowest val_loss
    validated_step: int | None = None
    window: _ScalarWindow = field(default_factory=lambda: _ScalarWindow())


class Trainer:
    """Train a model with a stage-specific ``step_fn``.

    ``step_fn(model, batch)`` receives the model as the trainer runs it (DDP- and
    compile-wrapped when enabled) and the batch already on the device, and returns
    ``(loss, logs)``: a scalar loss tensor to minimise and a dict of scalars (floats or
    tensors) to log. Under DDP, gradients are synchronised by the wrapper's ``forward``, so
    ``step_fn`` must obtain the outputs it differentiates by *calling* ``model(...)``; to reach
    other methods, route them through ``forward`` (``unwrap_model(model)`` gives the bare
    module for anything that does not need gradients).

    With a ``val_loader``, ``fit`` validates every ``validate_every`` epochs and after the last
    step: ``val_step_fn`` (default ``step_fn``) runs on the bare module in eval mode under
    ``torch.no_grad()``, its loss and logs are averaged over the validation samples (over all
    ranks) and logged as ``val_loss`` / ``val_<key>``, and the weights of the lowest
    ``val_loss`` are kept in ``best/``. Validation leaves the training random streams as they
    were.

    Output layout under ``out_dir``: ``config.json`` (resolved configuration, written at
    start), ``logs/metrics.csv`` and ``logs/tb/``, ``checkpoints/step_<n>/`` (see
    :mod:`pacx.engine.checkpoint`) with a ``checkpoints/latest`` pointer,
    ``best/model.safetensors`` + ``best/config.json`` (with a validation loader) and
    ``final/model.safetensors`` + ``final/config.json`` at the end. Only rank 0 writes. A fresh
    (not resumed) run moves an earlier run's checkpoints and ``best/`` into
    ``checkpoints/previous_<time>/``.

    Exact resumption (same weights as an uninterrupted run) holds on CPU when the loader
    comes from :func:`pacx.engine.make_loader` (or at least has a ``generator``) and any
    randomness of the dataset is drawn either in the main process (``num_workers=0``) or
    from the sample index and epoch; worker processes' own RNG streams are not checkpointed.
    A resumed run must use the configuration it was started with (see ``fit``).

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
    def best_dir(self) -> Path:
        """``<out>/best``: weights of the lowest validation loss."""
        return self.out_dir / "best"

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
        val_loader: Any = None,
        val_step_fn: StepFn | None = None,
    ) -> dict[str, Any]:
        """Train ``model`` for ``config.epochs`` epochs (or ``config.max_steps`` steps).

        Args:
            model: the module; its trainable parameters are optimised with AdamW.
            train_loader: an iterable with ``len()`` yielding batches (nested dicts, lists and
                tuples of tensors), ideally from :func:`pacx.engine.make_loader`.
            step_fn: ``step_fn(model, batch) -> (loss, logs)``, see the class docstring.
            resume: None, ``"latest"`` or a checkpoint/run folder to continue from. The saved
                configuration must match the current one, except for the fields in
                :data:`pacx.engine.config.RESUME_FREE_FIELDS` (logging, saving, progress,
                execution).
            extra_meta: metadata stored in every checkpoint's ``meta.json`` and in
                ``final/config.json`` under ``"extra"``: a dict, or a callable receiving the
                unwrapped model and returning one (evaluated at each save).
            val_loader: optional validation batches, iterated whole at each validation (under
                DDP every rank must yield the same number of batches, e.g. from
                :func:`pacx.engine.make_loader` with ``shuffle=False, drop_last=False``).
            val_step_fn: ``(model, batch) -> (loss, logs)`` used for validation (default:
                ``step_fn``); it receives the bare module, and must log the same keys on every
                batch and rank.

        Returns:
            ``{"step", "epoch", "total_steps", "steps_per_epoch", "checkpoint", "final_dir",
            "metrics", "best", "out_dir"}``; ``metrics`` holds the last logged scalars (with
            the last ``val_*`` ones); ``best`` is ``{"step", "epoch", "val_loss", "dir"}`` of
            the lowest validation loss, None without a ``val_loader``.

        Raises:
            ValueError: on an empty loader, a loader shorter than ``accumulation_steps``,
                ranks with different step counts, a malformed ``step_fn`` output, or a resume
                whose saved configuration differs from the current one (every differing key
                is listed with both values).
            FloatingPointError: when a loss (or, with clipping, a gradient norm) was not
                finite; checked at log steps and before anything is saved, so no checkpoint
                holds weights that went through a non-finite step.
        """
        run = self._setup(model, train_loader, step_fn, resume, extra_meta, val_loader, val_step_fn)
        try:
            if run.rng_to_restore is not None:
                set_rng_state(run.rng_to_restore)  # last, so nothing above shifts the streams
            run.runner.train()
            while run.step < run.total_steps:
                self._run_epoch(run, train_loader)
            self._finish(run)
        finally:
            run.progress.close()
            run.logger.close()
        best = None if run.best is None else {**run.best, "dir": str(self.best_dir)}
        return {
            "step": run.step,
            "epoch": run.position[0],
            "total_steps": run.total_steps,
            "steps_per_epoch": run.steps_per_epoch,
            "checkpoint": str(run.last_checkpoint) if run.last_checkpoint is not None else None,
            "final_dir": str(self.final_dir),
            "metrics": {**run.metrics, **run.val_metrics},
            "best": best,
            "out_dir": str(self.out_dir),
        }

    # ------------------------------------------------------------------------------------
    # set-up

    def _setup(
        self,
        model: nn.Module,
        train_loader: Any,
        step_fn: StepFn,
        resume: str | os.PathLike | None,
        extra_meta: ExtraMeta,
        val_loader: Any,
        val_step_fn: StepFn | None,
    ) -> _Run:
        """Seed, size the run, build the optimiser, resume, wrap, write ``config.json``, open the logs."""
        cfg = self.config
        seed_everything(cfg.seed, get_rank(), deterministic=cfg.deterministic)
        steps_per_epoch = self._steps_per_epoch(train_loader)
        if val_loader is not None:
            _check_val_loader(val_loader)
        total_steps = cfg.epochs * steps_per_epoch
        if cfg.max_steps is not None:
            total_steps = min(total_steps, cfg.max_steps)
        device = self.resolve_device()
        amp_dtype = self.amp_dtype(device)
        model.to(device)
        optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas, cfg.eps)
        per_rank_batch = getattr(train_loader, "batch_size", None)
        run = _Run(
            model=model,
            device=device,
            amp_dtype=amp_dtype,
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
            num_batches=len(train_loader),
            optimizer=optimizer,
            scheduler=warmup_cosine(
                optimizer, cfg.resolve_warmup(steps_per_epoch, total_steps), total_steps, cfg.min_lr_ratio
            ),
            scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
            step_fn=step_fn,
            val_step_fn=val_step_fn,
            val_loader=val_loader,
            extra_meta=extra_meta,
            batch_size=per_rank_batch * get_world_size() if isinstance(per_rank_batch, int) else None,
            mover=BatchMover(device),
            clip_params=[p for p in model.parameters() if p.requires_grad],
        )
        if resume is not None:
            self._load_resume(run, resolve_checkpoint(resume, self.out_dir))
        self._wrap(run)
        self._prepare_out_dir(run, per_rank_batch)
        barrier()
        run.logger = MetricLogger(
            self.logs_dir,
            enabled=get_rank() == 0,
            tensorboard=cfg.tensorboard,
            resume_step=run.step if run.resumed_from is not None else None,
        )
        run.progress = tqdm(
            total=total_steps,
            initial=run.step,
            desc=cfg.name,
            disable=not (get_rank() == 0 and cfg.progress),
            dynamic_ncols=True,
        )
        return run

    def _wrap(self, run: _Run) -> None:
        runner: nn.Module = run.model
        if is_distributed():
            device = run.device
            run.ddp = DistributedDataParallel(
                run.model,
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=self.config.find_unused_parameters,
            )
            runner = run.ddp
        if self.config.compile:
            runner = torch.compile(runner, backend=self.config.compile_backend)
        run.runner = runner

    def _prepare_out_dir(self, run: _Run, per_rank_batch: int | None) -> None:
        """Rank 0: clear interrupted saves, archive an earlier run's checkpoints, write ``config.json``."""
        if get_rank() != 0:
            return
        cfg = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # Folders of saves interrupted by a crash (``step_<n>.tmp-*``, ``final.tmp-*``, ``best.tmp-*``).
        remove_incomplete_checkpoints(self.checkpoints_dir)
        remove_incomplete_checkpoints(self.out_dir)
        own = run.resumed_from is not None and run.resumed_from.parent.resolve() == self.checkpoints_dir.resolve()
        if not own:  # a fresh run (or one continuing another folder's checkpoint) owns checkpoints/
            archive_checkpoints(self.checkpoints_dir, also=(self.best_dir,))
        amp = str(run.amp_dtype).replace("torch.", "") if run.amp_dtype else "float32"
        resolved = {
            "device": str(run.device),
            "amp_dtype": amp,
            "world_size": get_world_size(),
            "per_rank_batch_size": per_rank_batch,
            "steps_per_epoch": run.steps_per_epoch,
            "total_steps": run.total_steps,
            "warmup_steps": cfg.resolve_warmup(run.steps_per_epoch, run.total_steps),
            "resumed_from": str(run.resumed_from) if run.resumed_from else None,
            "pacx_version": pacx.__version__,
            "torch_version": torch.__version__,
        }
        save_json(
            {"trainer": cfg.to_dict(), "run_config": self.run_config, "resolved": resolved},
            self.out_dir / "config.json",
        )

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

    def _load_resume(self, run: _Run, path: Path) -> None:
        """Restore weights, optimiser, schedule, scaler, position, best and RNG from ``path``."""
        ckpt = load_checkpoint(path)
        state = ckpt.trainer_state
        if state is None:
            raise ValueError(f"checkpoint {path} holds weights only and cannot resume training")
        self._check_resume_config(ckpt, run.batch_size)
        run.model.load_state_dict(ckpt.model_state)
        run.optimizer.load_state_dict(state["optimizer"])
        sched_state = dict(state["scheduler"])
        # The schedule's shape comes from the current configuration (equal to the saved one; None
        # entries tell LambdaLR to keep its current lambdas).
        sched_state["lr_lambdas"] = [None] * len(getattr(run.scheduler, "lr_lambdas", []))
        run.scheduler.load_state_dict(sched_state)
        if run.scaler.is_enabled() and state.get("scaler"):
            run.scaler.load_state_dict(state["scaler"])
        if int(state["steps_per_epoch"]) != run.steps_per_epoch:
            warnings.warn(
                f"resuming from {path}: it was written with {state['steps_per_epoch']} steps per epoch, the loader "
                f"now gives {run.steps_per_epoch}; the position within the epoch will not match",
                stacklevel=4,
            )
        rng_states = state["rng"]
        if len(rng_states) != get_world_size():
            warnings.warn(
                f"resuming from {path}: saved by {len(rng_states)} processes, now {get_world_size()}; every rank "
                "takes rank 0's RNG state (offset by its rank is lost)",
                stacklevel=4,
            )
            rng_states = [rng_states[0]] * get_world_size()
        run.rng_to_restore = rng_states[get_rank()]
        run.step = run.checked_step = run.last_saved = int(state["step"])
        run.position = (int(state["epoch"]), int(state["batch_in_epoch"]))
        run.resumed_from = run.last_checkpoint = path
        run.best = dict(state["best"]) if state.get("best") else None
        run.validated_step = state.get("validated_step")

    def _check_resume_config(self, ckpt: Checkpoint, batch_size: int | None) -> None:
        """Refuse to continue a run whose maths the current configuration would change."""
        saved = {**TrainerConfig().to_dict(), **dict(ckpt.meta.get("trainer") or {})}
        diffs = [d for d in config_differences(saved, self.config.to_dict()) if d[0] not in RESUME_FREE_FIELDS]
        current_run = json.loads(json.dumps(self.run_config, default=_json_default))
        diffs += config_differences(ckpt.meta.get("run_config") or {}, current_run, "run_config")
        saved_batch = (ckpt.trainer_state or {}).get("batch_size")
        if saved_batch is not None and batch_size is not None and int(saved_batch) != batch_size:
            diffs.append(("batch_size (global)", saved_batch, batch_size))
        if diffs:
            listed = "; ".join(f"{key}: saved {old!r}, current {new!r}" for key, old, new in diffs)
            raise ValueError(
                f"cannot resume from {ckpt.path}: the configuration changed ({listed}); restore the saved values "
                "or start a fresh run (resume=None)"
            )

    # ------------------------------------------------------------------------------------
    # the loop

    def _run_epoch(self, run: _Run, loader: Any) -> None:
        """Train from ``run.position`` to the end of its epoch (or of the run)."""
        cfg = self.config
        epoch, skip_batches = run.position
        batches = self._start_epoch(loader, epoch, skip_batches)
        first = skip_batches // cfg.accumulation_steps
        if first >= run.steps_per_epoch:  # a position at the very end of an epoch
            run.position = (epoch + 1, 0)
            return
        num_epochs = math.ceil(run.total_steps / run.steps_per_epoch)
        run.progress.set_description(f"{cfg.name} epoch {epoch + 1}/{num_epochs}", refresh=False)
        for step_in_epoch in range(first, run.steps_per_epoch):
            if run.step >= run.total_steps:
                break
            self._forward_backward(run, batches, epoch)
            self._optimizer_step(run)
            end_of_epoch = step_in_epoch + 1 == run.steps_per_epoch
            run.position = (epoch + 1, 0) if end_of_epoch else (epoch, (step_in_epoch + 1) * cfg.accumulation_steps)
            run.progress.update(1)
            self._after_step(run, end_of_epoch)

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

    def _forward_backward(self, run: _Run, batches: Iterator[Any], epoch: int) -> None:
        """Forward and backward of one optimiser step's micro-batches; losses stay on the device."""
        accum = self.config.accumulation_steps
        for micro in range(accum):
            batch = next(batches, _EXHAUSTED)
            if batch is _EXHAUSTED:
                raise ValueError(
                    f"train_loader yielded fewer batches than len(train_loader)={run.num_batches} in epoch {epoch}"
                )
            batch = run.mover(batch)
            sync = run.ddp.no_sync() if run.ddp is not None and micro < accum - 1 else nullcontext()
            with sync:
                with _autocast(run):
                    loss, logs = _check_step_output(run.step_fn(run.runner, batch))
                # Mean over micro-batches: the accumulated gradient equals a big batch's.
                run.scaler.scale(loss / accum if accum > 1 else loss).backward()
            run.window.add("loss", loss)
            for key, value in logs.items():
                run.window.add(key, value)

    def _optimizer_step(self, run: _Run) -> None:
        """Clip, step the optimiser and the schedule, count the step."""
        if self.config.grad_clip is not None:
            run.scaler.unscale_(run.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(run.clip_params, self.config.grad_clip)
            run.window.add("grad_norm", grad_norm)
        run.lr = run.optimizer.param_groups[0]["lr"]
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.optimizer.zero_grad(set_to_none=True)
        if run.scaler.is_enabled():
            with warnings.catch_warnings():
                # GradScaler skips the optimiser step on overflow; the schedule still advances.
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                run.scheduler.step()
        else:
            run.scheduler.step()
        run.step += 1

    def _after_step(self, run: _Run, end_of_epoch: bool) -> None:
        """Log, validate and save as the configuration asks at this step."""
        cfg = self.config
        last = run.step == run.total_steps
        row: dict[str, float] = {}
        if run.step % cfg.log_every == 0 or last:
            row.update(self._train_scalars(run))
        if run.val_loader is not None and (last or (end_of_epoch and run.position[0] % cfg.validate_every == 0)):
            row.update(self._validate(run))
        if row:
            run.logger.log(run.step, row)
            self._show(run)
        if cfg.save_every is not None and run.step % cfg.save_every == 0 and not last:
            self._save(run)

    def _finish(self, run: _Run) -> None:
        """Validate if the last step was not, save the last checkpoint and the final weights."""
        if run.val_loader is not None and run.validated_step != run.step:
            run.logger.log(run.step, self._validate(run))  # e.g. a finished run resumed
        if run.last_saved != run.step:
            self._save(run)  # checks finiteness first, as every save does
        if get_rank() == 0:
            save_final(self.final_dir, run.model.state_dict(), self._final_config(run))
        barrier()

    # ------------------------------------------------------------------------------------
    # logging, finiteness, validation, saving

    def _train_scalars(self, run: _Run) -> dict[str, float]:
        """Means of the logged scalars since the last log step (the loss averaged over ranks)."""
        self._check_finite(run)
        scalars = run.window.pop_means()
        if is_distributed():
            loss = torch.tensor([scalars["loss"]], dtype=torch.float64, device=_collective_device())
            dist.all_reduce(loss)
            scalars["loss"] = loss.item() / get_world_size()
        scalars["lr"] = run.lr
        scalars["epoch"] = run.step / run.steps_per_epoch
        if run.scaler.is_enabled():
            scalars["amp_scale"] = float(run.scaler.get_scale())
        run.metrics = scalars
        return scalars

    def _show(self, run: _Run) -> None:
        postfix = {}
        if "loss" in run.metrics:
            postfix["loss"] = f"{run.metrics['loss']:.4g}"
        if "val_loss" in run.val_metrics:
            postfix["val_loss"] = f"{run.val_metrics['val_loss']:.4g}"
        run.progress.set_postfix(postfix, refresh=False)

    def _check_finite(self, run: _Run) -> None:
        """Raise if a loss (or a clipped gradient norm) since the last check was not finite.

        The window's running sums on the device already carry the answer (a NaN or inf term
        makes the sum non-finite), so no step pays for a check: it is read back here, at log
        steps and before every save. Under DDP the sums are added over ranks, so every rank
        raises together.
        """
        if run.checked_step == run.step:
            return
        keys = ["loss"]
        if self.config.grad_clip is not None and not run.scaler.is_enabled():  # fp16 overflow is the scaler's job
            keys.append("grad_norm")
        totals = _to_host([run.window.total(key) for key in keys], run.device)
        for key, value in zip(keys, totals):
            if not math.isfinite(value):
                first, last = run.checked_step + 1, run.step
                where = f"step {last}" if first == last else f"a step between {first} and {last}"
                raise FloatingPointError(
                    f"{key} is {value} at {where} (the last finite check was at step {run.checked_step}; nothing "
                    "after it was saved); lower lr or check the inputs"
                )
        run.checked_step = run.step

    def _validate(self, run: _Run) -> dict[str, float]:
        """One pass over ``val_loader``: log values ``val_<key>``, keep the best weights."""
        self._check_finite(run)  # a model that took a non-finite step is neither validated nor kept
        sums, count = self._validation_sums(run)
        scalars = {f"val_{key}": value / count for key, value in sums.items()}
        scalars["epoch"] = run.step / run.steps_per_epoch
        run.val_metrics, run.validated_step = scalars, run.step
        val_loss = scalars["val_loss"]
        if math.isfinite(val_loss) and (run.best is None or val_loss < run.best["val_loss"]):
            done = run.step / run.steps_per_epoch
            epoch = int(done) if done == int(done) else round(done, 4)
            run.best = {"step": run.step, "epoch": epoch, "val_loss": val_loss}
            if get_rank() == 0:
                save_final(self.best_dir, run.model.state_dict(), {**self._final_config(run), "best": run.best})
        return scalars

    def _validation_sums(self, run: _Run) -> tuple[dict[str, float], float]:
        """Batch-size-weighted sums of the validation loss and logs, and the sample count, over all ranks."""
        step_fn = run.val_step_fn or run.step_fn
        rng = get_rng_state()  # restored below: validation must not shift the training streams
        modes = [(module, module.training) for module in run.model.modules()]
        generator = getattr(run.val_loader, "generator", None)
        if isinstance(generator, torch.Generator):  # every pass sees the same order and worker seeds
            generator.manual_seed(epoch_generator_seed(self.config.seed, 0))
        sums: dict[str, Any] = {}
        count = 0
        run.model.eval()
        try:
            with torch.no_grad():
                for batch in run.val_loader:
                    batch = run.mover(batch)
                    size = _batch_size(batch)
                    with _autocast(run):
                        loss, logs = _check_step_output(step_fn(run.model, batch), need_grad=False)
                    for key, value in {"loss": loss, **logs}.items():  # float64: sums over many batches
                        sums[key] = sums.get(key, 0.0) + _scalar(value, torch.float64) * size
                    count += size
        finally:
            for module, mode in modes:
                module.training = mode
            set_rng_state(rng)
        keys = list(sums)
        values = _to_host([sums[k] for k in keys] + [float(count)], run.device)
        if values[-1] == 0:
            raise ValueError("val_loader yielded no sample")
        return dict(zip(keys, values[:-1])), values[-1]

    def _final_config(self, run: _Run) -> dict[str, Any]:
        """``config.json`` of ``final/`` and ``best/``."""
        return {
            "format": "pacx-final/1",
            "step": run.step,
            "epoch": run.position[0],
            "trainer": self.config.to_dict(),
            "run_config": self.run_config,
            "extra": _resolve_extra(run.extra_meta, run.model),
        }

    def _save(self, run: _Run) -> None:
        """Write the resumable checkpoint of ``run.step`` (collective; rank 0 writes)."""
        self._check_finite(run)
        # Every rank contributes its RNG state (collective); rank 0 writes. Exchanged in memory
        # between this run's own processes, never read back from disk through pickle.
        rng_states = all_gather_object(get_rng_state())
        path = None
        if get_rank() == 0:
            epoch, batch_in_epoch = run.position
            trainer_state = {
                "step": run.step,
                "epoch": epoch,
                "batch_in_epoch": batch_in_epoch,
                "steps_per_epoch": run.steps_per_epoch,
                "batch_size": run.batch_size,
                "world_size": get_world_size(),
                "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(),
                "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None,
                "rng": rng_states,
                "best": run.best,
                "validated_step": run.validated_step,
            }
            meta = {
                "epoch": epoch,
                "batch_in_epoch": batch_in_epoch,
                "trainer": self.config.to_dict(),
                "run_config": self.run_config,
                "extra": _resolve_extra(run.extra_meta, run.model),
            }
            path = save_checkpoint(
                self.checkpoints_dir, run.step, run.model.state_dict(), trainer_state, meta,
                keep_last=self.config.keep_last,
            )  # fmt: skip
        barrier()
        run.last_saved = run.step
        run.last_checkpoint = path if path is not None else self.checkpoints_dir / f"step_{run.step}"


_EXHAUSTED = object()


class _ScalarWindow:
    """Running sums of logged scalars between two log steps (tensors kept lazy: no sync per step)."""

    def __init__(self) -> None:
        self._sums: dict[str, Any] = {}
        self._counts: dict[str, int] = {}

    def add(self, key: str, value: float | torch.Tensor) -> None:
        value = _scalar(value)
        total = self._sums.get(key)
        if total is None:  # a copy: a logged view of a parameter changes with the next optimiser step
            self._sums[key] = value.clone() if isinstance(value, torch.Tensor) else value
        else:
            self._sums[key] = total + value
        self._counts[key] = self._counts.get(key, 0) + 1

    def total(self, key: str) -> float | torch.Tensor:
        """The running sum of ``key`` (0.0 when nothing was added)."""
        return self._sums.get(key, 0.0)

    def pop_means(self) -> dict[str, float]:
        """Means since the last call, read back in one transfer; the window starts empty again."""
        keys = list(self._sums)
        values = _to_host([self._sums[k] for k in keys], None)
        out = {k: v / self._counts[k] for k, v in zip(keys, values)}
        self._sums.clear()
        self._counts.clear()
        return out


def _scalar(value: float | torch.Tensor, dtype: torch.dtype = torch.float32) -> float | torch.Tensor:
    """A logged value as a 0-d ``dtype`` tensor left on its device, or a Python float."""
    if isinstance(value, torch.Tensor):
        value = value.detach().to(dtype)
        return value.mean() if value.ndim else value
    return float(value)


def _to_host(values: list[float | torch.Tensor], device: torch.device | None) -> list[float]:
    """Python floats of a list of floats and 0-d tensors: one device read-back, summed over ranks
    under DDP when ``device`` is given (the caller reaches this line on every rank)."""
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    reduce = device is not None and is_distributed()
    if not tensors and not reduce:
        return [float(v) for v in values]
    where = tensors[0].device if tensors else device
    stacked = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=where).reshape(()) for v in values])
    if reduce:
        stacked = stacked.to(_collective_device())
        dist.all_reduce(stacked)
    return stacked.tolist()


def _autocast(run: _Run) -> AbstractContextManager[Any]:
    if run.amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=run.device.type, dtype=run.amp_dtype)


def _check_step_output(out: Any, need_grad: bool = True) -> tuple[torch.Tensor, Mapping[str, Any]]:
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ValueError(f"step_fn must return (loss, logs), got {type(out).__name__}")
    loss, logs = out
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"step_fn's loss must be a scalar tensor, got {shape}")
    if need_grad and not loss.requires_grad:
        raise ValueError("step_fn's loss does not require grad: compute it from the model's outputs")
    if logs is None:
        logs = {}
    if not isinstance(logs, Mapping):
        raise ValueError(f"step_fn's logs must be a dict of scalars, got {type(logs).__name__}")
    return loss.reshape(()), logs


def _check_val_loader(loader: Any) -> None:
    """A validation loader with a length must be non-empty and, under DDP, equally long on every rank."""
    try:
        num_batches = len(loader)
    except TypeError:
        return  # an iterable without length: checked when it is iterated
    if num_batches == 0:
        raise ValueError("val_loader must yield at least one batch, got len(val_loader)=0")
    if is_distributed():
        counts = all_gather_object(num_batches)
        if len(set(counts)) != 1:
            raise ValueError(
                f"val_loader must yield the same number of batches on every rank, got {counts}; build it with "
                "pacx.engine.make_loader(..., shuffle=False, drop_last=False)"
            )


def _batch_size(batch: Any) -> int:
    """Leading size of the first tensor in a nested batch (1 when it holds none)."""
    found = _first_tensor(batch)
    return int(found.shape[0]) if found is not None and found.ndim else 1


def _first_tensor(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, torch.Tensor):
        return batch
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        found = _first_tensor(value)
        if found is not None:
            return found
    return None


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
