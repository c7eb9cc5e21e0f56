"""What a pipeline command shows: the ``pacx`` logger's handlers and numbered stage headers.

The library only logs (``logging.getLogger("pacx...")``); a recipe's command line calls
:func:`configure_logging`, which sends the ``pacx`` messages to stdout and to ``<out>/log.txt``.
:class:`StagePlan` numbers the stages of a command (``[3/10] teacher_ecg``) and gives the
elapsed time and, when every remaining stage has been timed by an earlier run of the same
profile, an ETA. Those timings live in ``stage_seconds.json`` under ``$PACX_CACHE_DIR``
(default ``~/.cache/pacx``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pacx.distributed import get_rank, get_world_size
from pacx.io import save_json

__all__ = ["StagePlan", "configure_logging", "format_seconds", "timings_file"]

_HANDLER_MARK = "_pacx_console"


def configure_logging(out: str | Path | None = None, level: int = logging.INFO) -> logging.Logger:
    """Send the ``pacx`` logger to stdout and append it to ``<out>/log.txt``; other ranks log warnings only.

    Calling it again replaces the handlers an earlier call added (nothing else is touched).

    Args:
        out: the run folder (created); None logs to stdout only.
        level: the level of rank 0 (other ranks: ``WARNING``, to stderr, prefixed by their rank).

    Returns:
        The ``pacx`` logger.
    """
    logger = logging.getLogger("pacx")
    for handler in [h for h in logger.handlers if getattr(h, _HANDLER_MARK, False)]:
        logger.removeHandler(handler)
        handler.close()
    rank = get_rank()
    handlers: list[logging.Handler] = []
    if rank == 0:
        handlers.append(logging.StreamHandler(sys.stdout))
        if out is not None:
            Path(out).mkdir(parents=True, exist_ok=True)
            to_file = logging.FileHandler(Path(out) / "log.txt", encoding="utf-8")
            to_file.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
            handlers.append(to_file)
        logger.setLevel(level)
    else:
        handlers.append(logging.StreamHandler(sys.stderr))
        handlers[0].setFormatter(logging.Formatter(f"[rank {rank}] %(message)s"))
        logger.setLevel(logging.WARNING)
    for handler in handlers:
        setattr(handler, _HANDLER_MARK, True)
        logger.addHandler(handler)
    return logger


def format_seconds(seconds: float) -> str:
    """``h:mm:ss`` (or ``m:ss`` under an hour).

    Example:
        >>> format_seconds(75.4), format_seconds(3725)
        ('1:15', '1:02:05')
    """
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def timings_file() -> Path:
    """Where the stage timings of earlier runs are kept (``$PACX_CACHE_DIR/stage_seconds.json``)."""
    return Path(os.environ.get("PACX_CACHE_DIR") or Path.home() / ".cache" / "pacx") / "stage_seconds.json"


class StagePlan:
    """The stages of one command, numbered, with the elapsed time and an ETA from earlier runs.

    Args:
        stages: the stage names in run order.
        profile: the run's profile: timings are kept per profile and number of processes.
        is_done: ``is_done(stage)`` is True for a stage that will be skipped (it counts 0 in the
            ETA); by default no stage is.
        history: the timings file (default :func:`timings_file`).

    Example:
        >>> plan = StagePlan(["data", "mae"], "quick", history=Path("/nonexistent/t.json"))
        >>> plan.header("mae", "running")
        '[2/2] mae: running (elapsed 0:00)'
    """

    def __init__(self, stages: Sequence[str], profile: str, is_done: Callable[[str], bool] | None = None,
                 history: str | Path | None = None) -> None:
        if not stages:
            raise ValueError("stages must not be empty")
        self.stages, self.is_done = list(stages), is_done or (lambda stage: False)
        self.key = f"{profile}/{get_world_size()}p"
        self.history = Path(history) if history is not None else timings_file()
        self.start = time.perf_counter()

    def _timings(self) -> dict[str, Any]:
        try:
            return json.loads(self.history.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def eta(self, stage: str) -> float | None:
        """Seconds ``stage`` and the stages after it took in an earlier run (None: one was never timed)."""
        known = self._timings().get(self.key, {})
        remaining = [s for s in self.stages[self.stages.index(stage):] if s == stage or not self.is_done(s)]
        return sum(known[s] for s in remaining) if all(s in known for s in remaining) else None

    def header(self, stage: str, status: str) -> str:
        """``[k/N] stage: status (elapsed ..., ETA ...)``; stages outside the plan get no number."""
        elapsed = f"elapsed {format_seconds(time.perf_counter() - self.start)}"
        if stage not in self.stages:
            return f"{stage}: {status} ({elapsed})"
        eta = self.eta(stage) if status == "running" else None
        when = "" if eta is None else f", ETA {format_seconds(eta)} from an earlier {self.key.split('/')[0]} run"
        return f"[{self.stages.index(stage) + 1}/{len(self.stages)}] {stage}: {status} ({elapsed}{when})"

    def timed(self, stage: str, fn: Callable[..., Any], *args: Any, notes: Sequence[str] = (), record: bool = True,
              **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` as ``stage``: log its header (then ``notes``), time it, record it.

        ``record=False`` keeps the duration out of the timings (a stage resumed half-way).
        """
        log = logging.getLogger("pacx")
        log.info("[pacx] %s", self.header(stage, "running"))
        for note in notes:
            log.info("[pacx] %s: %s", stage, note)
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        seconds = time.perf_counter() - start
        if record:
            self.record(stage, seconds)
        log.info("[pacx] %s: done in %.1f s", stage, seconds)
        return result

    def record(self, stage: str, seconds: float) -> None:
        """Keep ``stage``'s duration for the ETAs of later runs (rank 0; an unwritable cache is ignored)."""
        if get_rank() != 0:
            return
        timings = self._timings()
        timings.setdefault(self.key, {})[stage] = round(float(seconds), 2)
        try:
            save_json(timings, self.history)
        except OSError:
            pass

