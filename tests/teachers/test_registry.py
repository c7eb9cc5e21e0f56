"""Tests for pacx.teachers: the plug-in registry, and that only a teacher's own files name its modality."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from torch import nn

from pacx.teachers import TeacherPlugin, get_teacher, list_teachers, register_teacher
from pacx.teachers.base import _REGISTRY

PACKAGE = Path(__file__).resolve().parents[2] / "pacx"

# A teacher's own files: its plug-in, its network, its data reader and the synthetic generator
# that simulates it. The profiles hold one configuration line per teacher.
TEACHER_FILES = {
    "teachers/ecg.py", "teachers/labs.py", "teachers/vitals.py", "teachers/_masked_dae.py",
    "nets/net1d.py", "nets/lab_dae.py", "nets/teachers.py",
    "data/ecg.py", "data/labs.py", "data/vitals.py", "data/symile.py", "data/__init__.py",
    "pipeline/profiles.py",
}
MODALITY_WORDS = re.compile(r"(?<![A-Za-z])(ecg|labs|vitals)(?![A-Za-z])", re.IGNORECASE)


class _Toy(TeacherPlugin):
    modality = "a toy"

    def build(self, root):
        return nn.Linear(2, 2)


@pytest.fixture
def toy_name():
    register_teacher("toy_plugin_test")(_Toy)
    yield "toy_plugin_test"
    _REGISTRY.pop("toy_plugin_test", None)


def test_builtin_teachers_are_registered() -> None:
    assert {"ecg", "labs"} <= set(list_teachers())
    assert list_teachers() == sorted(list_teachers())
    labs = get_teacher("labs", {"latent_dim": 8, "hidden_dim": 16, "corruption_prob": 0.1})
    net = labs.build(Path("."))
    assert labs.frozen(net).embed_dim == 8 and labs.trains and labs.name == "labs"
    assert "--ecgfounder-checkpoint" in get_teacher("ecg").cli_options


def test_register_and_get(toy_name: str) -> None:
    plugin = get_teacher(toy_name, {"x": 1})
    assert isinstance(plugin, _Toy) and plugin.section == {"x": 1} and plugin.name == toy_name
    assert not plugin.trains  # no loss(): a teacher that only loads weights
    with pytest.raises(NotImplementedError, match="checkpoint"):
        plugin.loss(nn.Linear(2, 2), {})


def test_register_rejects_bad_use(toy_name: str) -> None:
    with pytest.raises(ValueError, match="already"):
        register_teacher(toy_name)(type("Other", (TeacherPlugin,), {}))
    register_teacher(toy_name)(_Toy)  # re-registering the same class is a no-op
    with pytest.raises(ValueError, match="TeacherPlugin subclass"):
        register_teacher("not_a_plugin")(nn.Linear)
    for bad in ("", "has space", "a/b", "1abc", 3):
        with pytest.raises(ValueError, match="identifier"):
            register_teacher(bad)
    with pytest.raises(ValueError, match=r"unknown teacher 'nope'.*'ecg'.*'labs'"):
        get_teacher("nope")
    with pytest.raises(ValueError, match="mapping"):
        get_teacher("labs", ["not", "a", "mapping"])


def _code_words(tree: ast.AST) -> set[str]:
    """Identifiers and string constants of a module, docstrings excluded."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    words = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.add(node.id)
        elif isinstance(node, ast.Attribute):
            words.add(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            words.add(node.name)
        elif isinstance(node, ast.arg):
            words.add(node.arg)
        elif isinstance(node, ast.alias):
            words.add(node.asname or node.name)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words.add(node.value)
    return words


def test_only_a_teachers_own_files_name_its_modality() -> None:
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in TEACHER_FILES or rel.startswith("data/synthetic/"):
            continue
        hits = sorted(w for w in _code_words(ast.parse(path.read_text())) if MODALITY_WORDS.search(w))
        if hits:
            offenders[rel] = hits
    assert not offenders, f"modality names outside the teachers' own files: {offenders}"


def test_the_grep_catches_a_modality_name(tmp_path: Path) -> None:
    code = '"""Docstrings may say ecg."""\n# comments may say labs\nx = {"ecg": 1}\n'
    assert any(MODALITY_WORDS.search(w) for w in _code_words(ast.parse(code)))
    assert not any(MODALITY_WORDS.search(w) for w in _code_words(ast.parse(code.replace('{"ecg": 1}', "1"))))
