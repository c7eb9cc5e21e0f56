"""Follows docs/adding_a_teacher.md literally, and runs its command end to end with three teachers.

The guide's fenced blocks carry a ``title="<path>"``: the teacher file must equal the real
file, the profile lines must be in ``pacx/pipeline/profiles.py``, the entry-point snippets must
register the external teacher shown, and the results excerpt must match what the guide's
command writes. The command runs once (a module-scoped fixture, a few minutes on a busy
machine); the end-to-end checks of ``results.json`` share that run.
"""

from __future__ import annotations

import ast
import configparser
import importlib
import inspect
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

import pacx.data
import pacx.teachers
from pacx.data.vitals import CHARTEVENTS_ITEMIDS, OMR_RESULT_NAMES
from pacx.io import save_safetensors
from pacx.nets import LabDAE
from pacx.pipeline.config import load_config
from pacx.pipeline.profiles import PROFILES
from pacx.teachers import get_teacher, list_teachers
from pacx.teachers.base import _REGISTRY

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "adding_a_teacher.md"
TEACHERS = ["ecg", "labs", "vitals"]
_FENCE = re.compile(r'^```(\w+)(?: title="([^"]+)")?\n(.*?)^```$', re.DOTALL | re.MULTILINE)
_NUMBER = "…"  # the excerpt's placeholder for a value


def _blocks(lang: str, title: str | None = None) -> list[str]:
    """The guide's fenced blocks of language ``lang`` with this ``title`` (None: untitled)."""
    return [body for lang_, title_, body in _FENCE.findall(GUIDE.read_text(encoding="utf-8"))
            if lang_ == lang and (title_ or None) == title]


def _block(lang: str, title: str | None = None) -> str:
    found = _blocks(lang, title)
    assert len(found) == 1, f"expected one {lang} block titled {title!r} in {GUIDE.name}, found {len(found)}"
    return found[0]


def _command_tokens() -> list[str]:
    lines = [line for line in _block("bash").splitlines() if line.strip()]
    assert len(lines) == 1, f"the guide's command block must hold one command, got {lines}"
    tokens = shlex.split(lines[0])
    assert tokens[:2] == ["python", "recipes/pacx_full.py"], tokens
    return tokens


def _command(out: Path) -> list[str]:
    """The guide's command with its ``--out`` pointed at ``out``, run by this interpreter."""
    tokens = _command_tokens()
    tokens[tokens.index("--out") + 1] = str(out)
    return [sys.executable, *tokens[1:]]


# ----------------------------------------------------------------------------------------------
# The blocks against the code
# ----------------------------------------------------------------------------------------------
def test_teacher_file_block_is_the_file() -> None:
    assert _block("python", "pacx/teachers/vitals.py") == (ROOT / "pacx" / "teachers" / "vitals.py").read_text()


def test_profile_blocks_are_in_the_profiles() -> None:
    source = (ROOT / "pacx" / "pipeline" / "profiles.py").read_text()
    blocks = _blocks("python", "pacx/pipeline/profiles.py")
    assert len(blocks) == 2 and all(block in source for block in blocks), blocks
    assert all("vitals" in PROFILES[name]["teachers"] for name in PROFILES)  # inherited by every profile


def test_the_command_configures_three_teachers() -> None:
    tokens = _command_tokens()
    assert tokens[tokens.index("--set") + 1] == "distill.teachers=[ecg,labs,vitals]"
    cfg = load_config(tokens[tokens.index("--profile") + 1], overrides=[tokens[tokens.index("--set") + 1]])
    assert cfg["profile"] == "quick" and cfg["distill"]["teachers"] == TEACHERS
    net = get_teacher("vitals", cfg["teachers"]["vitals"]).build(ROOT)
    assert net.latent_dim == cfg["teachers"]["vitals"]["latent_dim"]


def test_itemid_table_is_the_extraction() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    rows = [(int(i), v) for i, v in re.findall(r"^\| (\d{6}) \| `(\w+)` \|", text, re.MULTILINE)]
    assert rows == [(itemid, vital) for itemid, (vital, _) in CHARTEVENTS_ITEMIDS.items()]
    for name in (n for names in OMR_RESULT_NAMES.values() for n in names):
        assert f"`{name}`" in text, name


