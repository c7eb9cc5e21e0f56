"""The quick pipeline under ``torchrun --nproc_per_node 2`` (gloo, CPU) gives one process's results.

Both runs start from a copy of a finished quick run with its data, MAE and trained teachers
(those stages are skipped), and run the teacher cache, Stage 2 and the evaluation with the
same configuration: one in a single process, one under torchrun with two ranks.

What must be equal, and why:

* the teacher cache: each rank embeds its share of the rows with the same frozen teacher, rank 0
  joins them; equal up to float rounding (the batches are cut at other rows);
* the random-init and MAE rows of the report: the same encoders on the same probe data,
  evaluated on rank 0 alone; equal exactly;
* Stage 2 and the PaCX rows: DDP over the same global batches (each rank half of each batch,
  InfoNCE negatives gathered from every rank, gradients averaged) is the single-process
  optimisation, provided nothing random is drawn per rank; augmentation and dropout are
  therefore off here. Equal up to float reduction order, which the probes' AUROCs absorb.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from .conftest import recipe_command, run_recipe

# Deterministic Stage 2 (nothing drawn per rank) and a shorter evaluation.
OVERRIDES = ("variants=[]", "distill.augment=false", "distill.lora.dropout=0.0", "distill.head_dropout=0.0",
             "eval.seeds=[0]", "eval.bootstrap_resamples=20", "eval.low_data_fractions=[1.0]", "eval.seg_epochs=1",
             "eval.segmentation_sizes=[100, 50, 100]")
_KEEP_OUT = {"teachers", "distill", "variant_shuffled_teachers", "variant_regression_only", "eval", "figures",
             "results.json", "results.md", "log.txt", "pacx", "shuffled_teachers", "regression_only"}


def _copy_stage1(src: Path, dst: Path) -> Path:
    """The finished run's data, MAE and trained teachers, without the cache, Stage 2 or the report."""
    shutil.copytree(src, dst, ignore=lambda d, names: [n for n in names if n in _KEEP_OUT])
    return dst


@pytest.fixture(scope="module")
def two_runs(quick_runs, tmp_path_factory):
    base = tmp_path_factory.mktemp("distributed")
    single = _copy_stage1(quick_runs.uninterrupted, base / "single")
    ranks = _copy_stage1(quick_runs.uninterrupted, base / "ranks")
    single_log = run_recipe(recipe_command("pacx_full.py", single, overrides=OVERRIDES), quick_runs.env)
    cmd = recipe_command("pacx_full.py", ranks, overrides=OVERRIDES)
    cmd = ["torchrun", "--standalone", "--nproc_per_node", "2", *cmd[1:]]
    ranks_log = run_recipe(cmd, quick_runs.env)
    return single, ranks, single_log, ranks_log


@pytest.mark.distributed
def test_ranks_share_the_teacher_cache(two_runs):
    single, ranks, _, log = two_runs
    assert "[pacx] teachers: ecg on train (300 rows, rows 0-150 on this rank)" in log
    assert "[rank 1]" not in log  # rank 1 logs warnings only, and there are none
    for split in ("train", "val", "test"):
        for name in ("ecg", "labs"):
            a, b = (np.load(r / "teachers" / split / f"{name}.npy") for r in (single, ranks))
            assert a.shape == b.shape and np.allclose(a, b, rtol=1e-5, atol=1e-6), (split, name)
    assert not list((ranks / "teachers").rglob("*.part"))


@pytest.mark.distributed
def test_ddp_stage2_equals_one_process(two_runs):
    single, ranks, _, _ = two_runs
    a, b = (load_file(r / "backbones" / "pacx" / "model.safetensors") for r in (single, ranks))
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4, worst
    assert json.loads((ranks / "distill" / "config.json").read_text())["resolved"]["world_size"] == 2


@pytest.mark.distributed
def test_results_equal_one_process(two_runs):
    single, ranks, _, _ = two_runs
    a, b = (json.loads((r / "results.json").read_text()) for r in (single, ranks))
    for task, entry in a["tasks"].items():
        for enc in ("random", "mae"):  # the same encoders: exactly the same numbers
            assert b["tasks"][task][enc] == entry[enc], (task, enc)
        assert b["tasks"][task]["pacx"]["mean"] == pytest.approx(entry["pacx"]["mean"], abs=5e-3), task
    assert b["setting_checks"]["prior"] == a["setting_checks"]["prior"]
    for enc in ("random", "mae", "pixels"):
        assert b["latent_readout"][enc] == a["latent_readout"][enc]
    for teacher, row in a["alignment"].items():
        assert b["alignment"][teacher]["pacx"] == pytest.approx(row["pacx"], abs=5e-3)
        assert b["alignment"][teacher]["mae"] == pytest.approx(row["mae"], abs=1e-6)  # cache rounding only
