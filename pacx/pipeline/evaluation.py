"""Stage 3: evaluate the random-init, MAE and PaCX encoders on one cached-feature protocol.

Everything here composes :mod:`pacx.eval`: features are extracted once per encoder and split,
then reused by every probe, seed and low-data subset; the segmentation probe reads cached patch
tokens; alignment reads the cached teacher embeddings. The function returns the
``results.json`` payload and writes ``results.md`` and the figures.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pacx.data import SymileMIMIC, load_task_labels, load_teacher_embeddings
from pacx.engine import load_backbone
from pacx.eval import (
    alignment_metrics,
    attention_rollout,
    compare,
    compare_segmentation,
    extract_features,
    fit_ridge,
    plot_low_data_curves,
    plot_mae_reconstruction,
    plot_rollout_overlays,
    plot_training_curves,
    predict_ridge,
    probe_task,
    r2_score,
    retrieval_recall_at_k,
    segmentation_probe,
    select_rescue_cases,
    upsample_maps,
)
from pacx.io import load_json, load_safetensors

__all__ = ["PROBE_SPLITS", "evaluate_encoders", "evaluate_variant", "physiology_probe_summary", "summarize_metric"]

PROBE_SPLITS = {"train": "probe_train", "val": "probe_val", "test": "probe_test"}
ENCODERS = ("random", "mae", "pacx")


def summarize_metric(result: Mapping[str, Any], metric: str) -> dict[str, Any]:
    """Mean over probe seeds, its spread, the seed-averaged (pooled) value and its bootstrap CI."""
    if "per_seed" in result and isinstance(result["per_seed"][0], Mapping) and "metrics" in result["per_seed"][0]:
        values = [float(s["metrics"][metric]) for s in result["per_seed"]]
    elif "per_seed" in result:
        values = [float(s[metric]) for s in result["per_seed"]]
    else:
        values = [float(result[metric])]
    pooled = result.get("pooled", {}).get(metric, result.get(metric))
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
        "per_seed": values,
        "pooled": None if pooled is None else float(pooled),
        "ci": [float(v) for v in result.get("ci", {}).get(metric, [np.nan, np.nan])],
    }


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` torch threads, restoring the previous count afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class _Context:
    """Cached datasets, features and labels of one evaluation run."""

    def __init__(self, cfg: Mapping[str, Any], out: Path, root: Path, encoders: Mapping[str, Any],
                 threads: int = 1) -> None:
        self.cfg, self.out, self.root, self.encoders = cfg, out, root, encoders
        self.threads = threads  # for the multi-threaded segmentation probe
        self.meta = load_json(root / "cohort.json") if (root / "cohort.json").is_file() else {}
        self.image_size = next(iter(encoders.values())).patch_embed.img_size[0]
        self.cache = out / "eval" / "features"
        self.datasets: dict[str, SymileMIMIC] = {}
        # Every probe, seed and fraction reads the same features: keep them in memory rather than
        # re-hashing the encoder weights for the disk-cache key on each call.
        self._features: dict[tuple[str, str, str], np.ndarray] = {}
        self._labels: dict[tuple[str, str], np.ndarray] = {}

    def dataset(self, split: str) -> SymileMIMIC:
        if split not in self.datasets:
            self.datasets[split] = SymileMIMIC(self.root, split, modalities=("cxr",), image_size=self.image_size)
        return self.datasets[split]

    def features(self, name: str, split: str, pool: str = "token") -> np.ndarray:
        key = (name, split, pool)
        if key not in self._features:
            self._features[key] = extract_features(
                self.encoders[name], self.dataset(split), cache_dir=self.cache, pool=pool,
                dataset_key=f"{self.root.resolve()}:{split}:{self.image_size}", batch_size=128)
        return self._features[key]

    def labels(self, split: str, task: str) -> np.ndarray:
        if (split, task) not in self._labels:
            self._labels[split, task] = load_task_labels(
                self.root, split, [task], hadm_ids=self.dataset(split).hadm_ids)[:, 0]
        return self._labels[split, task]

    def masks(self, split: str) -> np.ndarray:
        path = self.root / self.meta["segmentation"]["lung"]["mask"].format(split=split)
        masks = torch.from_numpy(np.load(path).astype(np.float32))[:, None]
        if masks.shape[-1] != self.image_size:
            masks = torch.nn.functional.interpolate(masks, size=self.image_size, mode="nearest")
        return masks.numpy()


def _probe(ctx: _Context, name: str, task: str, train_fraction: float = 1.0) -> dict[str, Any]:
    ev = ctx.cfg["eval"]
    feats = {k: ctx.features(name, s) for k, s in PROBE_SPLITS.items()}
    labels = {k: ctx.labels(s, task) for k, s in PROBE_SPLITS.items()}
    return probe_task(feats, labels, "binary", seeds=tuple(ev["seeds"]), method=ev["probe_method"],
                      train_fraction=train_fraction, n_resamples=int(ev["bootstrap_resamples"]))


def physiology_probe_summary(ctx: _Context, name: str) -> dict[str, float]:
    """Mean probe AUROC of one encoder on each physiology task (used by the ablation table)."""
    tasks = [t for t, m in ctx.meta["tasks"].items() if m["kind"] == "physiology"]
    return {t: summarize_metric(_probe(ctx, name, t), "auroc")["mean"] for t in tasks}


def _alignment(ctx: _Context, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    teachers = ctx.cfg["distill"]["teachers"]
    y_train = load_teacher_embeddings(ctx.out, "train", teachers)
    y_test = load_teacher_embeddings(ctx.out, "test", teachers)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        x_train, x_test = ctx.features(name, "train"), ctx.features(name, "test")
        out[name] = {t: alignment_metrics(x_train, np.asarray(y_train[t]), x_test, np.asarray(y_test[t]))
                     for t in teachers}
    return out


# The latent variables the synthetic CXR renders (heart width as the cardiothoracic ratio,
# costophrenic blunting, perihilar haze) and the state behind them: how readable each is from
# an encoder's frozen features shows whether Stage 2 moved the CXR embedding towards what the
# teachers see. The raw pixels are the reference: what a linear readout of the image itself gets.
LATENT_READOUT_VARIABLES = ("ctr", "effusion", "haze", "cardiac", "congestion")
_READOUT_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)


def _ridge_r2(x: Mapping[str, np.ndarray], y: Mapping[str, np.ndarray]) -> np.ndarray:
    """Test R² per target column, the ridge penalty chosen per column on the validation split."""
    best_val = np.full(y["train"].shape[1], -np.inf)
    test = np.zeros(y["train"].shape[1])
    for alpha in _READOUT_ALPHAS:
        readout = fit_ridge(x["train"], y["train"], alpha=alpha)
        pred = {k: predict_ridge(readout, x[k]) for k in ("val", "test")}
        for j in range(y["train"].shape[1]):
            val = r2_score(y["val"][:, j:j + 1], pred["val"][:, j:j + 1])
            if val > best_val[j]:
                best_val[j], test[j] = val, r2_score(y["test"][:, j:j + 1], pred["test"][:, j:j + 1])
    return test


def _latent_readout(ctx: _Context, names: Sequence[str], pixels: bool = True) -> dict[str, dict[str, float]]:
    """Test R² of a ridge readout of each latent variable from each encoder's class token.

    Only for synthetic cohorts (which ship ``latent/<split>.csv``); fitted on the probe training
    split, the penalty chosen on the probe validation split. With ``pixels``, a ``"pixels"`` row
    reads the same variables from the raw image (first channel, flattened).
    """
    import csv

    targets: dict[str, np.ndarray] = {}
    variables: list[str] = []
    for key, split in PROBE_SPLITS.items():
        path = ctx.root / "latent" / f"{split}.csv"
        if not path.is_file():
            return {}
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        ids = np.array([int(r["hadm_id"]) for r in rows])
        if not np.array_equal(ids, ctx.dataset(split).hadm_ids):
            raise ValueError(f"{path}: hadm_id order differs from the {split} split")
        variables = [v for v in LATENT_READOUT_VARIABLES if v in rows[0]]
        targets[key] = np.array([[float(r[v]) for v in variables] for r in rows])
    inputs = {n: {k: ctx.features(n, s).astype(np.float64) for k, s in PROBE_SPLITS.items()} for n in names}
    if pixels:
        inputs["pixels"] = {k: np.stack([ctx.dataset(s)[i]["cxr"][0].numpy().ravel() for i in range(len(ctx.dataset(s)))])
                            .astype(np.float64) for k, s in PROBE_SPLITS.items()}
    return {n: dict(zip(variables, map(float, _ridge_r2(x, targets)))) for n, x in inputs.items()}


def _head_retrieval(ctx: _Context) -> dict[str, dict[str, float]]:
    """Recall@k of CXR -> teacher retrieval on the test split through the trained Stage-2 heads."""
    from .stages import build_distiller

    path = ctx.out / "distill" / "distiller.safetensors"
    if not path.is_file():
        return {}
    teachers = ctx.cfg["distill"]["teachers"]
    y_test = load_teacher_embeddings(ctx.out, "test", teachers)
    student = load_backbone(ctx.out / "backbones" / "mae")
    model = build_distiller(ctx.cfg, student, {t: y_test[t].shape[1] for t in teachers})
    model.load_state_dict(load_safetensors(path))
    model.eval()
    pacx_feats = torch.from_numpy(ctx.features("pacx", "test"))
    out = {}
    with torch.no_grad():
        query = model.proj["cxr"](pacx_feats.float())
        for t in teachers:
            gallery = model.project_teacher(t, torch.from_numpy(np.asarray(y_test[t])).float())
            out[t] = retrieval_recall_at_k(query.numpy(), gallery.numpy())
    return out


def _figures(ctx: _Context, probes: Mapping[str, Any], low_data: Mapping[str, Any]) -> list[str]:
    fig_dir = ctx.out / "figures"
    written: list[str] = []
    # MAE reconstructions of held-out images, at the ratio used in training.
    mae_path = ctx.out / "mae" / "mae_full.safetensors"
    if mae_path.is_file():
        from pacx.nets import MaskedAutoencoderViT

        mae = MaskedAutoencoderViT(**load_json(ctx.out / "mae" / "mae_config.json")).eval()
        mae.load_state_dict(load_safetensors(mae_path))
        imgs = torch.stack([ctx.dataset(PROBE_SPLITS["test"])[i]["cxr"] for i in range(4)])
        with torch.no_grad():
            out = mae(imgs, generator=torch.Generator().manual_seed(0))
        mask = out.mask.unsqueeze(-1).expand_as(out.pred)
        masked = mae.unpatchify(mae.patchify(imgs) * (1 - mask))
        recon = mae.unpatchify(out.pred * mask + mae.patchify(imgs) * (1 - mask))
        written.append(str(plot_mae_reconstruction(imgs, masked, recon, fig_dir / "mae_reconstruction.png",
                                                   mask_ratio=mae.mask_ratio)))
    # Low-data curves of the first physiology task.
    for task, curves in low_data.items():
        written.append(str(plot_low_data_curves(curves, fig_dir / f"low_data_{task}.png",
                                                title=f"Low-data linear probe: {task}")))
    # Attention rollout on cases the trained probes disagree on (PaCX finds, MAE misses).
    task = next(iter(low_data), None)
    if task is not None and "mae" in probes[task] and "pacx" in probes[task]:
        y = ctx.labels(PROBE_SPLITS["test"], task)
        pm, pp = probes[task]["mae"], probes[task]["pacx"]
        idx = select_rescue_cases(y, np.asarray(pm["test_probs"]).reshape(-1), np.asarray(pp["test_probs"]).reshape(-1),
                                  k=int(ctx.cfg["eval"]["rollout_cases"]))
        if len(idx):
            imgs = torch.stack([ctx.dataset(PROBE_SPLITS["test"])[int(i)]["cxr"] for i in idx])
            maps = {n: upsample_maps(attention_rollout(ctx.encoders[n], imgs), ctx.image_size) for n in ("mae", "pacx")}
            written.append(str(plot_rollout_overlays(
                imgs, maps["mae"], maps["pacx"], fig_dir / "attention_rollout.png",
                row_titles=[f"{task} case {int(i)}" for i in idx],
                title=f"Attention rollout ({task}: PaCX probe positive, MAE probe negative)")))
    for stage in ("mae", "distill"):
        csv = ctx.out / stage / "logs" / "metrics.csv"
        if csv.is_file():
            written.append(str(plot_training_curves(csv, fig_dir / f"training_{stage}.png",
                                                    title=f"Training curves: {stage}")))
    return written


def evaluate_encoders(cfg: Mapping[str, Any], out: str | Path, root: str | Path,
                      names: Sequence[str] = ENCODERS) -> dict[str, Any]:
    """Run Stage 3 and return the ``results.json`` payload (tasks, low-data, alignment, figures)."""
    out, root = Path(out), Path(root)
    # Probes are thousands of tiny ops: one thread avoids OpenMP synchronisation costs that
    # otherwise dominate (measured 60x slower per op with 2 threads on a busy 2-core machine).
    threads = torch.get_num_threads()
    with _threads(1):
        return _evaluate_encoders(cfg, out, root, names, threads)


def _evaluate_encoders(cfg: Mapping[str, Any], out: Path, root: Path, names: Sequence[str],
                       threads: int) -> dict[str, Any]:
    start = time.perf_counter()
    ev = cfg["eval"]
    encoders = {n: load_backbone(out / "backbones" / n).eval() for n in names}
    ctx = _Context(cfg, out, root, encoders, threads)
    tasks_meta = ctx.meta.get("tasks", {})
    results: dict[str, Any] = {"tasks": {}, "low_data": {}, "alignment": {}}

    probes: dict[str, dict[str, Any]] = {}
    for task, meta in tasks_meta.items():
        probes[task] = {n: _probe(ctx, n, task) for n in names}
        entry = {"kind": meta["kind"], "metric": "auroc"}
        entry.update({n: summarize_metric(probes[task][n], "auroc") for n in names})
        cmp = compare(probes[task]["pacx"], probes[task]["mae"], metric="auroc",
                      n_resamples=int(ev["bootstrap_resamples"]), seed=int(cfg["seed"]))
        entry["p_value"] = float(cmp["p_value"])
        entry["difference_ci"] = [float(cmp.get("ci_low", np.nan)), float(cmp.get("ci_high", np.nan))]
        results["tasks"][task] = entry

    if "segmentation" in ctx.meta:
        tokens = {n: {k: ctx.features(n, s, pool="patch") for k, s in PROBE_SPLITS.items()} for n in names}
        masks = {k: ctx.masks(s) for k, s in PROBE_SPLITS.items()}
        patch = encoders[names[0]].patch_embed.patch_size[0]
        # The segmentation head is convolutions on whole images, which do use several threads
        # (measured 110 s of a 157 s CPU evaluation on one thread).
        with _threads(ctx.threads):
            seg = {n: segmentation_probe(tokens[n], masks, patch, seeds=tuple(ev["seeds"][:1]),
                                         n_resamples=int(ev["bootstrap_resamples"]), epochs=int(ev["seg_epochs"]))
                   for n in names}
        for metric in ("dice", "iou"):
            entry = {"kind": "anatomy", "metric": metric}
            for n in names:
                entry[n] = {"mean": float(seg[n][metric]), "ci": [float(v) for v in seg[n]["ci"].get(metric, [np.nan] * 2)]}
            cmp = compare_segmentation(seg["pacx"], seg["mae"], metric=metric,
                                       n_resamples=int(ev["bootstrap_resamples"]), seed=int(cfg["seed"]))
            entry["p_value"] = float(cmp["p_value"])
            results["tasks"][f"lung_segmentation_{metric}"] = entry

    curves: dict[str, dict[str, dict[float, Any]]] = {}
    physiology = [t for t, m in tasks_meta.items() if m["kind"] == "physiology"]
    for fraction in ev["low_data_fractions"]:
        key = str(float(fraction))
        results["low_data"][key] = {}
        for task in physiology:
            row = {}
            for n in ("mae", "pacx"):
                res = probes[task][n] if float(fraction) == 1.0 else _probe(ctx, n, task, float(fraction))
                summ = summarize_metric(res, "auroc")
                row[n] = summ["mean"]
                curves.setdefault(task, {}).setdefault(n.upper() if n == "mae" else "PaCX", {})[float(fraction)] = (
                    summ["pooled"], *summ["ci"])
            results["low_data"][key][task] = row

    if (out / "teachers" / "test").is_dir():
        align = _alignment(ctx, names)
        results["alignment_details"] = align
        results["alignment"] = {t: {n: float(align[n][t]["cosine_centered"]) for n in names}
                                for t in cfg["distill"]["teachers"]}
        results["retrieval_through_heads"] = _head_retrieval(ctx)
    readout = _latent_readout(ctx, names)
    if readout:
        results["latent_readout"] = readout

    results["figures"] = _figures(ctx, probes, {t: curves[t] for t in physiology[:2] if t in curves})
    results["eval_seconds"] = time.perf_counter() - start
    return results


def evaluate_variant(cfg: Mapping[str, Any], out: str | Path, root: str | Path, name: str) -> dict[str, Any]:
    """Physiology probe AUROC (mean over seeds) and teacher alignment of one exported backbone.

    Used for the ablation rows: the same protocol as the main table, on ``<out>/backbones/<name>``.
    """
    out, root = Path(out), Path(root)
    with _threads(1):  # see evaluate_encoders
        ctx = _Context(cfg, out, root, {name: load_backbone(out / "backbones" / name).eval()})
        return _variant_row(ctx, out, name)


def _variant_row(ctx: _Context, out: Path, name: str) -> dict[str, Any]:
    row: dict[str, Any] = {"physiology_auroc": physiology_probe_summary(ctx, name)}
    if (out / "teachers" / "test").is_dir():
        align = _alignment(ctx, [name])[name]
        row["alignment"] = {t: float(m["cosine_centered"]) for t, m in align.items()}
    return row
