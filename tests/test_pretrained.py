"""The shipped Stage-1 prior: its file matches its recorded hash and loads strictly into the cpu profile's MAE."""

from __future__ import annotations

import shutil

import pytest
import torch

import pacx.pretrained as pretrained
from pacx.io import load_safetensors
from pacx.nets import load_mae_checkpoint
from pacx.pipeline import get_profile
from recipes.pretrain_mae import build_mae


def test_cpu_profile_loads_the_shipped_prior() -> None:
    assert get_profile("cpu")["mae"]["checkpoint"] == "prior:cpu64"
    assert "cpu64" in pretrained.list_priors()


def test_shipped_prior_matches_its_hash_and_loads_strictly() -> None:
    path = pretrained.resolve_mae_checkpoint("prior:cpu64")  # checks the SHA-256 first
    meta = pretrained.prior_metadata("cpu64")
    cfg = {**get_profile("cpu"), "seed": 0}
    mae = build_mae(cfg)
    assert meta["mae_config"] == mae.config  # the architecture the profile builds
    report = load_mae_checkpoint(mae, path)  # strict: no missing or unexpected key allowed
    assert not report.missing and not report.unexpected
    state = load_safetensors(path)
    assert all(torch.equal(state[k], v) for k, v in mae.state_dict().items())
    corpus = meta["corpus"]
    assert corpus["kind"] == "prior" and corpus["split_sizes"]["train"] >= 10 * 2000  # 10x the paired training set
    assert meta["training"]["steps"] > 0 and meta["training"]["final_loss"] > 0


def test_a_corrupt_prior_is_refused(tmp_path, monkeypatch) -> None:
    for suffix in (".safetensors", ".json"):
        shutil.copy(pretrained._HERE / f"mae_prior_cpu64{suffix}", tmp_path / f"mae_prior_cpu64{suffix}")
    weights = tmp_path / "mae_prior_cpu64.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    monkeypatch.setattr(pretrained, "_HERE", tmp_path)
    with pytest.raises(ValueError, match="does not match the recorded"):
        pretrained.resolve_mae_checkpoint("prior:cpu64")
    with pytest.raises(ValueError, match="no shipped MAE prior named 'nope'"):
        pretrained.resolve_mae_checkpoint("prior:nope")