def test_extraction_snippet_calls_the_real_functions() -> None:
    tree = ast.parse(_block("python"))
    imported = {alias.asname or alias.name: getattr(importlib.import_module(node.module), alias.name)
                for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
             and node.func.id in imported]
    assert {c.func.id for c in calls} == {"extract_admission_vitals", "write_vitals_arrays"}
    for call in calls:  # the arguments as written bind to the function's signature
        inspect.signature(imported[call.func.id]).bind(*call.args, **{k.arg: k.value for k in call.keywords})
    assert all(getattr(pacx.data, name) is obj for name, obj in imported.items())


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The guide's external package, installed as its setup.cfg says: a dist-info with the entry point."""
    ini = configparser.ConfigParser()
    ini.read_string(_block("ini", "setup.cfg"))
    entries = dict(line.split(" = ") for line in ini["options.entry_points"]["pacx.teachers"].strip().splitlines())
    toml = tomllib.loads(_block("toml", "pyproject.toml"))
    assert toml["project"]["entry-points"]["pacx.teachers"] == entries == {"spirometry": "pacx_spirometry.teacher"}
    (tmp_path / "pacx_spirometry").mkdir()
    (tmp_path / "pacx_spirometry" / "__init__.py").write_text("")
    (tmp_path / "pacx_spirometry" / "teacher.py").write_text(_block("python", "pacx_spirometry/teacher.py"))
    dist = tmp_path / "pacx_spirometry-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pacx-spirometry\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[pacx.teachers]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    _REGISTRY.pop("spirometry", None)
    for module in [m for m in sys.modules if m.startswith("pacx_spirometry")]:
        del sys.modules[module]


def test_entry_point_registers_the_external_teacher(installed_plugin: Path) -> None:
    assert "spirometry" not in list_teachers()
    importlib.reload(pacx.teachers)  # what importing pacx.teachers does in a fresh process
    assert "spirometry" in list_teachers() and {"ecg", "labs", "vitals"} <= set(list_teachers())
    plugin = get_teacher("spirometry")
    assert not plugin.trains and "--spirometry-checkpoint" in plugin.cli_options
    # Its load_weights reads the published encoder-only file, as the guide says.
    published = LabDAE(num_labs=4, latent_dim=32, hidden_dim=64)
    save_safetensors({f"encoder.{k}": v for k, v in published.encoder.state_dict().items()},
                     installed_plugin / "published.safetensors")
    net = plugin.build(installed_plugin)
    plugin.load_weights(net, installed_plugin / "published.safetensors")
    batch = {"spirometry": torch.rand(3, 4), "spirometry_observed": torch.ones(3, 4)}
    torch.testing.assert_close(plugin.frozen(net).embed(batch), published.encode(batch["spirometry"],
                                                                                 batch["spirometry_observed"]))


# ----------------------------------------------------------------------------------------------
# The command, end to end
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def guide_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("guide_run") / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(_command(out), cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out


def test_results_have_the_three_teachers(guide_run: Path) -> None:
    results = json.loads((guide_run / "results.json").read_text())
    assert results["config"]["distill"]["teachers"] == TEACHERS
    assert set(results["alignment"]) == set(TEACHERS)
    assert all(math.isfinite(v) for v in results["alignment"]["vitals"].values())
    assert {f"{t}_only" for t in TEACHERS} <= set(results["ablations"])
    detail = results["setting_checks"]["teachers"]["detail"]
    assert detail and all(set(d["teachers"]) == set(TEACHERS) for d in detail.values()), detail
    done = json.loads((guide_run / "teacher_vitals" / "done.json").read_text())
    latent = PROFILES["quick"]["teachers"]["vitals"]["latent_dim"]
    assert done["embed_dim"] == latent and done["steps"] > 0 and math.isfinite(done["final_loss"])
    assert np.load(guide_run / "teachers" / "test" / "vitals.npy").shape[1] == latent


def test_results_excerpt_matches_the_run(guide_run: Path) -> None:
    lines = (guide_run / "results.md").read_text(encoding="utf-8").splitlines()
    position = 0
    for wanted in _block("text", "results.md (excerpt)").splitlines():
        pattern = re.compile(".+?".join(re.escape(part) for part in wanted.split(_NUMBER)))
        found = next((i for i in range(position, len(lines)) if pattern.fullmatch(lines[i])), None)
        assert found is not None, f"no line of results.md after line {position} matches {wanted!r}"
        position = found + 1
