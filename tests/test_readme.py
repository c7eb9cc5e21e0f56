"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_readme_has_examples():
    assert BLOCKS


@pytest.fixture
def finished_run_folder(tmp_path, monkeypatch):
    """A working directory holding what the README's examples read: an exported PaCX backbone."""
    from pacx.engine import export_backbone
    from pacx.nets import MaskedAutoencoderViT

    mae = MaskedAutoencoderViT(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                               decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    export_backbone(mae.encoder, tmp_path / "runs" / "pacx_full" / "backbones" / "pacx")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code, finished_run_folder):
    exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})


def test_readme_commands_match_ci():
    ci = (README.parent / ".ci" / "run").read_text()
    test_line = next(line for line in README.read_text().splitlines() if "pytest" in line and "pip install" in line)
    command = test_line.split("#")[0].strip()
    assert command in ci
