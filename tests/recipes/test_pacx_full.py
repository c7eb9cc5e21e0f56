"""The quick profile end to end, interrupted after two stages and resumed.

One run is killed with SIGKILL once the lab teacher's stage has finished; rerunning the same
command must skip the finished stages and complete the rest. The finished run is then
checked: every results.json key the README promises, finite values, and a PaCX backbone that
plain timm loads.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch

from tests.utils import SHARED_DATA

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "pacx_full.py"


def _command(out: Path, real_eval: bool = False) -> list[str]:
    cmd = [sys.executable, str(RECIPE), "--profile", "quick", "--out", str(out), "--seed", "0"]
    return cmd + (["--real-eval"] if real_eval else [])


REAL = (SHARED_DATA / "montgomery").is_dir()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pacx_full")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(_command(out), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    marker = out / "teacher_labs" / "done.json"
    deadline = time.monotonic() + 600
    while not marker.exists():
        if first.poll() is not None:
            raise AssertionError("the first run ended before it could be interrupted:\n" + first.stdout.read().decode())
        if time.monotonic() > deadline:
            first.kill()
            raise AssertionError("teacher_labs stage did not finish within 600 s")
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    first.stdout.close()
    assert not (out / "results.json").exists()

    second = subprocess.run(_command(out, real_eval=REAL), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    return out, second.stdout


def test_resume_skips_finished_stages(finished_run):
    _, log = finished_run
    assert "mae: outputs for this configuration exist" in log
    assert "teacher_labs: outputs for this configuration exist" in log
    assert "distill: running" in log


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def test_results_json_has_the_promised_keys(finished_run):
    out, _ = finished_run
    results = json.loads((out / "results.json").read_text())
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
    assert set(results["latent_readout"]) == {"random", "mae", "pacx", "pixels"}
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


def test_exported_backbone_loads_into_timm(finished_run):
    out, _ = finished_run
    cfg = json.loads((out / "backbones" / "pacx" / "config.json").read_text())
    model = timm.create_model(f"local-dir:{out / 'backbones' / 'pacx'}", pretrained=True)  # timm's hub layout
    size = timm.data.resolve_data_config({}, model=model)["input_size"][-1]
    with torch.no_grad():
        feats = model.eval()(torch.zeros(2, 3, size, size))
    assert size == cfg["model_args"]["img_size"] and feats.shape == (2, cfg["model_args"]["embed_dim"])
    # The stage skipped on resume must not have been retrained: the MAE weights predate the PaCX ones.
    assert (out / "backbones" / "mae" / "model.safetensors").stat().st_mtime <= (
        out / "backbones" / "pacx" / "model.safetensors").stat().st_mtime


@pytest.mark.skipif(not REAL, reason=f"sample data {SHARED_DATA / 'montgomery'} not present")
def test_real_eval_rows(finished_run):
    out, _ = finished_run
    real = json.loads((out / "results.json").read_text())["real_data"]
    for key in ("tb_auroc", "lung_dice", "lung_iou"):
        assert set(real[key]) == {"random", "mae", "pacx"}
        assert all(0.0 <= v["mean"] <= 1.0 for v in real[key].values())
    assert "Montgomery" in (out / "results.md").read_text()


def test_evaluate_recipe_reports_the_stage1_mask_ratio(finished_run, tmp_path):
    # Stage 3 alone, on a copy of the finished run so the other tests keep their results.json.
    out, _ = finished_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("results.*", "figures"))
    cmd = [sys.executable, str(ROOT / "recipes" / "evaluate.py"), "--profile", "quick", "--out", str(copy), "--seed", "0"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    results = json.loads((copy / "results.json").read_text())
    assert results["mask_ratio"] == pytest.approx(0.9)
    assert "MAE mask ratio used in Stage 1: 0.9." in (copy / "results.md").read_text()
    assert results["tasks"]["reduced_ef"]["pacx"]["mean"] == pytest.approx(
        json.loads((out / "results.json").read_text())["tasks"]["reduced_ef"]["pacx"]["mean"])
