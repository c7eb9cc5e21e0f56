"""The quick profile end to end: killed in Stage 2, resumed with ``--resume latest``, and checked.

The resumed run must equal a run whose Stage 2 was never interrupted (bitwise on CPU: the
Trainer restores weights, optimiser, schedule, data order and RNG streams), skip the stages that
had finished, say where Stage 2 continued from, and report every results.json key the README
promises. ``evaluate.py`` run alone on a finished run writes the same report.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from .conftest import REAL, recipe_command, run_recipe

_RUN_SPECIFIC = {"timings", "eval_seconds", "figures", "real_data"}  # wall-clock times, paths, --real-eval only


def _numbers(results: dict) -> dict:
    """results.json without what depends on the run's folder, its wall-clock times or --real-eval."""
    return {k: v for k, v in results.items() if k not in _RUN_SPECIFIC}


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_resume_continues_the_interrupted_stage(quick_runs):
    log = quick_runs.resumed_log
    for stage in ("data", "mae", "teacher_ecg", "teacher_labs", "teachers"):
        assert f"{stage}: outputs for this configuration exist" in log, stage
    step = re.search(r"\[pacx\] distill: resuming from checkpoints/step_(\d+)", log)
    assert step is not None and int(step.group(1)) >= 1, log[-3000:]
    # The variants never started: they start from step 0.
    assert "variant_shuffled_teachers: no checkpoint of this stage, starting from step 0" in log
    done = json.loads((quick_runs.resumed / "distill" / "config.json").read_text())
    assert done["resolved"]["resumed_from"].endswith(f"step_{step.group(1)}")


@pytest.mark.parametrize("backbone", ["pacx", "shuffled_teachers", "regression_only", "mae"])
def test_resumed_weights_equal_the_uninterrupted_run(quick_runs, backbone):
    resumed = load_file(quick_runs.resumed / "backbones" / backbone / "model.safetensors")
    reference = load_file(quick_runs.uninterrupted / "backbones" / backbone / "model.safetensors")
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference), backbone


def test_resumed_results_equal_the_uninterrupted_run(quick_runs):
    resumed, reference = _results(quick_runs.resumed), _results(quick_runs.uninterrupted)
    assert _numbers(resumed) == _numbers(reference)
    assert resumed["timings"].keys() == reference["timings"].keys()


def test_console_and_log_file(quick_runs):
    log = quick_runs.uninterrupted_log
    # Numbered stage headers with the elapsed time; an ETA once an earlier run timed the stages.
    assert re.search(r"\[pacx\] \[6/9\] distill: running \(elapsed \d+:\d\d\)", log)
    assert re.search(r"\[pacx\] \[9/9\] evaluate: running \(elapsed [\d:]+, ETA [\d:]+ from an earlier quick run\)",
                     quick_runs.resumed_log)
    assert "[pacx] data: cohort ready" in quick_runs.killed_log
    for part in ("linear probes of", "setting checks", "low-data probes", "figures"):
        assert f"[pacx] evaluate: {part}" in log, part
    # The same lines in <out>/log.txt (the killed run's and the resumed run's, appended).
    file_log = (quick_runs.resumed / "log.txt").read_text()
    for line in (quick_runs.killed_log + quick_runs.resumed_log).splitlines():
        if line.startswith("[pacx]"):
            assert line in file_log, line


