"""Every recipe answers --help and rejects bad options with a clear message."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.py"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_help(recipe, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(recipe), "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(recipe), run_name="__main__")
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "usage:" in text and len(text) > 200


def test_symile_without_root_is_refused(monkeypatch):
    recipe = next(r for r in RECIPES if r.name == "pacx_full.py")
    monkeypatch.setattr(sys, "argv", [str(recipe), "--data", "symile"])
    with pytest.raises(ValueError, match="--data-root"):
        runpy.run_path(str(recipe), run_name="__main__")
