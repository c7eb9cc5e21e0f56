from __future__ import annotations

import json

import pytest

from pacx.pipeline import PROFILES, config_hash, get_profile, load_config, merge_config


def test_profiles_share_one_schema():
    keys = {name: sorted(p) for name, p in PROFILES.items()}
    assert keys["quick"] == keys["cpu"] == keys["paper"]
    for section in PROFILES["cpu"]:
        if isinstance(PROFILES["cpu"][section], dict):
            assert sorted(PROFILES["quick"][section]) == sorted(PROFILES["paper"][section]), section


def test_paper_profile_values_follow_the_reference():
    p = get_profile("paper")
    assert p["mae"]["preset"] == "mae_vit_base_patch16" and p["mae"]["mask_ratio"] == 0.90
    d = p["distill"]
    assert (d["lora"]["r"], d["lora"]["alpha"], d["lora"]["dropout"]) == (8, 16, 0.1)
    assert d["lora"]["targets"] == ["qkv", "fc1", "fc2"]
    assert (d["shared_dim"], d["label_smoothing"], d["temperature"]) == (256, 0.02, 0.07)
    assert (d["lambda_c"], d["lambda_r"], d["batch_size"], d["lr"], d["epochs"]) == (0.5, 1.0, 500, 1e-4, 50)
    assert p["data"]["source"] == "symile" and p["data"]["image_size"] == 224


def test_get_profile_returns_a_copy():
    p = get_profile("quick")
    p["mae"]["epochs"] = 999
    assert get_profile("quick")["mae"]["epochs"] != 999


def test_unknown_profile_is_an_error():
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        get_profile("fast")


def test_overrides_and_config_file(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("profile: quick\ndistill:\n  epochs: 7\n  lora:\n    r: 4\n")
    cfg = load_config("cpu", path, ["distill.lr=0.5", "eval.seeds=[3, 4]"])
    assert cfg["profile"] == "quick"
    assert cfg["distill"]["epochs"] == 7 and cfg["distill"]["lora"]["r"] == 4
    assert cfg["distill"]["lora"]["alpha"] == get_profile("quick")["distill"]["lora"]["alpha"]
    assert cfg["distill"]["lr"] == 0.5 and cfg["eval"]["seeds"] == [3, 4]
    json_path = tmp_path / "cfg.json"
    json_path.write_text(json.dumps({"mae": {"epochs": 2}}))
    assert load_config("quick", json_path)["mae"]["epochs"] == 2


def test_unknown_keys_and_malformed_overrides_are_named():
    with pytest.raises(ValueError, match="distill.epoch"):
        load_config("quick", overrides=["distill.epoch=3"])
    with pytest.raises(ValueError, match="section.key=value"):
        load_config("quick", overrides=["distill"])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config("quick", "nope.yaml")
    with pytest.raises(ValueError, match="unknown configuration key 'x'"):
        merge_config({"a": 1}, {"x": 2})


def test_config_hash_is_stable_and_sensitive():
    a = get_profile("quick")
    assert config_hash(a) == config_hash(get_profile("quick"))
    a["distill"]["epochs"] += 1
    assert config_hash(a) != config_hash(get_profile("quick"))