def test_no_warning_comes_from_pacx(quick_runs):
    logs = quick_runs.killed_log + quick_runs.uninterrupted_log + quick_runs.resumed_log
    ours = [line for line in logs.splitlines() if re.search(r"/(pacx|recipes)/[\w/]+\.py:\d+: \w*Warning", line)]
    assert not ours, "\n".join(ours)


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def test_results_json_has_the_promised_keys(quick_runs):
    out = quick_runs.resumed
    results = _results(out)
    assert results["profile"] == "quick" and results["seed"] == 0
    assert results["mask_ratio"] == pytest.approx(0.9)
    assert {"data", "mae", "teacher_ecg", "teacher_labs", "teachers", "distill", "variant_shuffled_teachers",
            "variant_regression_only", "evaluate"} <= set(results["timings"])
    setting = results["setting_checks"]
    assert isinstance(setting["passed"], bool) and set(setting["prior"]["detail"]["gain"]) == set(results["tasks"]) - {
        "lung_segmentation_dice", "lung_segmentation_iou"}
    assert set(setting["teachers"]["detail"]["reduced_ef"]["teachers"]) == {"ecg", "labs"}
    assert all(0.0 <= g["pixels"] <= 1.0 for g in setting["pixel_gap"].values())
    kinds = {v["kind"] for v in results["tasks"].values()}
    assert kinds == {"physiology", "anatomy"}
    for name, task in results["tasks"].items():
        assert task["metric"] in {"auroc", "f1", "dice", "iou"}, name
        for enc in ("random", "mae", "pacx"):
            assert _finite(task[enc]["mean"]), (name, enc)
            assert len(task[enc]["ci"]) == 2
        assert 0.0 <= task["p_value"] <= 1.0
    assert set(results["low_data"]) == {"0.1", "1.0"}
    for by_task in results["low_data"].values():
        for row in by_task.values():
            assert _finite(row["mae"]) and _finite(row["pacx"])
    assert set(results["alignment"]) == {"ecg", "labs"}
    assert all(_finite(v["pacx"]) and _finite(v["mae"]) for v in results["alignment"].values())
    assert {"full_objective", "regression_only", "shuffled_teachers"} <= set(results["ablations"])
    for task in ("reduced_ef", "fluid_overload", "nodule"):
        assert _finite(results["tasks"][task]["shuffled_teachers"]["mean"])
        assert 0.0 <= results["tasks"][task]["p_value_control"] <= 1.0
    assert {"random", "mae", "pacx", "pixels"} <= set(results["latent_readout"])
    for readout in results["latent_readout"].values():
        assert {"ctr", "effusion", "haze"} <= set(readout)
        assert all(_finite(r2) and r2 <= 1.0 for r2 in readout.values())
    assert len(results["claims"]) == 6 and any("control" in c["claim"] for c in results["claims"])
    text = (out / "results.md").read_text()
    assert "## Main table" in text and "reduced_ef" in text
    assert text.index("## Setting checks") < text.index("## The paper's claims") < text.index("## Main table")
    for fig in results["figures"]["written"]:
        assert Path(fig).stat().st_size > 5_000
    assert {"training_distill.png", "training_variant_shuffled_teachers.png"} <= {
        Path(f).name for f in results["figures"]["written"]}


def test_exported_backbone_loads_into_timm(quick_runs):
    out = quick_runs.resumed
    cfg = json.loads((out / "backbones" / "pacx" / "config.json").read_text())
    model = timm.create_model(f"local-dir:{out / 'backbones' / 'pacx'}", pretrained=True)  # timm's hub layout
    size = timm.data.resolve_data_config({}, model=model)["input_size"][-1]
    with torch.no_grad():
        feats = model.eval()(torch.zeros(2, 3, size, size))
    assert size == cfg["model_args"]["img_size"] and feats.shape == (2, cfg["model_args"]["embed_dim"])
    # The stage skipped on resume must not have been retrained: the MAE weights predate the PaCX ones.
    assert (out / "backbones" / "mae" / "model.safetensors").stat().st_mtime <= (
        out / "backbones" / "pacx" / "model.safetensors").stat().st_mtime


@pytest.mark.skipif(not REAL, reason="sample data ../shared/data/montgomery not present")
def test_real_eval_rows(quick_runs):
    out = quick_runs.resumed
    real = _results(out)["real_data"]
    for key in ("tb_auroc", "lung_dice", "lung_iou"):
        assert set(real[key]) == {"random", "mae", "pacx"}
        assert all(0.0 <= v["mean"] <= 1.0 for v in real[key].values())
    assert "Montgomery" in (out / "results.md").read_text()


def test_evaluate_recipe_alone_writes_the_same_report(quick_runs, tmp_path):
    # Stage 3 alone, on a copy of the finished run so the other tests keep their results.
    out = quick_runs.uninterrupted
    copy = tmp_path / "run"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("results.*", "figures", "eval"))
    run_recipe(recipe_command("evaluate.py", copy), quick_runs.env)
    alone, full = _results(copy), _results(out)
    assert _numbers(alone) == _numbers(full)  # the variant rows and the control included
    assert {k: v for k, v in alone["timings"].items() if k != "evaluate"} == {
        k: v for k, v in full["timings"].items() if k != "evaluate"}
    assert alone["timings"].keys() == full["timings"].keys()
    strip = re.compile(r"\| evaluate \| [\d.]+ \|")  # the report prints the evaluation's own seconds
    assert strip.sub("", (copy / "results.md").read_text()) == strip.sub("", (out / "results.md").read_text())
    assert {Path(f).name for f in alone["figures"]["written"]} == {Path(f).name for f in full["figures"]["written"]}
