"""The examples in pacx's docstrings run and print what they show (one test per module)."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

import pacx


def _has_examples(name: str) -> bool:
    origin = importlib.util.find_spec(name).origin
    return origin is not None and ">>>" in Path(origin).read_text(encoding="utf-8")


MODULES = sorted(m.name for m in pkgutil.walk_packages(pacx.__path__, prefix="pacx.")
                 if not m.name.endswith("__main__") and _has_examples(m.name))
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example that writes a file writes it here
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in finder.find(module, name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed in {name} (see above)"
