"""Stage 3: evaluate the exported encoders of a run on one cached-feature protocol.

Everything here composes :mod:`pacx.eval`. Features are extracted once per encoder and split,
then reused by every probe, seed and low-data subset. The run is measured in three parts:

1. **Setting checks** (validation data only): does the run reproduce the paper's *setting*?
   The MAE prior must beat the random-init encoder on every probe task, and the teachers must
   carry the physiology signal far better than any CXR encoder (:data:`SETTING_THRESHOLDS`).
   The gap to a raw-pixel probe is reported beside them, without gating.
2. **Claims** (probe test split): the main table (random, MAE, PaCX, the shuffled-teacher
   control), segmentation, low-data subsets, alignment, the Stage-2 variants.
3. **Diagnostics**: the latent-state readout (synthetic cohorts), retrieval through the heads,
   figures.

The probe splits (``probe_train``/``probe_val``/``probe_test``) come from
:func:`pacx.pipeline.probe_root`; alignment and the teacher check use the paired cohort splits.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pacx.data import SymileMIMIC, load_task_labels, load_teacher_embeddings
from pacx.distributed import is_main_process
from pacx.engine import load_backbone
from pacx.eval import (
    alignment_metrics,
    compare,
    compare_segmentation,
    extract_features,
    fit_ridge,
    predict_ridge,
    probe_task,
    r2_score,
    retrieval_recall_at_k,
    seed_mean_std,
    segmentation_probe,
    train_linear_probe,
)
from pacx.io import load_json, load_safetensors

from .console import format_seconds
from .stages import build_distiller, data_root, probe_root

__all__ = [
    "CONTROL",
    "ENCODERS",
    "PROBE_SPLITS",
    "SETTING_THRESHOLDS",
    "EvaluationContext",
    "evaluate_run",
    "summarize_metric",
]

PROBE_SPLITS = {"train": "probe_train", "val": "probe_val", "test": "probe_test"}
ENCODERS = ("random", "mae", "pacx")
CONTROL = "shuffled_teachers"  # Stage 2 with each teacher's embeddings permuted across patients
SETTING_THRESHOLDS = {
    "prior_min_gain": 0.03,  # MAE - random-init probe AUROC, every probe task (validation)
    "teacher_min_margin": 0.05,  # teacher probe AUROC - best CXR encoder, every physiology task (validation)
}
_PIXEL_SIDE = 32  # raw-pixel reference probe: the image average-pooled to 32 x 32 = 1,024 inputs
log = logging.getLogger(__name__)


def summarize_metric(result: Mapping[str, Any], metric: str) -> dict[str, Any]:
    """Mean over probe seeds, its spread, the seed-averaged (pooled) value and its bootstrap CI."""
    if "per_seed" in result and isinstance(result["per_seed"][0], Mapping) and "metrics" in result["per_seed"][0]:
        values = [float(s["metrics"][metric]) for s in result["per_seed"]]
    elif "per_seed" in result:
        values = [float(s[metric]) for s in result["per_seed"]]
    else:
        values = [float(result[metric])]
    pooled = result.get("pooled", {}).get(metric, result.get(metric))
    mean, std = seed_mean_std(values)
    return {
        "mean": mean,
        "std": std,
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


class EvaluationContext:
    """Datasets, features and labels of one evaluation, each computed once.

    Args:
        cfg: the run configuration.
        out: the run folder (``backbones/``, ``teachers/``).
        encoders: ``{name: frozen timm ViT}``.
        threads: torch threads for the multi-threaded parts (feature extraction, the segmentation probe).
    """

    def __init__(self, cfg: Mapping[str, Any], out: Path, encoders: Mapping[str, Any], threads: int = 1) -> None:
        self.cfg, self.out, self.encoders, self.threads = cfg, Path(out), dict(encoders), threads
        self.probes = probe_root(cfg, out)
        self._cohort: Path | None = None
        self.meta = load_json(self.probes / "cohort.json") if (self.probes / "cohort.json").is_file() else {}
        self.image_size = next(iter(self.encoders.values())).patch_embed.img_size[0]
        self._datasets: dict[tuple[Path, str], SymileMIMIC] = {}
        self._features: dict[tuple[str, Path, str, str], np.ndarray] = {}
        self._labels: dict[tuple[Path, str, str], np.ndarray] = {}

    @property
    def cohort(self) -> Path:
        """The paired cohort's root (resolved on first use: probe-only work never needs it)."""
        if self._cohort is None:
            self._cohort = data_root(self.cfg, self.out)
        return self._cohort

    def root(self, split: str) -> Path:
        """Probe splits live in the probe root, the paired splits in the cohort."""
        return self.probes if split.startswith("probe_") else self.cohort

    def dataset(self, split: str) -> SymileMIMIC:
        key = (self.root(split), split)
        if key not in self._datasets:
            self._datasets[key] = SymileMIMIC(key[0], split, modalities=("cxr",), image_size=self.image_size)
        return self._datasets[key]

    def features(self, name: str, split: str, pool: str = "token", limit: int | None = None) -> np.ndarray:
        """Frozen features of encoder ``name`` on ``split`` (the first ``limit`` rows when given)."""
        key = (name, self.root(split), split, pool)
        if key not in self._features:
            data = self.dataset(split)
            if limit is not None and limit < len(data):
                data = torch.utils.data.Subset(data, range(limit))
            with _threads(self.threads):  # whole-batch matmuls, unlike the probes, gain from threads
                self._features[key] = extract_features(
                    self.encoders[name], data, cache_dir=self.out / "eval" / "features", pool=pool, batch_size=128,
                    dataset_key=f"{key[1].resolve()}:{split}:{self.image_size}:{limit}")
        return self._features[key]

    def labels(self, split: str, task: str) -> np.ndarray:
        key = (self.root(split), split, task)
        if key not in self._labels:
            self._labels[key] = load_task_labels(key[0], split, [task], hadm_ids=self.dataset(split).hadm_ids)[:, 0]
        return self._labels[key]

    def pixels(self, split: str) -> np.ndarray:
        """The raw images (first channel) average-pooled to 32 x 32 and flattened: the pixel reference."""
        images = self.dataset(split)
        loader = torch.utils.data.DataLoader(images, batch_size=512, shuffle=False)
        pooled = [torch.nn.functional.adaptive_avg_pool2d(b["cxr"][:, :1], _PIXEL_SIDE).flatten(1) for b in loader]
        return torch.cat(pooled).numpy().astype(np.float64)

    def tasks(self, kind: str | None = None) -> list[str]:
        return [t for t, m in self.meta.get("tasks", {}).items() if kind is None or m["kind"] == kind]


