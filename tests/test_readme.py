"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_readme_has_examples():
    assert BLOCKS


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code):
    exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})


def test_readme_commands_match_ci():
    ci = (README.parent / ".ci" / "run").read_text()
    test_line = next(line for line in README.read_text().splitlines() if "pytest" in line and "pip install" in line)
    command = test_line.split("#")[0].strip()
    assert command in ci
