"""Every recipe answers --help and rejects bad options with a clear message."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest
import yaml

import pacx

RECIPES = sorted(p for p in (Path(__file__).resolve().parents[2] / "recipes").glob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_help(recipe, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(recipe), "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(recipe), run_name="__main__")
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "usage:" in text and len(text) > 200


def test_symile_without_root_is_refused(monkeypatch, capsys):
    recipe = next(r for r in RECIPES if r.name == "pacx_full.py")
    monkeypatch.setattr(sys, "argv", [str(recipe), "--data", "symile"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(recipe), run_name="__main__")
    assert exit_info.value.code == 2 and "--data-root" in capsys.readouterr().err


def _main(recipe_name: str, argv: list[str], monkeypatch) -> int:
    recipe = next(r for r in RECIPES if r.name == recipe_name)
    monkeypatch.setattr(sys, "argv", [str(recipe), *argv])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(recipe), run_name="__main__")
    return exit_info.value.code


@pytest.mark.parametrize("argv, message", [
    (["--set", "distill.epochs=three"], "distill.epochs: expected an integer, got 'three'"),
    (["--set", "distill=5"], "distill: expected a mapping, got 5"),
    (["--set", "distill.teachers=[ecg, eeg]"], "distill.teachers[1]: expected a registered teacher"),
    (["--set", "trainer.amp=fp8"], "trainer.amp: expected one of"),
])
def test_bad_configuration_exits_2_naming_the_key(argv, message, monkeypatch, capsys, tmp_path):
    # Refused before any stage runs: nothing is written.
    out = tmp_path / "run"
    assert _main("pacx_full.py", ["--profile", "quick", "--out", str(out), *argv], monkeypatch) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_print_config_prints_the_validated_configuration(monkeypatch, capsys, tmp_path):
    argv = ["--profile", "quick", "--set", "distill.lr=1e-4", "--seed", "3", "--out", str(tmp_path / "run"),
            "--print-config"]
    assert _main("distill.py", argv, monkeypatch) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["profile"] == "quick" and cfg["seed"] == 3 and cfg["distill"]["lr"] == 1e-4
    assert not (tmp_path / "run").exists()


def test_version(monkeypatch, capsys):
    assert _main("evaluate.py", ["--version"], monkeypatch) == 0
    assert pacx.__version__ in capsys.readouterr().out


@pytest.mark.parametrize("recipe", ["evaluate.py", "cache_teachers.py"])
def test_stages_that_do_not_train_take_no_resume(recipe, monkeypatch, capsys):
    # They are restartable as they are; a --resume they would ignore is refused.
    assert _main(recipe, ["--profile", "quick", "--resume", "latest"], monkeypatch) == 2
    assert "unrecognized arguments: --resume" in capsys.readouterr().err


def test_multi_stage_recipes_resume_only_from_latest(monkeypatch, capsys):
    assert _main("pacx_full.py", ["--profile", "quick", "--resume", "some/step_3"], monkeypatch) == 2
    assert "invalid choice: 'some/step_3'" in capsys.readouterr().err
