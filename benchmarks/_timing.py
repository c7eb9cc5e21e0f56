"""Shared helpers of the pacx benchmarks: interleaved median timers, CUDA sync, peak memory, tables,
JSON, and a dataset repeated to the length a timed loader needs.

Every benchmark reports RATIOS of quantities measured in one process, because absolute numbers
on a shared machine mean little. To keep a ratio fair when the machine's load drifts, the
candidates of one comparison are timed *interleaved*: after each candidate's own warm-up runs,
round ``r`` runs candidate A once, then B once, ..., and the median over rounds is reported for
each. On CUDA every timed call is bracketed by ``torch.cuda.synchronize()``.

Peak memory is ``torch.cuda.max_memory_allocated`` over one call (after a reset), on CUDA only;
on CPU it is reported as ``"n/a"`` rather than estimated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

__all__ = [
    "Measurement",
    "add_common_args",
    "amp_context",
    "env_info",
    "fmt",
    "fmt_mib",
    "measure",
    "paired_ratio",
    "peak_memory_bytes",
    "print_header",
    "print_table",
    "repeat_dataset",
    "resolve_amp",
    "setup",
    "sync",
    "write_json",
]

MIB = 2.0**20


class _Repeated(Dataset):
    """``base`` repeated ``times`` times (index ``i`` reads row ``i % len(base)``)."""

    def __init__(self, base: Dataset, times: int) -> None:
        self.base, self.times = base, times

    def __len__(self) -> int:
        return len(self.base) * self.times

    def __getitem__(self, index: int) -> Any:
        return self.base[index % len(self.base)]


def repeat_dataset(base: Dataset, min_length: int) -> Dataset:
    """``base`` repeated whole until it has at least ``min_length`` rows (a small cohort feeds long timings)."""
    return _Repeated(base, max(1, -(-min_length // len(base))))


@dataclass
class Measurement:
    """Wall-clock seconds of the timed runs of one candidate."""

    name: str
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        """Median seconds per call."""
        return statistics.median(self.seconds)

    @property
    def best(self) -> float:
        """Fastest run: on a loaded machine interference only ever slows a run down, so ratios of
        the fastest runs are a second, load-robust estimate next to the paired medians."""
        return min(self.seconds)

    @property
    def spread(self) -> float:
        """(max - min) / median of the timed runs: a crude noise indicator."""
        return (max(self.seconds) - min(self.seconds)) / self.median if self.seconds else float("nan")


def paired_ratio(num: Measurement, den: Measurement) -> float:
    """Median over rounds of ``num / den`` for two candidates timed in the same rounds.

    Pairing each round's two timings cancels load drift between rounds, which a ratio of two
    separate medians does not.
    """
    if len(num.seconds) != len(den.seconds) or not num.seconds:
        raise ValueError(f"paired_ratio needs equally many rounds, got {len(num.seconds)} and {len(den.seconds)}")
    return statistics.median(a / b for a, b in zip(num.seconds, den.seconds))


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work on ``device`` (no-op elsewhere)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    candidates: Mapping[str, Callable[[], Any]],
    device: torch.device,
    repeats: int,
    warmup: int,
) -> dict[str, Measurement]:
    """Median-ready timings of several zero-argument callables, interleaved round by round.

    Each round runs every candidate once, in an order rotated by one position per round.

    Args:
        candidates: name -> callable doing one unit of work (e.g. one training step).
        device: where the work runs (synchronised around every timed call on CUDA).
        repeats: timed rounds.
        warmup: untimed calls of each candidate before the first round.

    Returns:
        name -> :class:`Measurement` with ``repeats`` timings.
    """
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    sync(device)
    out = {name: Measurement(name) for name in candidates}
    names = list(candidates)
    for round_index in range(repeats):
        # rotate the order every round so no candidate always runs first (cold caches) or last
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            fn = candidates[name]
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            out[name].seconds.append(time.perf_counter() - start)
    return out


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Peak CUDA memory allocated during one call of ``fn`` (absolute: weights, optimiser state,
    activations); None off CUDA, where no allocator statistic is comparable."""
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return int(torch.cuda.max_memory_allocated(device))


def fmt_mib(num_bytes: int | None) -> str:
    """Bytes as MiB, or "n/a" when the device has no allocator statistics (CPU)."""
    return "n/a" if num_bytes is None else f"{num_bytes / MIB:.0f}"


def fmt(value: Any, digits: int = 2) -> str:
    """Format a table cell: floats with ``digits`` decimals, None as "n/a"."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        return f"{value:.{digits}f}"
    return str(value)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Mapping[str, Any]], digits: int = 2) -> None:
    """Print ``rows`` as a Markdown table with a bold title line."""
    print(f"\n**{title}**\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(fmt(row.get(c), digits) for c in columns) + " |")
    sys.stdout.flush()


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every benchmark."""
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--paper", action="store_true", help="the paper's sizes (ViT-B/16, 224 px, batch 256)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per measurement")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs of each candidate first")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads on CPU (0: torch's choice)")
    parser.add_argument("--amp", choices=("auto", "bf16", "none"), default="auto",
                        help="autocast dtype: auto = bf16 on CUDA, float32 on CPU (as pacx's Trainer)")
    parser.add_argument("--json", default=None, help="write the measured rows to this JSON file")
    parser.add_argument("--seed", type=int, default=0, help="torch seed")


def setup(args: argparse.Namespace, repeats: tuple[int, int] = (5, 10), warmup: tuple[int, int] = (2, 3)) -> torch.device:
    """Resolve the device, thread count, seed and the default repeat/warm-up counts (CPU, CUDA)."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    if args.repeats is None:
        args.repeats = repeats[cuda]
    if args.warmup is None:
        args.warmup = warmup[cuda]
    if args.repeats < 1 or args.warmup < 0:
        raise SystemExit(f"need --repeats >= 1 and --warmup >= 0, got {args.repeats}, {args.warmup}")
    torch.manual_seed(args.seed)
    return device


def resolve_amp(args: argparse.Namespace, device: torch.device) -> torch.dtype | None:
    """Autocast dtype of ``--amp`` on ``device`` (None: float32)."""
    if args.amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return torch.bfloat16 if args.amp == "bf16" else None


def amp_context(device: torch.device, dtype: torch.dtype | None) -> Any:
    """``torch.autocast`` for ``dtype``, or a null context for float32."""
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else nullcontext()


def env_info(device: torch.device) -> dict[str, Any]:
    """Versions, device and machine load, stored beside every JSON result."""
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        import timm

        info["timm"] = timm.__version__
    except ImportError:  # pragma: no cover - timm is a pacx dependency
        pass
    if hasattr(os, "getloadavg"):
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def print_header(name: str, device: torch.device, args: argparse.Namespace, extra: str = "") -> None:
    """One line naming the benchmark, device, threads, repeats and machine load."""
    env = env_info(device)
    where = env.get("gpu", f"cpu x{env['threads']} threads")
    load = f" loadavg={env['loadavg_1m']}" if "loadavg_1m" in env else ""
    print(
        f"# {name}: device={device} ({where}) torch={env['torch']} repeats={args.repeats} "
        f"warmup={args.warmup} amp={args.amp}{load} {extra}".rstrip()
    )


def write_json(path: str | os.PathLike | None, name: str, device: torch.device, args: argparse.Namespace,
               tables: Mapping[str, Any]) -> None:
    """Write ``{"benchmark", "env", "args", "tables"}`` to ``path`` (nothing when ``path`` is None)."""
    if not path:
        return
    payload = {"benchmark": name, "env": env_info(device), "args": vars(args), "tables": tables}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)
    print(f"\nwrote {path}")
