"""Safe, atomic reading and writing of weights and metadata.

Weights are safetensors, configuration is JSON, and every write goes to a temporary file in
the destination folder, is fsync'ed and renamed over the target, so a crash never leaves a
half-written file under the final name. Third-party ``.pth``/``.ckpt`` files are read with
``torch.load(weights_only=True)`` only: a pickle that would run code is refused.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "UnsafeCheckpointError",
    "atomic_write",
    "load_json",
    "load_safetensors",
    "load_state_dict_file",
    "safe_torch_load",
    "save_json",
    "save_safetensors",
]


class UnsafeCheckpointError(ValueError):
    """Raised when a checkpoint can only be read by executing arbitrary pickled code."""


def atomic_write(path: str | os.PathLike, write_fn: Callable[[str], None]) -> Path:
    """Write a file atomically.

    Args:
        path: final destination.
        write_fn: called with a temporary path in the same folder; it must write the file there.

    Returns:
        The final path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def save_json(obj: Any, path: str | os.PathLike) -> Path:
    """Atomically write ``obj`` as indented JSON."""

    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, sort_keys=False, default=_json_default)
            fh.write("\n")

    return atomic_write(path, _write)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def load_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, with an error that names the file when it is missing or invalid."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSON file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


def save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """Atomically save a flat ``{name: tensor}`` dict as safetensors (tensors made contiguous)."""
    from safetensors.torch import save_file

    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    # None rather than {}: safetensors writes an unreadable header for no tensors + empty metadata.
    meta = {str(k): str(v) for k, v in (metadata or {}).items()} or None
    return atomic_write(path, lambda tmp: save_file(flat, tmp, metadata=meta))


def load_safetensors(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file into a dict of tensors."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"safetensors file not found: {path}")
    return load_file(str(path), device=device)


def safe_torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` restricted to tensors and plain containers (``weights_only=True``).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        UnsafeCheckpointError: when the file holds pickled objects that would execute code.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it contains pickled objects that are not plain tensors or "
            f"containers and could execute code when unpickled ({err}). Convert it to safetensors "
            "in a trusted environment first."
        ) from err


def load_state_dict_file(path: str | os.PathLike, map_location: str = "cpu") -> dict[str, Any]:
    """Load a weights file: safetensors directly, anything else through :func:`safe_torch_load`.

    The raw top-level object is returned (a dict); unwrapping ``{'model': ...}`` or
    ``{'state_dict': ...}`` is left to the caller, which knows the layout it expects.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return dict(load_safetensors(path, device=map_location))
    obj = safe_torch_load(path, map_location=map_location)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict of tensors at the top level, got {type(obj).__name__}")
    return obj
