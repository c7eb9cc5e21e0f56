"""Writing machinery shared by the cohort and corpus writers.

Streaming ``.npy`` writes with running SHA-256 digests, an ordered thread map, deterministic
CSV text, the parameter hash that keys the cache, the content digest of ``cohort.json``, and
the atomic rename of a finished folder into place (:func:`build_into`, :func:`publish`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from pacx.io import make_temp_dir

__all__ = [
    "ChunkedArrays",
    "NpyWriter",
    "build_into",
    "content_hash",
    "default_workers",
    "map_bounded",
    "params_hash",
    "publish",
    "read_parameters",
    "sha256",
    "to_csv",
]


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data`` (array bytes or CSV text)."""
    return hashlib.sha256(data).hexdigest()


def params_hash(params: Mapping) -> str:
    """12-hex-digit digest of the generation parameters: the cache key in folder names."""
    return sha256(json.dumps(params, sort_keys=True, separators=(",", ":")).encode())[:12]


def content_hash(file_hashes: Mapping[str, str]) -> str:
    """One digest of every recorded file digest (``cohort.json["content_hash"]``)."""
    return sha256("".join(f"{k}:{v}\n" for k, v in sorted(file_hashes.items())).encode())


def read_parameters(cohort_dir: Path) -> dict | None:
    """The ``parameters`` of ``cohort_dir/cohort.json``, or None when absent or unreadable."""
    try:
        meta = json.loads((cohort_dir / "cohort.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta.get("parameters") if isinstance(meta, dict) else None


class NpyWriter:
    """Stream row chunks into a ``.npy`` file with plain sequential writes.

    Sequential writes (rather than a memory map) keep the resident memory of a 10,000-patient
    cohort bounded by one chunk; ``close`` checks that exactly the declared rows arrived.
    """

    def __init__(self, path: Path, dtype, shape: tuple[int, ...]) -> None:
        self.path, self.dtype, self.shape = path, np.dtype(dtype), tuple(shape)
        self.expected = int(np.prod(shape)) * self.dtype.itemsize
        self.written = 0
        self.fh = open(path, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_1_0(self.fh, header)

    def write(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.shape[1:]:
            raise ValueError(f"{self.path.name}: rows of shape {rows.shape[1:]} do not match {self.shape[1:]}")
        self.fh.write(rows.tobytes())
        self.written += rows.nbytes

    def close(self, check: bool = True) -> None:
        if self.fh.closed:
            return
        self.fh.close()
        if check and self.written != self.expected:
            raise RuntimeError(f"{self.path}: wrote {self.written} bytes of data, expected {self.expected}")


class ChunkedArrays:
    """Several :class:`NpyWriter` fed chunk by chunk, each with a running SHA-256 of its data.

    Used as a context manager: on an error the files are closed without the size check, so the
    original error propagates.

    Args:
        specs: ``{key: (path, dtype, shape)}``; each chunk written must hold every key.
    """

    def __init__(self, specs: Mapping[str, tuple[Path, object, tuple[int, ...]]]) -> None:
        self.writers = {k: NpyWriter(path, dtype, shape) for k, (path, dtype, shape) in specs.items()}
        self.hashers = {k: hashlib.sha256() for k in self.writers}

    def write(self, chunk: Mapping[str, np.ndarray]) -> None:
        for key, writer in self.writers.items():  # written and hashed in patient order
            writer.write(chunk[key])
            self.hashers[key].update(np.ascontiguousarray(chunk[key], dtype=writer.dtype).tobytes())

    def digests(self) -> dict[str, str]:
        return {k: h.hexdigest() for k, h in self.hashers.items()}

    def __enter__(self) -> ChunkedArrays:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for writer in self.writers.values():
            writer.close(check=exc_type is None)


def map_bounded(fn: Callable, jobs: Iterable[tuple], num_workers: int) -> Iterator:
    """Ordered ``map`` over threads with at most ``2 * num_workers`` chunks in flight.

    numpy releases the GIL inside its array kernels, so threads use several cores; the window
    bounds memory, and results come back in submission order, so the bytes written do not
    depend on the number of workers.
    """
    if num_workers <= 1:
        for args in jobs:
            yield fn(*args)
        return
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        pending: deque = deque()
        for args in jobs:
            pending.append(pool.submit(fn, *args))
            if len(pending) >= 2 * num_workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def default_workers() -> int:
    """Rendering threads by default: the available cores, at most 4."""
    try:
        return max(1, min(4, len(os.sched_getaffinity(0))))
    except AttributeError:  # pragma: no cover - platforms without sched_getaffinity
        return max(1, min(4, os.cpu_count() or 1))


def to_csv(columns: Mapping[str, np.ndarray]) -> str:
    """Deterministic CSV text (ints as ints, floats with 6 significant digits)."""
    names = list(columns)
    cols = []
    for name in names:
        arr = np.asarray(columns[name])
        if np.issubdtype(arr.dtype, np.integer):
            cols.append([str(int(v)) for v in arr])
        else:
            cols.append([f"{float(v):.6g}" for v in arr])
    lines = [",".join(names)] + [",".join(row) for row in zip(*cols)]
    return "\n".join(lines) + "\n"


def publish(tmp: Path, target: Path, params: Mapping, force: bool) -> Path:
    """Rename the finished folder ``tmp`` into place as ``target`` and return ``target``.

    An older folder at ``target`` is moved aside and deleted after the rename, so ``target`` is
    never half written. Without ``force``, a folder with the same parameters that a concurrent
    run renamed into place first is kept and ``tmp`` is discarded.
    """
    if target.exists():
        if not force and read_parameters(target) == params:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
            return target
        trash = make_temp_dir(target.parent, prefix=f".{target.name}.", suffix=".old")
        os.replace(target, trash / "old")
        os.replace(tmp, target)
        shutil.rmtree(trash, ignore_errors=True)
        return target
    try:
        os.replace(tmp, target)
    except OSError:  # a concurrent run renamed an identical folder into place first
        if read_parameters(target) != params:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_into(target: Path, params: Mapping, force: bool, generate: Callable[[Path], None]) -> Path:
    """Run ``generate`` on a fresh temporary folder beside ``target``, then :func:`publish` it.

    On any error (an interrupt included) the temporary folder is deleted and the error re-raised,
    so a failed run leaves nothing half written.
    """
    tmp = make_temp_dir(target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        generate(tmp)
        return publish(tmp, target, params, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
