"""Scalar logging to CSV and TensorBoard (rank 0 only)."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pacx.io import atomic_write

__all__ = ["MetricLogger"]


class MetricLogger:
    """Append rows of scalars to ``<log_dir>/metrics.csv`` and TensorBoard ``<log_dir>/tb``.

    The CSV has one row per logged step, columns ``step`` first and then every scalar name in
    order of first appearance; a new name rewrites the file with the widened header. When a
    run resumes at ``resume_step``, rows written after that step by the interrupted run (work
    that was not checkpointed and is done again) are dropped, so the CSV reads as one run.

    Args:
        log_dir: folder of the logs.
        enabled: False makes every method a no-op (non-zero ranks).
        tensorboard: also write TensorBoard events.
        resume_step: step of the checkpoint the run resumes from (None: fresh run, which
            starts a fresh CSV).

    Example:
        >>> import tempfile
        >>> with MetricLogger(tempfile.mkdtemp(), tensorboard=False) as log:
        ...     log.log(1, {"loss": 0.5})
    """

    def __init__(
        self, log_dir: str | os.PathLike, enabled: bool = True, tensorboard: bool = True, resume_step: int | None = None
    ) -> None:
        self.log_dir = Path(log_dir)
        self.enabled = enabled
        self.csv_path = self.log_dir / "metrics.csv"
        self._columns: list[str] = ["step"]
        self._rows: list[dict[str, Any]] = []
        self._writer = None
        if not enabled:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.csv_path.is_file():
            with open(self.csv_path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                self._columns = list(reader.fieldnames or ["step"])
                self._rows = [r for r in reader if r.get("step") and int(float(r["step"])) <= resume_step]
        self._rewrite()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imported lazily: slow and optional

            # purge_step hides events of the interrupted run past the resumed step.
            purge = resume_step + 1 if resume_step is not None else None
            self._writer = SummaryWriter(log_dir=str(self.log_dir / "tb"), purge_step=purge)

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        """Record ``scalars`` (numbers or 0-d tensors) at ``step``."""
        if not self.enabled:
            return
        row: dict[str, Any] = {"step": int(step)}
        for key, value in scalars.items():
            value = float(value.item() if hasattr(value, "item") else value)
            row[key] = value
            if self._writer is not None and math.isfinite(value):
                self._writer.add_scalar(key, value, int(step))
        self._rows.append(row)
        new = [k for k in row if k not in self._columns]
        if new:
            self._columns += new
            self._rewrite()
        else:
            with open(self.csv_path, "a", newline="", encoding="utf-8") as fh:
                csv.DictWriter(fh, fieldnames=self._columns).writerow(row)

    def _rewrite(self) -> None:
        def _write(tmp: str) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, fieldnames=self._columns)
                writer.writeheader()
                writer.writerows(self._rows)

        atomic_write(self.csv_path, _write)

    def flush(self) -> None:
        """Flush TensorBoard events to disk."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
