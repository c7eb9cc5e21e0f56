"""Figures of the evaluation (PNG via matplotlib's Agg canvas).

Figures are built on ``matplotlib.figure.Figure`` with an explicit Agg canvas, so nothing
here touches pyplot's global state or the caller's backend. Every plot has axes, a title and
units; image grids are in pixels.

* :func:`plot_mae_reconstruction`: original, masked input and reconstruction per row.
* :func:`plot_low_data_curves`: metric vs training fraction, with a band per curve.
* :func:`plot_rollout_overlays`: image, rollout of two encoders and their difference.
* :func:`plot_training_curves`: training and validation curves of a metrics CSV against epochs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["plot_low_data_curves", "plot_mae_reconstruction", "plot_rollout_overlays", "plot_training_curves"]


def _to_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)


def _display_images(images: Any, denormalize: bool, name: str) -> np.ndarray:
    """(N, C, H, W) or (N, H, W) -> (N, H, W) grey values in [0, 1]."""
    arr = _to_numpy(images)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W) or (N, H, W), got {arr.shape}")
    if denormalize:
        if arr.shape[1] != 3:
            raise ValueError(f"denormalize expects 3 ImageNet-normalised channels in {name}, got {arr.shape[1]}")
        from pacx.data.transforms import IMAGENET_MEAN, IMAGENET_STD

        std = np.asarray(IMAGENET_STD, dtype=np.float32)[:, None, None]
        mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
        arr = arr * std + mean
    return np.clip(arr.mean(axis=1), 0.0, 1.0)


def _save(fig: Figure, path: str | os.PathLike, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def _pixel_axes(ax, row: int, col: int, n_rows: int) -> None:
    if col == 0:
        ax.set_ylabel("y (px)")
    else:
        ax.set_yticklabels([])
    if row == n_rows - 1:
        ax.set_xlabel("x (px)")
    else:
        ax.set_xticklabels([])


def plot_mae_reconstruction(
    originals: Any,
    masked: Any,
    reconstructions: Any,
    path: str | os.PathLike,
    denormalize: bool = True,
    max_rows: int = 4,
    mask_ratio: float | None = None,
    title: str = "MAE reconstruction",
    dpi: int = 120,
) -> Path:
    """Grid of original / masked / reconstructed images, one case per row.

    Args:
        originals: (N, C, H, W) or (N, H, W) images.
        masked: the masked inputs, same shape (hidden patches e.g. zero).
        reconstructions: the model's reconstructions (visible patches pasted back or not).
        path: output PNG.
        denormalize: inputs are ImageNet-normalised 3-channel images.
        max_rows: cases shown.
        mask_ratio: printed in the title when given.
        title: figure title.
        dpi: resolution.

    Returns:
        The PNG path.
    """
    named = ((originals, "originals"), (masked, "masked"), (reconstructions, "reconstructions"))
    panels = [_display_images(a, denormalize, n) for a, n in named]
    if len({p.shape for p in panels}) != 1:
        raise ValueError(f"originals, masked and reconstructions must share a shape, got {[p.shape for p in panels]}")
    n = min(len(panels[0]), max_rows)
    if n == 0:
        raise ValueError("no images to plot")
    fig = Figure(figsize=(9, 3 * n + 0.6))
    axes = fig.subplots(n, 3, squeeze=False)
    heads = ["original", "masked input", "reconstruction"]
    for r in range(n):
        for c in range(3):
            ax = axes[r, c]
            ax.imshow(panels[c][r], cmap="gray", vmin=0.0, vmax=1.0)
            if r == 0:
                ax.set_title(heads[c])
            _pixel_axes(ax, r, c, n)
    full = title if mask_ratio is None else f"{title} (mask ratio {mask_ratio:.0%})"
    fig.suptitle(full)
    fig.tight_layout()
    return _save(fig, path, dpi)


def _curve_point(value: Any, metric: str) -> tuple[float, float, float]:
    """(value, low, high) from a tuple or a probe_task-style result dict.

    A :func:`pacx.eval.probe_task` result gives the mean over its seeds (the number tables
    report) and a band of one standard deviation over seeds (none with a single seed); a dict
    holding only ``pooled`` and ``ci`` gives those.
    """
    if isinstance(value, Mapping):
        if "mean" in value and metric in value["mean"]:
            mean, n_seeds = float(value["mean"][metric]), len(value.get("per_seed", ()))
            sd = float(value.get("std", {}).get(metric, np.nan)) if n_seeds > 1 else np.nan
            return mean, mean - sd, mean + sd
        if "pooled" in value:
            v = value["pooled"][metric]
            lo, hi = value.get("ci", {}).get(metric, (np.nan, np.nan))
            return float(v), float(lo), float(hi)
        return float(value["value"]), float(value.get("low", np.nan)), float(value.get("high", np.nan))
    v, lo, hi = value
    return float(v), float(lo), float(hi)


def plot_low_data_curves(
    curves: Mapping[str, Mapping[float, Any]],
    path: str | os.PathLike,
    metric: str = "auroc",
    metric_label: str = "macro AUROC",
    title: str = "Low-data linear probe",
    band: str = "\u00b11 SD over probe seeds",
    dpi: int = 120,
) -> Path:
    """Metric against the training fraction, one line per encoder with its band.

    Args:
        curves: ``{encoder: {fraction: point}}`` where a point is ``(value, low, high)`` or a
            :func:`pacx.eval.probe_task` result (the mean of ``metric`` over its seeds, the value
            tables report, with a band of one standard deviation over seeds).
        path: output PNG.
        metric: key of the metric in probe results.
        metric_label: y-axis label.
        title: figure title.
        band: what the bands are, printed in the title (a band with a non-finite end is not drawn).
        dpi: resolution.

    Returns:
        The PNG path.
    """
    if not curves:
        raise ValueError("curves must not be empty")
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    all_fracs: set[float] = set()
    labels: dict[float, list[tuple[float, str]]] = {}
    for name, points in curves.items():
        fracs = sorted(float(f) for f in points)
        if not fracs:
            continue
        all_fracs.update(fracs)
        vals = np.array([_curve_point(points[f] if f in points else points[str(f)], metric) for f in fracs])
        pct = np.array(fracs) * 100
        line = ax.plot(pct, vals[:, 0], marker="o", label=name)[0]
        if np.isfinite(vals[:, 1:]).all():
            ax.fill_between(pct, vals[:, 1], vals[:, 2], color=line.get_color(), alpha=0.2, linewidth=0)
        for x, y in zip(pct, vals[:, 0]):
            labels.setdefault(float(x), []).append((float(y), line.get_color()))
    # Value labels: the highest curve's above its point, the others below theirs, so that close
    # curves do not print on top of each other.
    for x, entries in labels.items():
        for rank, (y, color) in enumerate(sorted(entries, key=lambda e: -e[0])):
            above = rank == 0
            ax.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(0, 6 if above else -7 - 9 * (rank - 1)),
                        ha="center", va="bottom" if above else "top", fontsize=8, color=color)
    ax.set_xscale("log")
    ticks = sorted(f * 100 for f in all_fracs)
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}%" for t in ticks])
    ax.set_xlabel("training labels used (% of training split, log scale)")
    ax.set_ylabel(metric_label)
    ax.set_title(f"{title} (bands: {band})")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_rollout_overlays(
    images: Any,
    maps_reference: Any,
    maps_candidate: Any,
    path: str | os.PathLike,
    names: Sequence[str] = ("MAE", "PaCX"),
    row_titles: Sequence[str] | None = None,
    denormalize: bool = True,
    alpha: float = 0.5,
    title: str = "Attention rollout",
    dpi: int = 120,
) -> Path:
    """Per case: image, rollout of the reference and the candidate over it, and their difference.

    Args:
        images: (N, C, H, W) or (N, H, W).
        maps_reference: (N, H, W) maps in [0, 1] (see :func:`pacx.eval.rollout.upsample_maps`).
        maps_candidate: (N, H, W) maps in [0, 1].
        path: output PNG.
        names: (reference, candidate) names.
        row_titles: one label per case (e.g. "case 12, p_MAE=0.31, p_PaCX=0.84").
        denormalize: images are ImageNet-normalised.
        alpha: overlay opacity.
        title: figure title.
        dpi: resolution.

    Returns:
        The PNG path.
    """
    imgs = _display_images(images, denormalize, "images")
    ref, cand = _to_numpy(maps_reference), _to_numpy(maps_candidate)
    if not (ref.shape == cand.shape == imgs.shape):
        raise ValueError(
            f"images {imgs.shape}, maps_reference {ref.shape} and maps_candidate {cand.shape} must match (N, H, W)"
        )
    n = len(imgs)
    if n == 0:
        raise ValueError("no images to plot")
    fig = Figure(figsize=(13, 3.3 * n + 0.6))
    axes = fig.subplots(n, 4, squeeze=False)
    heads = ["CXR", f"{names[0]} rollout", f"{names[1]} rollout", f"{names[1]} - {names[0]}"]
    for r in range(n):
        axes[r, 0].imshow(imgs[r], cmap="gray", vmin=0, vmax=1)
        for c, m in ((1, ref[r]), (2, cand[r])):
            axes[r, c].imshow(imgs[r], cmap="gray", vmin=0, vmax=1)
            im = axes[r, c].imshow(m, cmap="jet", vmin=0, vmax=1, alpha=alpha)
            fig.colorbar(im, ax=axes[r, c], fraction=0.046, pad=0.04, label="relevance (0-1)")
        diff = axes[r, 3].imshow(np.clip(cand[r] - ref[r], -1, 1), cmap="seismic", vmin=-1, vmax=1)
        fig.colorbar(diff, ax=axes[r, 3], fraction=0.046, pad=0.04, label="difference")
        for c in range(4):
            if r == 0:
                axes[r, c].set_title(heads[c])
            _pixel_axes(axes[r, c], r, c, n)
        if row_titles is not None:
            axes[r, 0].set_ylabel(f"{row_titles[r]}\ny (px)", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_training_curves(
    csv_path: str | os.PathLike,
    path: str | os.PathLike,
    x: str | None = None,
    columns: Sequence[str] | None = None,
    title: str = "Training curves",
    max_panels: int = 8,
    dpi: int = 120,
) -> Path:
    """One panel per logged quantity of a metrics CSV, training and validation on the same axes.

    Every row that holds a value is drawn. A validation column (``val_<name>`` as the
    :class:`pacx.engine.Trainer` writes it, or ``val/<name>``) shares the panel of its training
    column (``<name>``, ``train_<name>`` or ``train/<name>``) and is drawn with markers, one per
    validation (at epoch ends for the trainer).

    Args:
        csv_path: CSV with a header; missing values (metrics logged at other steps) are skipped.
        path: output PNG.
        x: the x column; ``"epoch"``, else ``"step"``, else the row number when omitted.
        columns: the y columns; every other numeric column when omitted.
        title: figure title.
        max_panels: most panels drawn.
        dpi: resolution.

    Returns:
        The PNG path.

    Raises:
        ValueError: when ``x`` or a column is not in the CSV, or there is nothing to plot.
    """
    import pandas as pd

    frame = pd.read_csv(csv_path)
    if x is None:
        x = next((c for c in ("epoch", "step", "global_step") if c in frame.columns), None)
    if x is not None and x not in frame.columns:
        raise ValueError(f"x column {x!r} not in {list(frame.columns)}")
    xs = frame[x] if x is not None else pd.Series(np.arange(len(frame)))
    if columns is None:
        skip = {x, "epoch", "step", "global_step"}
        columns = [c for c in frame.columns if c not in skip and pd.api.types.is_numeric_dtype(frame[c])]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"columns {missing} not in {list(frame.columns)}")
    panels = list(_curve_panels(columns).items())[:max_panels]
    if not panels:
        raise ValueError(f"no numeric columns to plot in {csv_path}")
    n_cols = min(2, len(panels))
    n_rows = int(np.ceil(len(panels) / n_cols))
    fig = Figure(figsize=(6 * n_cols, 3.2 * n_rows + 0.5))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for i, (name, series) in enumerate(panels):
        ax = axes[i // n_cols, i % n_cols]
        for kind, col in series.items():
            ok = frame[col].notna()
            if kind == "val":
                style = {"color": "C1", "marker": "o", "markersize": 5}
            else:
                style = {"color": "C0", "marker": "." if ok.sum() < 50 else None, "linewidth": 1.2}
            ax.plot(xs[ok], frame[col][ok], label=f"{kind} ({ok.sum()} points)", **style)
        ax.set_title(name)
        ax.set_xlabel(x or "row")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    for j in range(len(panels), n_rows * n_cols):
        axes[j // n_cols, j % n_cols].set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path, dpi)


def _curve_panels(columns: Sequence[str]) -> dict[str, dict[str, str]]:
    """Group metric columns by quantity: ``{name: {"train": column, "val": column}}`` (either may be absent)."""
    panels: dict[str, dict[str, str]] = {}
    for col in columns:
        kind, name = "train", col
        for prefix, prefix_kind in (("val_", "val"), ("val/", "val"), ("train_", "train"), ("train/", "train")):
            if col.startswith(prefix) and len(col) > len(prefix):
                kind, name = prefix_kind, col[len(prefix) :]
                break
        panels.setdefault(name, {})[kind] = col
    return {name: {k: series[k] for k in ("train", "val") if k in series} for name, series in panels.items()}
