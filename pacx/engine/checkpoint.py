"""Checkpoints that never lose work and never run pickled code.

Layout of one checkpoint (``<out>/checkpoints/step_<n>/``):

- ``model.safetensors``: the model's state dict (unwrapped from DDP / torch.compile);
- ``trainer_state.safetensors`` + ``trainer_state.json``: optimiser, scheduler, AMP scaler,
  RNG states of every rank and the position in the data; the tensors live in safetensors
  and the structure around them (ints, floats, tuples, dict keys) in JSON, so loading it
  unpickles nothing;
- ``meta.json`` (written last): step, epoch, position in the epoch, configuration and any
  caller metadata (for example the MAE mask ratio actually used).

Every file is written atomically, inside ``step_<n>.tmp-XXXX/``, which is renamed to
``step_<n>/`` only once complete; then the one-line ``latest`` pointer is replaced
atomically. A crash at any point therefore leaves the previous checkpoint and a ``latest``
that names a complete checkpoint; the stray temporary folder is removed on the next start.
A checkpoint damaged afterwards (a truncated copy, a full disk) is recognised by reading each
file's header and length, and :func:`latest_checkpoint` falls back to the previous one.

The ``step_<n>`` folders directly under ``checkpoints/`` belong to one run: a fresh run moves
an earlier run's checkpoints into ``checkpoints/previous_<time>/``
(:func:`archive_checkpoints`), so pruning and ``resume="latest"`` never mix two runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile  # noqa: F401  (used by the docstring examples)
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pacx.io import (
    atomic_write,
    load_json,
    load_safetensors,
    load_state_dict_file,
    make_temp_dir,
    save_json,
    save_safetensors,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "archive_checkpoints",
    "checkpoint_problem",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_weights",
    "pack_state",
    "prune_checkpoints",
    "remove_incomplete_checkpoints",
    "resolve_checkpoint",
    "save_checkpoint",
    "save_final",
    "unpack_state",
]

CHECKPOINT_FORMAT = "pacx-checkpoint/1"
MODEL_FILE = "model.safetensors"
STATE_TENSORS_FILE = "trainer_state.safetensors"
STATE_JSON_FILE = "trainer_state.json"
META_FILE = "meta.json"
LATEST_FILE = "latest"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_TMP_MARK = ".tmp-"
_ARCHIVE_PREFIX = "previous_"


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        path: its folder.
        meta: contents of ``meta.json``.
        model_state: the model's state dict.
        trainer_state: optimiser/scheduler/scaler/RNG state (None for weights-only checkpoints).

    Example:
        >>> import tempfile
        >>> path = save_checkpoint(tempfile.mkdtemp(), 10, nn.Linear(2, 1).state_dict(), meta={"epoch": 0})
        >>> ckpt = load_checkpoint(path)
        >>> ckpt.step, path.name, sorted(ckpt.model_state)
        (10, 'step_10', ['bias', 'weight'])
    """

    path: Path
    meta: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    trainer_state: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def step(self) -> int:
        """Optimiser step at which it was written."""
        return int(self.meta["step"])


# ----------------------------------------------------------------------------------------
# nested state <-> (JSON structure, flat tensors)


