"""The figures of a run: MAE reconstructions, low-data curves, attention rollout, training curves."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from pacx.eval import (
    attention_rollout,
    plot_low_data_curves,
    plot_mae_reconstruction,
    plot_rollout_overlays,
    plot_training_curves,
    select_rescue_cases,
    upsample_maps,
)
from pacx.io import load_json, load_safetensors
from pacx.nets import MaskedAutoencoderViT

__all__ = ["draw_figures"]


def _reconstruction(ctx: Any, path: Any) -> str | None:
    """MAE reconstructions of four held-out images at the ratio used in training."""
    weights = ctx.out / "mae" / "mae_full.safetensors"
    if not weights.is_file():
        return None
    mae = MaskedAutoencoderViT(**load_json(ctx.out / "mae" / "mae_config.json")).eval()
    mae.load_state_dict(load_safetensors(weights))
    imgs = torch.stack([ctx.dataset("probe_test")[i]["cxr"] for i in range(4)])
    with torch.no_grad():
        out = mae(imgs, generator=torch.Generator().manual_seed(0))
    mask = out.mask.unsqueeze(-1).expand_as(out.pred)
    masked = mae.unpatchify(mae.patchify(imgs) * (1 - mask))
    recon = mae.unpatchify(out.pred * mask + mae.patchify(imgs) * (1 - mask))
    return str(plot_mae_reconstruction(imgs, masked, recon, path, mask_ratio=mae.mask_ratio))


def _rollout(ctx: Any, probes: Mapping[str, Any], task: str, path: Any) -> str | None:
    """Attention rollout on test cases the PaCX probe finds and the MAE probe misses (None: no such case)."""
    y = ctx.labels("probe_test", task)
    pm, pp = probes[task]["mae"], probes[task]["pacx"]
    idx = select_rescue_cases(y, np.asarray(pm["test_probs"]).reshape(-1), np.asarray(pp["test_probs"]).reshape(-1),
                              k=int(ctx.cfg["eval"]["rollout_cases"]))
    if not len(idx):
        return None
    imgs = torch.stack([ctx.dataset("probe_test")[int(i)]["cxr"] for i in idx])
    maps = {n: upsample_maps(attention_rollout(ctx.encoders[n], imgs), ctx.image_size) for n in ("mae", "pacx")}
    return str(plot_rollout_overlays(imgs, maps["mae"], maps["pacx"], path,
                                     row_titles=[f"{task} case {int(i)}" for i in idx],
                                     title=f"Attention rollout ({task}: PaCX probe positive, MAE probe negative)"))


def draw_figures(ctx: Any, probes: Mapping[str, Any], curves: Mapping[str, Any]) -> dict[str, Any]:
    """Draw every figure of a run under ``<out>/figures``.

    Args:
        ctx: the :class:`pacx.pipeline.evaluation.EvaluationContext` of the run.
        probes: probe results ``{task: {encoder: probe_task result}}``.
        curves: low-data points ``{task: {encoder label: {fraction: (value, low, high)}}}``.

    Returns:
        ``{"written": [paths], "skipped": {figure: reason}}``.
    """
    fig_dir, written, skipped = ctx.out / "figures", [], {}
    recon = _reconstruction(ctx, fig_dir / "mae_reconstruction.png")
    written += [recon] if recon else []
    if not recon:
        skipped["mae_reconstruction"] = "no mae/mae_full.safetensors in the run"
    for task, task_curves in curves.items():
        written.append(str(plot_low_data_curves(task_curves, fig_dir / f"low_data_{task}.png",
                                                title=f"Low-data linear probe: {task}")))
    task = next(iter(curves), None)
    rollout = _rollout(ctx, probes, task, fig_dir / "attention_rollout.png") if task else None
    written += [rollout] if rollout else []
    if not rollout:
        skipped["attention_rollout"] = f"no {task} test case that the PaCX probe finds and the MAE probe misses"
    for log in sorted(ctx.out.glob("*/logs/metrics.csv")):
        stage = log.parent.parent.name
        written.append(str(plot_training_curves(log, fig_dir / f"training_{stage}.png", title=f"Training curves: {stage}")))
    return {"written": written, "skipped": skipped}
