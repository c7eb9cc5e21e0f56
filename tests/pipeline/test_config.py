from __future__ import annotations

import json

import pytest
import yaml

from pacx.nets import LOSS_WEIGHT_PRESETS
from pacx.pipeline import PROFILES, config_hash, get_profile, load_config, merge_config
from pacx.pipeline.schema import ConfigError


def test_profiles_share_one_schema():
    keys = {name: sorted(p) for name, p in PROFILES.items()}
    assert all(k == keys["cpu"] for k in keys.values())
    for section in PROFILES["cpu"]:
        if isinstance(PROFILES["cpu"][section], dict):
            for name in PROFILES:
                assert sorted(PROFILES[name][section]) == sorted(PROFILES["cpu"][section]), (name, section)


def test_paper_profile_values_follow_the_reference():
    p = get_profile("paper")
    assert p["mae"]["preset"] == "mae_vit_base_patch16" and p["mae"]["mask_ratio"] == 0.90
    d = p["distill"]
    assert (d["lora"]["r"], d["lora"]["alpha"], d["lora"]["dropout"]) == (8, 16, 0.1)
    assert d["lora"]["targets"] == ["qkv", "fc1", "fc2"]
    assert (d["shared_dim"], d["label_smoothing"], d["temperature"]) == (256, 0.02, 0.07)
    assert LOSS_WEIGHT_PRESETS[d["loss_weights"]] == (0.5, 1.0) and d["lambda_c"] is d["lambda_r"] is None
    assert (d["batch_size"], d["lr"], d["epochs"]) == (500, 1e-4, 50)
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


# --- validation of the resolved configuration (pacx.pipeline.schema) --------------------------------


@pytest.mark.parametrize("override, key, expected", [
    ("distill.epochs=three", "distill.epochs", "an integer"),
    ("distill=5", "distill", "a mapping"),
    ("distill.tuning=lorax", "distill.tuning", "one of ['lora', 'last_n_blocks', 'full']"),
    ("distill.export=last", "distill.export", "one of ['best', 'final']"),
    ("data.source=mimic", "data.source", "one of ['synthetic', 'symile']"),
    ("distill.teachers=[ecg, eeg]", "distill.teachers[1]", "a registered teacher"),
    ("distill.epochs=0", "distill.epochs", ">= 1"),
    ("mae.batch_size=-4", "mae.batch_size", ">= 1"),
    ("teachers.labs.corruption_prob=1.5", "teachers.labs.corruption_prob", "<= 1"),
    ("distill.lora.dropout=-0.1", "distill.lora.dropout", ">= 0"),
    ("mae.mask_ratio=1.0", "mae.mask_ratio", "< 1"),
    ("trainer.compile=1", "trainer.compile", "true/false"),
    ("eval.seeds=[]", "eval.seeds", "a non-empty list"),
    ("eval.low_data_fractions=[0.1, 2]", "eval.low_data_fractions", "<= 1"),
    ("variants=[nope]", "variants", "unknown Stage-2 variant 'nope'"),
    ("distill.lr=fast", "distill.lr", "a number"),
])
def test_bad_values_are_named_with_what_was_expected(override, key, expected):
    with pytest.raises(ConfigError) as info:
        load_config("quick", overrides=[override])
    assert info.value.key == key and expected in str(info.value)


def test_values_are_normalised():
    # YAML 1.1 reads 1e-4 as a string; an integer is a number too.
    cfg = load_config("quick", overrides=["distill.lr=1e-4", "mae.arch.mlp_ratio=2", "eval.low_data_fractions=[0.5, 1]"])
    assert cfg["distill"]["lr"] == 1e-4 and isinstance(cfg["mae"]["arch"]["mlp_ratio"], float)
    assert cfg["eval"]["low_data_fractions"] == [0.5, 1.0]
    assert load_config("paper", updates={"data": {"root": "/data"}})["mae"]["arch"] is None


def test_every_profile_passes_its_own_schema():
    for name in PROFILES:
        updates = {"data": {"root": "/data"}} if PROFILES[name]["data"]["source"] == "symile" else None
        assert load_config(name, updates=updates)["profile"] == name


def test_symile_needs_a_root():
    with pytest.raises(ConfigError, match="data.root: .*--data-root"):
        load_config("paper")


def test_yaml_errors_name_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("distill:\n  epochs: [3\n")
    with pytest.raises(ValueError, match="broken.yaml: not valid YAML/JSON: line 3, column 1: expected"):
        load_config("quick", path)
    with pytest.raises(ValueError, match="--set distill.epochs=\\[3: the value is not valid YAML"):
        load_config("quick", overrides=["distill.epochs=[3"])
    path.write_text("distill:\n  epochs: three\n")
    with pytest.raises(ConfigError, match="distill.epochs: expected an integer, got 'three'"):
        load_config("quick", path)


def test_printed_config_loads_back(tmp_path):
    cfg = load_config("quick", overrides=["distill.epochs=4"], updates={"seed": 3})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert load_config("cpu", path) == cfg
