"""pacx.io: atomic writes that honour the umask, and errors that name the file."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from pacx.io import (
    atomic_write,
    load_safetensors,
    load_state_dict_file,
    make_temp_dir,
    read_csv,
    safe_torch_load,
    save_json,
    save_safetensors,
)


@pytest.fixture
def umask():
    """Set a process umask for one test and restore the previous one afterwards."""
    previous = os.umask(0o022)
    os.umask(previous)

    def set_umask(value: int) -> None:
        os.umask(value)

    yield set_umask
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_files_get_the_mode_plain_open_would_give(tmp_path, umask, mask):
    umask(mask)
    with open(tmp_path / "plain.txt", "w") as fh:
        fh.write("x")
    save_json({"a": 1}, tmp_path / "sub" / "cfg.json")
    save_safetensors({"w": torch.ones(2)}, tmp_path / "w.safetensors")
    atomic_write(tmp_path / "raw.bin", lambda tmp: open(tmp, "wb").close())
    expected = 0o666 & ~mask
    assert _mode(tmp_path / "plain.txt") == expected
    for name in ("sub/cfg.json", "w.safetensors", "raw.bin"):
        assert _mode(tmp_path / name) == expected, name
    assert _mode(tmp_path / "sub") == 0o777 & ~mask  # created parents too
    assert not [p for p in tmp_path.rglob("*.tmp")]  # no temporary file left behind


def test_make_temp_dir_honours_umask_and_is_unique(tmp_path, umask):
    umask(0o027)
    first = make_temp_dir(tmp_path, prefix="bb.tmp-")
    second = make_temp_dir(tmp_path, prefix="bb.tmp-")
    assert first != second and first.parent == tmp_path and first.name.startswith("bb.tmp-")
    assert _mode(first) == 0o777 & ~0o027


def test_atomic_write_failure_leaves_no_file(tmp_path):
    def fail(tmp: str) -> None:
        with open(tmp, "w") as fh:
            fh.write("half")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError, match="writer failed"):
        atomic_write(tmp_path / "x.json", fail)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_weight_files_are_named(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="model.safetensors"):
        load_safetensors(bad)
    with pytest.raises(ValueError, match="model.safetensors"):
        load_state_dict_file(bad)
    torch.save({"a": torch.ones(2)}, tmp_path / "x.pt")
    with open(tmp_path / "x.pt", "r+b") as fh:
        fh.truncate(40)
    with pytest.raises(ValueError, match="x.pt"):
        safe_torch_load(tmp_path / "x.pt")


def test_read_csv_names_the_file(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match=r"labels file .*empty.csv is empty"):
        read_csv(tmp_path / "empty.csv", "labels file")
    (tmp_path / "quote.csv").write_text('a,b\n1,"2\n')
    with pytest.raises(ValueError, match=r"quote.csv cannot be read as CSV"):
        read_csv(tmp_path / "quote.csv")
    with pytest.raises(FileNotFoundError, match="absent.csv"):
        read_csv(tmp_path / "absent.csv")
    (tmp_path / "ok.csv").write_text("a,b\n1,2\n")
    assert read_csv(tmp_path / "ok.csv", nrows=0).columns.tolist() == ["a", "b"]