def _probe(ctx: EvaluationContext, name: str, task: str, train_fraction: float = 1.0) -> dict[str, Any]:
    ev = ctx.cfg["eval"]
    feats = {k: ctx.features(name, s) for k, s in PROBE_SPLITS.items()}
    labels = {k: ctx.labels(s, task) for k, s in PROBE_SPLITS.items()}
    return probe_task(feats, labels, "binary", seeds=tuple(ev["seeds"]), method=ev["probe_method"],
                      train_fraction=train_fraction, n_resamples=int(ev["bootstrap_resamples"]))


def _val_auroc(x: Mapping[str, np.ndarray], y: Mapping[str, np.ndarray], method: str) -> float:
    """Validation AUROC of a probe trained on ``x["train"]`` (its penalty also chosen on validation)."""
    out = train_linear_probe(x["train"], y["train"], x["val"], y["val"], x["val"], y["val"], method=method)
    return float(out["val_auroc"])


def setting_checks(ctx: EvaluationContext, probes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Whether the run reproduces the paper's setting, measured on validation data only.

    * ``prior``: the MAE encoder's probe beats the random-init encoder's by at least
      ``prior_min_gain`` AUROC on every probe task (``probe_val``).
    * ``teachers``: each teacher's embedding probe beats the best CXR encoder by at least
      ``teacher_min_margin`` on every physiology task. Teacher embeddings exist for the paired
      cohort only, so this check trains on the cohort's ``train`` split and scores ``val``, the
      CXR encoders on the same patients.
    * ``pixel_gap`` (reported, not gating): MAE minus a linear probe on 32 x 32 raw pixels.
    """
    method, thr = ctx.cfg["eval"]["probe_method"], SETTING_THRESHOLDS
    val = {t: {n: float(_auroc_of(probes[t][n]["val_probs"], ctx.labels("probe_val", t))) for n in ("random", "mae")}
           for t in ctx.tasks()}
    gains = {t: v["mae"] - v["random"] for t, v in val.items()}
    prior = {"holds": bool(gains) and all(g >= thr["prior_min_gain"] for g in gains.values()),
             "detail": {"auroc_val": val, "gain": gains, "threshold": thr["prior_min_gain"]}}
    teachers = _teacher_check(ctx, method)
    pixels = {"train": ctx.pixels("probe_train"), "val": ctx.pixels("probe_val")}
    gap = {}
    for t in ctx.tasks():
        y = {k: ctx.labels(PROBE_SPLITS[k], t) for k in ("train", "val")}
        pixel_auroc = _val_auroc(pixels, y, method)
        gap[t] = {"pixels": pixel_auroc, "mae": val[t]["mae"], "mae_minus_pixels": val[t]["mae"] - pixel_auroc}
    return {"passed": prior["holds"] and teachers["holds"], "prior": prior, "teachers": teachers, "pixel_gap": gap,
            "n": {"probe_val": len(ctx.dataset("probe_val")), "cohort_val": len(ctx.dataset("val"))}}


def _auroc_of(probs: np.ndarray, labels: np.ndarray) -> float:
    from pacx.eval import macro_auroc

    return macro_auroc(np.asarray(probs).reshape(-1, 1), np.asarray(labels).reshape(-1, 1), warn=False)


def _teacher_check(ctx: EvaluationContext, method: str) -> dict[str, Any]:
    names, margin = ctx.cfg["distill"]["teachers"], SETTING_THRESHOLDS["teacher_min_margin"]
    teacher_x = {k: load_teacher_embeddings(ctx.out, k, names) for k in ("train", "val")}
    detail: dict[str, Any] = {}
    holds = True
    for task in ctx.tasks("physiology"):
        y = {k: load_task_labels(ctx.cohort, k, [task], hadm_ids=ctx.dataset(k).hadm_ids)[:, 0] for k in ("train", "val")}
        cxr = {n: _val_auroc({k: ctx.features(n, k) for k in ("train", "val")}, y, method) for n in ENCODERS}
        teach = {t: _val_auroc({k: np.asarray(teacher_x[k][t]) for k in ("train", "val")}, y, method) for t in names}
        best_cxr = max(cxr.values())
        holds = holds and all(a - best_cxr >= margin for a in teach.values())
        detail[task] = {"teachers": teach, "cxr": cxr, "margin": {t: a - best_cxr for t, a in teach.items()}}
    return {"holds": bool(detail) and holds, "detail": detail, "threshold": margin}


def _task_entries(ctx: EvaluationContext, names: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Probe every task with every encoder; the table entries with PaCX-vs-MAE and PaCX-vs-control tests."""
    ev, seed = ctx.cfg["eval"], int(ctx.cfg["seed"])
    probes: dict[str, dict[str, Any]] = {}
    entries: dict[str, Any] = {}
    for task, meta in ctx.meta.get("tasks", {}).items():
        probes[task] = {n: _probe(ctx, n, task) for n in names}
        entry: dict[str, Any] = {"kind": meta["kind"], "metric": "auroc"}
        entry.update({n: summarize_metric(probes[task][n], "auroc") for n in names})
        for other, key in (("mae", "p_value"), (CONTROL, "p_value_control")):
            if other in names:
                cmp = compare(probes[task]["pacx"], probes[task][other], metric="auroc",
                              n_resamples=int(ev["bootstrap_resamples"]), seed=seed)
                entry[key] = float(cmp["p_value"])
                entry["difference_ci" if other == "mae" else "difference_ci_control"] = [
                    float(cmp.get("ci_low", np.nan)), float(cmp.get("ci_high", np.nan))]
        entries[task] = entry
    return probes, entries


def _segmentation(ctx: EvaluationContext, names: Sequence[str]) -> dict[str, Any]:
    """Lung Dice/IoU of a decoder on frozen patch tokens (the first ``eval.segmentation_sizes`` patients)."""
    ev = ctx.cfg["eval"]
    sizes = dict(zip(PROBE_SPLITS, ev.get("segmentation_sizes") or [None] * 3))
    tokens = {n: {k: ctx.features(n, s, pool="patch", limit=sizes[k]) for k, s in PROBE_SPLITS.items()} for n in names}
    masks = {}
    for k, s in PROBE_SPLITS.items():
        path = ctx.root(s) / ctx.meta["segmentation"]["lung"]["mask"].format(split=s)
        m = torch.from_numpy(np.load(path, mmap_mode="r")[: sizes[k]].astype(np.float32))[:, None]
        if m.shape[-1] != ctx.image_size:
            m = torch.nn.functional.interpolate(m, size=ctx.image_size, mode="nearest")
        masks[k] = m.numpy()
    patch = ctx.encoders[names[0]].patch_embed.patch_size[0]
    with _threads(ctx.threads):  # convolutions on whole images do use several threads
        seg = {n: segmentation_probe(tokens[n], masks, patch, seeds=tuple(ev["seeds"][:1]),
                                     n_resamples=int(ev["bootstrap_resamples"]), epochs=int(ev["seg_epochs"]))
               for n in names}
    entries = {}
    for metric in ("dice", "iou"):
        entry: dict[str, Any] = {"kind": "anatomy", "metric": metric}
        for n in names:
            entry[n] = {"mean": float(seg[n][metric]), "ci": [float(v) for v in seg[n]["ci"].get(metric, [np.nan] * 2)]}
        cmp = compare_segmentation(seg["pacx"], seg["mae"], metric=metric,
                                   n_resamples=int(ev["bootstrap_resamples"]), seed=int(ctx.cfg["seed"]))
        entry["p_value"] = float(cmp["p_value"])
        entries[f"lung_segmentation_{metric}"] = entry
    return entries


def _low_data(ctx: EvaluationContext, probes: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """MAE and PaCX probes on nested subsets of ``probe_train``; also the curves for the figures."""
    results: dict[str, Any] = {}
    curves: dict[str, dict[str, dict[float, Any]]] = {}
    for fraction in ctx.cfg["eval"]["low_data_fractions"]:
        results[str(float(fraction))] = {}
        for task in ctx.tasks("physiology"):
            row = {}
            for n in ("mae", "pacx"):
                res = probes[task][n] if float(fraction) == 1.0 else _probe(ctx, n, task, float(fraction))
                summ = summarize_metric(res, "auroc")
                row[n] = summ["mean"]
                label = "MAE" if n == "mae" else "PaCX"
                # The figure shows the table's number (the mean over probe seeds), +-1 SD over seeds.
                sd = summ["std"] if len(summ["per_seed"]) > 1 else np.nan
                curves.setdefault(task, {}).setdefault(label, {})[float(fraction)] = (
                    summ["mean"], summ["mean"] - sd, summ["mean"] + sd)
            results[str(float(fraction))][task] = row
    return results, curves


def _alignment(ctx: EvaluationContext, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Ridge readout of each teacher's embedding from each encoder's features (cohort train -> test)."""
    teachers = ctx.cfg["distill"]["teachers"]
    y_train = load_teacher_embeddings(ctx.out, "train", teachers)
    y_test = load_teacher_embeddings(ctx.out, "test", teachers)
    return {n: {t: alignment_metrics(ctx.features(n, "train"), np.asarray(y_train[t]), ctx.features(n, "test"),
                                     np.asarray(y_test[t])) for t in teachers} for n in names}


def _head_retrieval(ctx: EvaluationContext) -> dict[str, dict[str, float]]:
    """Recall@k of CXR -> teacher retrieval on the cohort test split through the trained Stage-2 heads."""
    path = ctx.out / "distill" / "distiller.safetensors"
    if not path.is_file():
        return {}
    teachers = ctx.cfg["distill"]["teachers"]
    y_test = load_teacher_embeddings(ctx.out, "test", teachers)
    model = build_distiller(ctx.cfg["distill"], load_backbone(ctx.out / "backbones" / "mae"),
                            {t: y_test[t].shape[1] for t in teachers})
    model.load_state_dict(load_safetensors(path))
    model.eval()
    with torch.no_grad():
        query = model.proj["cxr"](torch.from_numpy(ctx.features("pacx", "test")).float())
        return {t: retrieval_recall_at_k(query.numpy(), model.project_teacher(
            t, torch.from_numpy(np.asarray(y_test[t])).float()).numpy()) for t in teachers}


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


def _latent_readout(ctx: EvaluationContext, names: Sequence[str], pixels: bool = True) -> dict[str, dict[str, float]]:
    """Test R² of a ridge readout of each latent variable from each encoder's class token and from pixels.

    Only for synthetic cohorts (which ship ``latent/<split>.csv``); fitted on the probe training
    split, the penalty chosen on the probe validation split. With ``pixels``, a ``"pixels"`` row
    reads the same variables from the raw image (:meth:`EvaluationContext.pixels`).
    """
    targets: dict[str, np.ndarray] = {}
    variables: list[str] = []
    for key, split in PROBE_SPLITS.items():
        path = ctx.root(split) / "latent" / f"{split}.csv"
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
        inputs["pixels"] = {k: ctx.pixels(s) for k, s in PROBE_SPLITS.items()}
    return {n: dict(zip(variables, map(float, _ridge_r2(x, targets)))) for n, x in inputs.items()}


def _variant_rows(ctx: EvaluationContext, variants: Mapping[str, Mapping[str, Any]], entries: Mapping[str, Any],
                  align: Mapping[str, Any]) -> dict[str, Any]:
    """One row per Stage-2 variant (and the full objective): probe AUROC per task and alignment."""
    tasks = ctx.tasks()

    def row(name: str) -> dict[str, Any]:
        return {"auroc": {t: entries[t][name]["mean"] for t in tasks},
                "physiology_auroc": {t: entries[t][name]["mean"] for t in ctx.tasks("physiology")},
                "alignment": {t: float(m["cosine_centered"]) for t, m in align.get(name, {}).items()}}

    return {"full_objective": row("pacx"), **{n: {"overrides": dict(o), **row(n)} for n, o in variants.items()}}


def _part(start: float, text: str) -> None:
    """One progress line per part of the evaluation."""
    log.info("[pacx] evaluate: %s (elapsed %s)", text, format_seconds(time.perf_counter() - start))


def evaluate_run(cfg: Mapping[str, Any], out: str | Path, variants: Mapping[str, Mapping[str, Any]] | None = None,
                 figures: bool = True) -> dict[str, Any]:
    """Stage 3 of a run: setting checks, the claims' measurements and diagnostics (the ``results.json`` body).

    Args:
        cfg: the run configuration.
        out: the run folder, holding ``backbones/{random,mae,pacx}`` and any variant backbones.
        variants: ``{name: overrides}`` of the Stage-2 variants whose backbones to evaluate beside
            PaCX (``backbones/<name>``); the shuffled-teacher control joins the main table.
        figures: also draw the figures.
    """
    out, start = Path(out), time.perf_counter()
    variants = dict(variants or {})
    names = [*ENCODERS, *variants]
    threads = torch.get_num_threads()
    # Probes are thousands of tiny ops: one thread avoids OpenMP synchronisation costs that
    # otherwise dominate (measured 60x slower per op with 2 threads on a busy 2-core machine).
    with _threads(1):
        encoders = {n: load_backbone(out / "backbones" / n).eval() for n in names}
        ctx = EvaluationContext(cfg, out, encoders, threads)
        _part(start, f"linear probes of {len(names)} encoders on {len(ctx.tasks())} tasks")
        probes, entries = _task_entries(ctx, names)
        _part(start, "setting checks")
        results: dict[str, Any] = {"setting_checks": setting_checks(ctx, probes), "tasks": entries}
        if "segmentation" in ctx.meta:
            _part(start, "segmentation probe")
            results["tasks"].update(_segmentation(ctx, ENCODERS))
        _part(start, f"low-data probes at {cfg['eval']['low_data_fractions']}")
        results["low_data"], curves = _low_data(ctx, probes)
        _part(start, "alignment, retrieval, variants and latent readout")
        align = _alignment(ctx, names) if (out / "teachers" / "test").is_dir() else {}
        if align:
            results["alignment_details"] = {n: align[n] for n in ENCODERS}
            results["alignment"] = {t: {n: float(align[n][t]["cosine_centered"]) for n in names}
                                    for t in cfg["distill"]["teachers"]}
            results["retrieval_through_heads"] = _head_retrieval(ctx)
        results["ablations"] = _variant_rows(ctx, variants, entries, align)
        readout = _latent_readout(ctx, names)
        if readout:
            results["latent_readout"] = readout
        if figures and is_main_process():
            from .figures import draw_figures

            _part(start, "figures")
            results["figures"] = draw_figures(ctx, probes, curves)
    results["eval_seconds"] = time.perf_counter() - start
    return results
