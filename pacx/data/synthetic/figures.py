"""The sample-patients figure of a synthetic cohort (CXR with lung mask, lead II, lab percentiles)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from pacx.constants import IMAGENET_MEAN, IMAGENET_STD

from ._common import check_positive_int
from .cohort import SPLITS
from .ecg import ECG_LABELS, ECG_SAMPLES, ECG_SAMPLING_RATE
from .latent import TASKS

__all__ = ["plot_sample_patients"]


def plot_sample_patients(
    root: str | os.PathLike, path: str | os.PathLike, split: str = "train", n: int = 6
) -> Path:
    """Save a figure of ``n`` patients: CXR with lung-mask contour and labels, lead II, labs.

    Args:
        root: a cohort root returned by :func:`make_cohort`.
        path: output image file (PNG).
        split: which split to draw from.
        n: number of patients (columns).

    Returns:
        ``path``.

    Raises:
        ValueError: when ``split`` is unknown or ``n`` is not positive.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    n = check_positive_int("n", n)
    root, path = Path(root), Path(path)
    folder = root / "data_npy" / split
    data = {
        "cxr": np.load(folder / f"cxr_{split}.npy", mmap_mode="r"),
        "ecg": np.load(folder / f"ecg_{split}.npy", mmap_mode="r"),
        "pct": np.load(folder / f"labs_percentiles_{split}.npy"),
        "obs": np.load(folder / f"labs_missingness_{split}.npy"),
        "lung": np.load(root / "tasks" / f"lung_mask_{split}.npy", mmap_mode="r"),
        "table": pd.read_csv(root / "tasks" / f"{split}.csv"),
        "latent": pd.read_csv(root / "latent" / f"{split}.csv"),
    }
    picks = _pick_patients(data["table"], min(n, data["cxr"].shape[0]))
    fig, axes = plt.subplots(3, len(picks), figsize=(3.0 * len(picks), 7.6),
                             gridspec_kw={"height_ratios": [3.0, 1.1, 1.1]})
    axes = np.asarray(axes).reshape(3, len(picks))
    for col, i in enumerate(picks):
        _draw_patient(axes[:, col], data, i)
    fig.suptitle("pacx synthetic cohort: sample patients", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pick_patients(table: pd.DataFrame, n: int) -> list[int]:
    """Show variety: the first positive of each task and the first all-negative patient, then
    the following patients in file order."""
    labels = table[list(TASKS)].to_numpy()
    picks: list[int] = []
    for col in range(labels.shape[1]):
        hits = np.flatnonzero(labels[:, col] == 1)
        picks += [int(hits[0])] if hits.size and int(hits[0]) not in picks else []
    negatives = np.flatnonzero(labels.sum(1) == 0)
    picks += [int(negatives[0])] if negatives.size and int(negatives[0]) not in picks else []
    return (picks + [i for i in range(len(table)) if i not in picks])[:n]


def _draw_patient(axes, data: dict, i: int) -> None:
    """One column: CXR with the lung contour and labels, 4 s of lead II, the lab percentiles."""
    row, lat = data["table"].iloc[i], data["latent"].iloc[i]
    ax = axes[0]
    ax.imshow(data["cxr"][i, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0], cmap="gray", vmin=0, vmax=1)
    ax.contour(data["lung"][i], levels=[0.5], colors="tab:cyan", linewidths=0.8)
    ax.set_title(
        f"EF {lat['lvef']:.0f}% (reduced={row['reduced_ef']})\nfluid_overload={row['fluid_overload']} "
        f"nodule={row['nodule']}\nCTR {lat['ctr']:.2f}",
        fontsize=8,
    )
    ax.axis("off")
    ax = axes[1]
    tsec = np.arange(ECG_SAMPLES) / ECG_SAMPLING_RATE
    keep = tsec < 4.0
    ax.plot(tsec[keep], data["ecg"][i, 0, keep, 1], lw=0.6, color="k")
    ecg_pos = [c.replace("ecg_", "") for c in ECG_LABELS if row[c] == 1]
    ax.set_title(f"lead II: HR {lat['hr']:.0f}, QRS {lat['qrs_ms']:.0f} ms\n{', '.join(ecg_pos) or 'normal'}",
                 fontsize=7)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xticks([0, 1, 2, 3, 4])
    ax.tick_params(labelsize=6)
    ax.grid(alpha=0.3)
    ax = axes[2]
    pct, obs = data["pct"][i], data["obs"][i]
    ax.bar(np.arange(pct.shape[0]), pct, color=np.where(obs == 1, "tab:blue", "lightgray"), width=0.8)
    ax.set_ylim(0, 1)
    ax.set_title("labs percentiles (grey = missing)", fontsize=7)
    ax.tick_params(labelsize=6)
