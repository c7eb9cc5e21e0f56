"""The gpu and prior profiles at toy size on CPU: their architecture, and the in-run prior pretraining path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from pacx.pipeline import get_profile, pretraining_root
from recipes.pretrain_mae import build_mae

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_profile_is_the_papers_patch_grid_at_vit_s() -> None:
    cfg = {**get_profile("gpu"), "seed": 0}
    mae = build_mae(cfg)
    enc = mae.encoder
    assert (enc.embed_dim, len(enc.blocks), enc.patch_embed.patch_size[0], mae.img_size) == (384, 12, 16, 224)
    assert enc.patch_embed.num_patches == 196 and round(196 * (1 - mae.mask_ratio)) == 20  # as ViT-B/16 at 224
    assert cfg["mae"]["corpus"]["n_train"] >= 100_000 and cfg["data"]["n_patients"] // 2 == 10_000
    mae.train()
    loss = mae(torch.randn(2, 3, 224, 224)).loss  # one training step at batch 2 on CPU
    loss.backward()
    assert torch.isfinite(loss) and enc.patch_embed.proj.weight.grad is not None


def test_prior_profile_pretrains_on_a_corpus_of_its_own(tmp_path) -> None:
    cfg = {**get_profile("prior"), "seed": 1000}
    cfg["mae"]["corpus"] = {"n_train": 40, "image_size": 32, "seed": 1000}
    cfg["data"]["cache_dir"] = str(tmp_path)
    root = pretraining_root(cfg, tmp_path)
    meta = json.loads((root / "cohort.json").read_text())
    assert meta["parameters"]["kind"] == "prior" and meta["splits"] == {"train": 40}
    assert (root / "data_npy" / "train" / "cxr_train.npy").is_file()


def test_gpu_profile_runs_stage1_in_the_run_at_toy_size(tmp_path) -> None:
    out = tmp_path / "run"
    toy_arch = ("mae.arch={img_size: 64, patch_size: 16, embed_dim: 32, depth: 1, num_heads: 2, decoder_embed_dim: 16,"
                " decoder_depth: 1, decoder_num_heads: 2, mlp_ratio: 4.0}")
    cmd = [sys.executable, str(ROOT / "recipes" / "pretrain_mae.py"), "--profile", "gpu", "--out", str(out),
           "--set", "data.n_patients=200", "--set", "data.image_size=32", "--set", "data.num_workers=0",
           "--set", "mae.corpus={n_train: 64, image_size: 32, seed: 1000}", "--set", "mae.epochs=1",
           "--set", "mae.batch_size=32", "--set", toy_arch, "--set", "mae.export_prior=toy"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    info = json.loads((out / "mae" / "done.json").read_text())
    assert info["steps"] == 2 and info["mask_ratio"] == 0.9  # 64 corpus images (rendered at 32 px, read at 64)
    record = json.loads((out / "prior" / "mae_prior_toy.json").read_text())
    assert record["corpus"]["kind"] == "prior" and record["training"]["steps"] == 2 and len(record["sha256"]) == 64
