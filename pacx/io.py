"""Safe, atomic reading and writing of weights and metadata.

Weights are safetensors, configuration is JSON, and every write goes to a temporary file in
the destination folder, is fsync'ed and renamed over the target, so a crash never leaves a
half-written file under the final name. Third-party ``.pth``/``.ckpt`` files are read with
``torch.load(weights_only=True)`` only: a pickle that would run code is refused.

Permissions: files written here get ``0o666 & ~umask`` and folders ``0o777 & ~umask``, exactly
what a plain ``open()``/``mkdir`` would give, so results and backbones on a shared server are
as readable as the user's umask allows (``tempfile.mkstemp``/``mkdtemp`` would create them
``0o600``/``0o700`` whatever the umask). The kernel applies the umask (and any default ACL) at
creation; pacx never reads or changes the umask.
"""

from __future__ import annotations

import json
import os
import pickle
import secrets
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "UnsafeCheckpointError",
    "atomic_write",
    "load_json",
    "load_safetensors",
    "load_state_dict_file",
    "make_temp_dir",
    "read_csv",
    "safe_torch_load",
    "save_json",
    "save_safetensors",
]


class UnsafeCheckpointError(ValueError):
    """Raised when a checkpoint can only be read by executing arbitrary pickled code."""


_TEMP_ATTEMPTS = 100


def _unique_name(folder: Path, prefix: str, suffix: str, create: Callable[[Path], None]) -> Path:
    """Create a new entry ``folder/<prefix><random><suffix>`` with ``create``, retrying on a clash."""
    for _ in range(_TEMP_ATTEMPTS):
        candidate = folder / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            create(candidate)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"could not create a unique temporary name {prefix}*{suffix} in {folder}")


def make_temp_dir(parent: str | os.PathLike, prefix: str = ".tmp-", suffix: str = "") -> Path:
    """Create a new, uniquely named folder in ``parent`` with the mode ``mkdir`` would give.

    Unlike ``tempfile.mkdtemp`` (always ``0o700``), the folder gets ``0o777 & ~umask``, so a
    folder filled in private and then published with ``os.replace`` ends up as readable as any
    other folder the user creates. ``parent`` is created when missing.

    Args:
        parent: folder that receives the new one (same file system as the final destination).
        prefix: start of the new folder's name.
        suffix: end of the new folder's name.

    Returns:
        The new, empty folder.

    Example:
        >>> import tempfile
        >>> make_temp_dir(tempfile.mkdtemp(), prefix="backbone.tmp-").name.startswith("backbone.tmp-")
        True
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    return _unique_name(parent, prefix, suffix, lambda p: os.mkdir(p, 0o777))


def _create_file(path: Path) -> None:
    # O_EXCL: never reuse an existing file; mode 0o666 is filtered by the umask like open().
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def atomic_write(path: str | os.PathLike, write_fn: Callable[[str], None]) -> Path:
    """Write a file atomically, with the permissions a plain ``open()`` would give.

    Args:
        path: final destination (missing parent folders are created).
        write_fn: called with a temporary path in the same folder; it must write the file there
            (the empty file already exists, created with mode ``0o666 & ~umask``).

    Returns:
        The final path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(_unique_name(path.parent, f".{path.name}.", ".tmp", _create_file))
    mode = stat.S_IMODE(os.stat(tmp).st_mode)  # 0o666 & ~umask, as the kernel applied it
    try:
        write_fn(tmp)
        # Some writers replace the file with their own 0o600 one (safetensors does): restore.
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:
            os.chmod(tmp, mode)
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
    """Load a safetensors file into a dict of tensors.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file is not valid safetensors (the message names it).
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"safetensors file not found: {path}")
    try:
        return load_file(str(path), device=device)
    except Exception as err:  # SafetensorError names neither the file nor the cause's location
        raise ValueError(f"cannot read safetensors file {path} (corrupt or truncated?): {err}") from err


def safe_torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` restricted to tensors and plain containers (``weights_only=True``).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        UnsafeCheckpointError: when the file holds pickled objects that would execute code.
        ValueError: when the file is corrupt or truncated (the message names it).
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
    except (RuntimeError, EOFError, ValueError) as err:  # torch's zip reader names no file
        raise ValueError(f"cannot read checkpoint {path} (corrupt or truncated?): {err}") from err


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


def read_csv(path: str | os.PathLike, what: str = "CSV file", **kwargs: Any) -> pd.DataFrame:
    """``pandas.read_csv`` with errors that name the file.

    Args:
        path: the CSV file (``.csv`` or compressed, as pandas reads it).
        what: how messages call the file, e.g. ``"labevents file"``.
        **kwargs: passed to ``pandas.read_csv`` (not ``chunksize``: iterate chunks yourself).

    Returns:
        The table.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when it is empty, malformed or not text (the message names it).

    Example:
        >>> read_csv("missing.csv", "labels file")  # doctest: +SKIP
        FileNotFoundError: labels file not found: missing.csv
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError as err:
        raise ValueError(f"{what} {path} is empty: no header line to read columns from") from err
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError) as err:
        raise ValueError(f"{what} {path} cannot be read as CSV: {type(err).__name__}: {err}") from err