def pack_state(obj: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested state (dicts, lists, tuples, numbers, strings, tensors, NumPy arrays)
    into a JSON-serialisable structure and a flat ``{key: tensor}`` dict for safetensors.

    Tensors are replaced by ``{"__tensor__": key}``, tuples by ``{"__tuple__": [...]}``,
    NumPy arrays by ``{"__ndarray__": [...], "dtype": ...}`` and dicts whose keys are not
    all plain strings (optimiser state is keyed by int) by ``{"__items__": [[k, v], ...]}``.

    Args:
        obj: the state, e.g. ``optimizer.state_dict()``.

    Returns:
        ``(structure, tensors)``; :func:`unpack_state` inverts it.

    Raises:
        TypeError: on any other object type (nothing is pickled as a fallback).

    Example:
        >>> structure, tensors = pack_state({"step": 3, "m": torch.ones(2), "betas": (0.9, 0.99)})
        >>> structure["m"], sorted(tensors)
        ({'__tensor__': 't0'}, ['t0'])
    """
    tensors: dict[str, torch.Tensor] = {}
    return _pack(obj, tensors), tensors


def _pack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        # clone: safetensors refuses tensors that share storage (tied or sliced views).
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _pack(v, tensors) for k, v in obj.items()}
        return {"__items__": [[_pack(k, tensors), _pack(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_pack(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_pack(v, tensors) for v in obj]
    raise TypeError(f"cannot store an object of type {type(obj).__name__} in a checkpoint without pickle")


def unpack_state(structure: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`pack_state`.

    Raises:
        ValueError: when the structure references a tensor that is not in ``tensors``.
    """
    if isinstance(structure, list):
        return [unpack_state(v, tensors) for v in structure]
    if isinstance(structure, dict):
        if set(structure) == {"__tensor__"}:
            key = structure["__tensor__"]
            if key not in tensors:
                raise ValueError(f"checkpoint structure references tensor {key!r}, missing from the tensor file")
            return tensors[key]
        if set(structure) == {"__tuple__"}:
            return tuple(unpack_state(v, tensors) for v in structure["__tuple__"])
        if set(structure) == {"__ndarray__", "dtype"}:
            return np.asarray(structure["__ndarray__"], dtype=np.dtype(structure["dtype"]))
        if set(structure) == {"__items__"}:
            return {unpack_state(k, tensors): unpack_state(v, tensors) for k, v in structure["__items__"]}
        return {k: unpack_state(v, tensors) for k, v in structure.items()}
    return structure


# ----------------------------------------------------------------------------------------
# writing


def save_checkpoint(
    checkpoints_dir: str | os.PathLike,
    step: int,
    model_state: Mapping[str, torch.Tensor],
    trainer_state: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    keep_last: int | None = None,
) -> Path:
    """Write ``<checkpoints_dir>/step_<step>/`` atomically and point ``latest`` at it.

    Args:
        checkpoints_dir: folder holding the ``step_<n>`` checkpoints.
        step: optimiser step (>= 0).
        model_state: the model's state dict (tensors only).
        trainer_state: nested optimiser/scheduler/RNG state (see :func:`pack_state`), or None.
        meta: JSON-serialisable metadata stored in ``meta.json`` beside ``step``.
        keep_last: when given, delete all but the newest ``keep_last`` checkpoints afterwards.

    Returns:
        The checkpoint folder.

    Raises:
        ValueError: on a negative step, non-tensor model state or ``keep_last < 1``.
    """
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    bad = [k for k, v in model_state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"model_state must hold tensors only; non-tensor entries: {bad[:5]}")
    root = Path(checkpoints_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step}"
    tmp = make_temp_dir(root, prefix=f"{name}{_TMP_MARK}")
    try:
        files = [MODEL_FILE]
        save_safetensors(_cloned(model_state), tmp / MODEL_FILE)
        if trainer_state is not None:
            structure, tensors = pack_state(dict(trainer_state))
            save_safetensors(tensors, tmp / STATE_TENSORS_FILE)
            save_json(structure, tmp / STATE_JSON_FILE)
            files += [STATE_TENSORS_FILE, STATE_JSON_FILE]
        # meta.json last: a folder with a meta.json listing its files is complete.
        save_json({"format": CHECKPOINT_FORMAT, "step": step, **dict(meta or {}), "files": files}, tmp / META_FILE)
        final = _publish_dir(tmp, root / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write(root / LATEST_FILE, lambda p: Path(p).write_text(name + "\n", encoding="utf-8"))
    if keep_last is not None:
        prune_checkpoints(root, keep_last)
    return final


def save_final(
    final_dir: str | os.PathLike, model_state: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> Path:
    """Write ``model.safetensors`` + ``config.json`` into ``final_dir``, replacing it atomically.

    Args:
        final_dir: destination folder (usually ``<out>/final``).
        model_state: the model's state dict.
        config: JSON-serialisable configuration of the run and model.

    Returns:
        ``final_dir``.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(final_dir.parent, prefix=f"{final_dir.name}{_TMP_MARK}")
    try:
        save_safetensors(_cloned(model_state), tmp / MODEL_FILE)
        save_json(dict(config), tmp / "config.json")
        return _publish_dir(tmp, final_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _cloned(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Copies: safetensors refuses tensors sharing storage, and the copy cannot change under us.
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def _publish_dir(tmp: Path, final: Path) -> Path:
    """Rename a complete ``tmp`` folder to ``final`` (replacing an existing one) and fsync."""
    _fsync_dir(tmp)
    old = None
    if final.exists():
        old = final.with_name(f"{final.name}{_TMP_MARK}old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prune_checkpoints(checkpoints_dir: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints (never the ``latest`` one).

    Returns:
        The deleted folders.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    ckpts = list_checkpoints(checkpoints_dir)
    latest = latest_checkpoint(checkpoints_dir)
    removed = []
    for path in ckpts[:-keep_last]:
        if latest is not None and path.resolve() == latest.resolve():
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def remove_incomplete_checkpoints(checkpoints_dir: str | os.PathLike) -> list[Path]:
    """Delete temporary folders left by saves that were interrupted (``*.tmp-*``).

    Call it from one process only, when no save is in progress (the trainer does it at start).

    Returns:
        The deleted folders.
    """
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    removed = []
    for path in root.iterdir():
        if _TMP_MARK in path.name and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


# ----------------------------------------------------------------------------------------
# finding and reading


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why the checkpoint folder ``path`` cannot be loaded, or None when it is complete.

    Reads ``meta.json`` and, for every file it lists, checks that the file exists and is whole:
    a safetensors file's header must parse and its length must match the header's last
    tensor offset; a JSON file must parse. Tensor data are not read.

    Args:
        path: a ``step_<n>`` folder.

    Returns:
        A short reason (``"model.safetensors: 812 bytes, its header describes 1024"``), or None.

    Example:
        >>> import tempfile
        >>> path = save_checkpoint(tempfile.mkdtemp(), 1, nn.Linear(2, 1).state_dict())
        >>> checkpoint_problem(path) is None
        True
    """
    path = Path(path)
    try:
        meta = load_json(path / META_FILE)
    except (OSError, ValueError) as err:
        return f"{META_FILE}: {err}"
    if not isinstance(meta, dict):
        return f"{META_FILE} holds {type(meta).__name__}, not an object"
    for name in meta.get("files", [MODEL_FILE]):
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if name.endswith(".safetensors"):
            problem = _safetensors_problem(file)
        else:
            problem = _json_problem(file) if name.endswith(".json") else None
        if problem is not None:
            return f"{name}: {problem}"
    return None


def _safetensors_problem(path: Path) -> str | None:
    """A safetensors file is 8 bytes of header length, the JSON header, then exactly the data."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return f"{size} bytes, shorter than the 8-byte header length"
        header_len = int.from_bytes(head, "little")
        if header_len > size - 8:
            return f"{size} bytes, too short for its {header_len}-byte header"
        try:
            header = json.loads(fh.read(header_len))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
            return f"malformed header ({type(err).__name__}: {err})"
    if 8 + header_len + end != size:
        return f"{size} bytes, its header describes {8 + header_len + end}"
    return None


def _json_problem(path: Path) -> str | None:
    try:
        load_json(path)
    except ValueError as err:
        return str(err)
    return None


def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every ``step_<n>`` folder under ``root``, complete or not, by step."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def list_checkpoints(checkpoints_dir: str | os.PathLike) -> list[Path]:
    """Complete ``step_<n>`` folders under ``checkpoints_dir`` (see :func:`checkpoint_problem`), oldest first."""
    return [path for _, path in _step_dirs(Path(checkpoints_dir)) if checkpoint_problem(path) is None]


def latest_checkpoint(checkpoints_dir: str | os.PathLike) -> Path | None:
    """The checkpoint named by ``latest``, or the newest complete one when the pointer is
    missing or names an incomplete or damaged folder; None when there is none.

    Warns (``UserWarning``) naming each damaged checkpoint passed over on the way.
    """
    root = Path(checkpoints_dir)
    pointer = root / LATEST_FILE
    passed_over: list[tuple[Path, str]] = []
    if pointer.is_file():
        target = root / pointer.read_text(encoding="utf-8").strip()
        if _STEP_DIR.match(target.name) and target.is_dir():
            problem = checkpoint_problem(target)
            if problem is None:
                return target
            passed_over.append((target, problem))
    found = None
    for _, path in reversed(_step_dirs(root)):
        problem = checkpoint_problem(path)
        if problem is None:
            found = path
            break
        if all(path != bad for bad, _ in passed_over):
            passed_over.append((path, problem))
    for path, problem in passed_over:
        warnings.warn(
            f"checkpoint {path} is incomplete or damaged ({problem}); using {found or 'no checkpoint'} instead",
            stacklevel=2,
        )
    return found


def archive_checkpoints(checkpoints_dir: str | os.PathLike, also: tuple[str | os.PathLike, ...] = ()) -> Path | None:
    """Move an earlier run's checkpoints aside, into ``<checkpoints_dir>/previous_<time>/``.

    A fresh run calls it so that its own checkpoints are the only ``step_<n>`` folders that
    pruning and ``resume="latest"`` see: an earlier run with more steps would otherwise
    outrank them. Nothing is deleted.

    Args:
        checkpoints_dir: the run's ``checkpoints`` folder.
        also: further files or folders of the earlier run to move with them (e.g. ``best/``),
            skipped when absent.

    Returns:
        The archive folder, or None when there was nothing to move.
    """
    root = Path(checkpoints_dir)
    moving = [path for _, path in _step_dirs(root)]
    moving += [p for p in (root / LATEST_FILE, *map(Path, also)) if p.exists()]
    if not moving:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    archive = root / f"{_ARCHIVE_PREFIX}{stamp}"
    suffix = 1
    while archive.exists():  # two fresh runs within one second
        archive = root / f"{_ARCHIVE_PREFIX}{stamp}-{suffix}"
        suffix += 1
    archive.mkdir(parents=True)
    for path in moving:
        os.replace(path, archive / path.name)
    _fsync_dir(root)
    return archive


def resolve_checkpoint(resume: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Turn a ``resume`` argument into a checkpoint folder.

    Args:
        resume: ``"latest"`` (the latest checkpoint of ``out_dir``), a ``step_<n>`` folder, a
            ``checkpoints`` folder or a run folder (their latest checkpoint).
        out_dir: the run folder, required for ``"latest"``.

    Returns:
        A complete checkpoint folder.

    Raises:
        ValueError: when ``"latest"`` is asked without ``out_dir``.
        FileNotFoundError: when no complete checkpoint is found.
    """
    if str(resume) == "latest":
        if out_dir is None:
            raise ValueError("resume='latest' needs out_dir, got None")
        path = latest_checkpoint(Path(out_dir) / "checkpoints")
        if path is None:
            raise FileNotFoundError(f"resume='latest': no complete checkpoint under {Path(out_dir) / 'checkpoints'}")
        return path
    path = Path(resume)
    if (path / META_FILE).is_file():
        problem = checkpoint_problem(path)
        if problem is not None:
            raise FileNotFoundError(f"checkpoint {path} is incomplete or damaged: {problem}")
        return path
    for root in (path, path / "checkpoints"):
        found = latest_checkpoint(root)
        if found is not None:
            return found
    raise FileNotFoundError(f"no complete checkpoint at {path} (expected a step_<n> folder, or a folder holding them)")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint folder written by :func:`save_checkpoint`; nothing is unpickled.

    Args:
        path: a ``step_<n>`` folder (see :func:`resolve_checkpoint` for other forms).
        map_location: device of the returned tensors.

    Returns:
        The :class:`Checkpoint`.

    Raises:
        FileNotFoundError: when a file is missing.
        ValueError: when a file is not valid safetensors/JSON (for instance a pickle put in
            its place) or the format is unknown.
    """
    path = Path(path)
    meta = load_json(path / META_FILE)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path / META_FILE}: format must be {CHECKPOINT_FORMAT!r}, got {meta.get('format')!r}")
    device = str(map_location)
    model_state = _read_safetensors(path / MODEL_FILE, device)
    trainer_state = None
    if STATE_JSON_FILE in meta.get("files", []):
        tensors = _read_safetensors(path / STATE_TENSORS_FILE, device)
        trainer_state = unpack_state(load_json(path / STATE_JSON_FILE), tensors)
    return Checkpoint(path=path, meta=meta, model_state=model_state, trainer_state=trainer_state)


def _read_safetensors(path: Path, device: str) -> dict[str, torch.Tensor]:
    try:
        return load_safetensors(path, device=device)
    except FileNotFoundError:
        raise
    except Exception as err:  # safetensors raises its own error types for malformed headers
        raise ValueError(
            f"{path} is not a valid safetensors file ({type(err).__name__}: {err}); pacx never falls back "
            "to unpickling checkpoint files"
        ) from err


def load_weights(
    model: nn.Module, path: str | os.PathLike, strict: bool = True, prefix: str = ""
) -> tuple[list[str], list[str]]:
    """Load weights into ``model`` from a checkpoint folder, ``.safetensors`` or third-party
    ``.pth``/``.ckpt`` file (read with ``weights_only=True``: code pickles are refused).

    Lightning/torchvision-style wrappers (``{"state_dict": ...}`` or ``{"model": ...}``) are
    unwrapped; keys starting with ``prefix`` are kept with the prefix stripped.

    Args:
        model: destination module.
        path: weights location.
        strict: require an exact key match.
        prefix: keep only keys with this prefix (e.g. ``"model."``) and strip it.

    Returns:
        ``(missing_keys, unexpected_keys)`` as reported by ``load_state_dict``.

    Raises:
        pacx.io.UnsafeCheckpointError: when a torch file holds code-executing pickles.
        ValueError: when the file holds no tensor dict or no key carries ``prefix``.
    """
    path = Path(path)
    if path.is_dir():
        state: Mapping[str, Any] = load_checkpoint(resolve_checkpoint(path)).model_state
    else:
        state = load_state_dict_file(path)
        for wrapper in ("state_dict", "model"):
            if wrapper in state and isinstance(state[wrapper], Mapping):
                state = state[wrapper]
                break
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise ValueError(f"no key of {path} starts with prefix {prefix!r}")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{path} holds no tensor to load")
    result = model.load_state_dict(tensors, strict=strict)
    return list(result.missing_keys), list(result.unexpected_keys)
