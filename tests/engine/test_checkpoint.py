from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pacx.engine import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_weights,
    pack_state,
    remove_incomplete_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
    unpack_state,
)
from pacx.engine.seed import get_rng_state
from pacx.io import UnsafeCheckpointError, load_safetensors, safe_torch_load
from tests.engine import _train_script

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------
# format


def test_pack_state_round_trip_keeps_types():
    opt = torch.optim.AdamW(nn.Linear(3, 2).parameters(), lr=0.1, betas=(0.9, 0.95))
    opt.zero_grad()
    sum(p.sum() for g in opt.param_groups for p in g["params"]).backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "rng": get_rng_state(), "nested": [(1, 2.5), {"a": None}]}
    structure, tensors = pack_state(state)
    import json

    back = unpack_state(json.loads(json.dumps(structure)), tensors)
    assert back["nested"] == [(1, 2.5), {"a": None}]
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)
    assert set(back["optimizer"]["state"]) == {0, 1}  # int keys survive JSON
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert back["rng"]["python"] == state["rng"]["python"]
    np.testing.assert_array_equal(back["rng"]["numpy"][1], state["rng"]["numpy"][1])
    with pytest.raises(TypeError, match="without pickle"):
        pack_state({"bad": object()})


def test_save_layout_latest_and_pruning(tmp_path):
    model = nn.Linear(2, 2)
    for step in (1, 2, 3):
        meta = {"epoch": 0, "extra": {"m": 0.9}}
        save_checkpoint(tmp_path, step, model.state_dict(), {"step": step}, meta, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_2", "step_3"]
    assert (tmp_path / "latest").read_text().strip() == "step_3"
    ckpt = load_checkpoint(resolve_checkpoint(tmp_path))
    assert ckpt.step == 3 and ckpt.meta["extra"] == {"m": 0.9} and ckpt.trainer_state == {"step": 3}
    assert sorted(f.name for f in ckpt.path.iterdir()) == [
        "meta.json", "model.safetensors", "trainer_state.json", "trainer_state.safetensors"
    ]
    # a stale pointer (e.g. its folder deleted by hand) falls back to the newest complete one
    (tmp_path / "latest").write_text("step_99\n")
    assert latest_checkpoint(tmp_path).name == "step_3"


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    model = nn.Linear(3, 2)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model.state_dict(), {"step": step}, {"epoch": 0})
    weights = tmp_path / "step_3" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])  # a copy cut short: every file is still present
    with pytest.warns(UserWarning, match=r"step_3 is incomplete or damaged \(model.safetensors: \d+ bytes"):
        assert latest_checkpoint(tmp_path).name == "step_2"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_1", "step_2"]
    (tmp_path / "step_2" / "trainer_state.json").write_text('{"step": ')
    (tmp_path / "latest").unlink()  # no pointer: the newest folders are checked in turn
    with pytest.warns(UserWarning, match="is incomplete or damaged") as record:
        assert resolve_checkpoint(tmp_path).name == "step_1"
    assert sorted(Path(str(w.message).split()[1]).name for w in record) == ["step_2", "step_3"]
    with pytest.raises(FileNotFoundError, match="incomplete or damaged: model.safetensors"):
        resolve_checkpoint(tmp_path / "step_3")
    header = tmp_path / "step_1" / "model.safetensors"
    header.write_bytes(b"\x10" + header.read_bytes()[1:])  # a header length that runs past the file
    with pytest.warns(UserWarning):
        assert latest_checkpoint(tmp_path) is None


def test_tied_weights_are_saved(tmp_path):
    emb = nn.Embedding(4, 3)
    head = nn.Linear(3, 4, bias=False)
    head.weight = emb.weight  # shared storage: safetensors would refuse it uncopied
    model = nn.ModuleDict({"emb": emb, "head": head})
    path = save_checkpoint(tmp_path, 0, model.state_dict())
    assert torch.equal(load_checkpoint(path).model_state["head.weight"], emb.weight)


# ----------------------------------------------------------------------------------------
# safe loading


class _CodeRunningPickle:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        # Unpickling this would call open(marker, "w") and create the file.
        return (open, (str(self.marker), "w"))


def test_code_pickles_are_refused(tmp_path):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as fh:
        pickle.dump({"weight": _CodeRunningPickle(marker)}, fh, protocol=2)
    with pytest.raises(UnsafeCheckpointError, match="could execute code"):
        safe_torch_load(evil)
    with pytest.raises(UnsafeCheckpointError):
        load_weights(nn.Linear(2, 2), evil)
    assert not marker.exists()

    # The same payload in place of a checkpoint's trainer state: refused, nothing runs.
    ckpt = save_checkpoint(tmp_path / "ckpts", 1, nn.Linear(2, 2).state_dict(), {"step": 1})
    (ckpt / "trainer_state.safetensors").write_bytes(evil.read_bytes())
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        load_checkpoint(ckpt)
    assert not marker.exists()


def test_checkpoint_loading_never_unpickles(tmp_path, monkeypatch):
    model = nn.Linear(3, 1)
    opt = torch.optim.AdamW(model.parameters())
    path = save_checkpoint(tmp_path, 5, model.state_dict(), {"optimizer": opt.state_dict(), "rng": get_rng_state()})

    def forbidden(*args, **kwargs):
        raise AssertionError("checkpoint loading must not unpickle")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    ckpt = load_checkpoint(path)
    assert ckpt.step == 5 and "optimizer" in ckpt.trainer_state


def test_load_weights_from_third_party_torch_file(tmp_path):
    src = nn.Linear(3, 2)
    torch.save({"state_dict": {f"model.{k}": v for k, v in src.state_dict().items()}, "epoch": 3}, tmp_path / "x.ckpt")
    dst = nn.Linear(3, 2)
    load_weights(dst, tmp_path / "x.ckpt", prefix="model.")
    assert torch.equal(dst.weight, src.weight)


# ----------------------------------------------------------------------------------------
# crash safety: a real process killed mid-run and mid-save


def _start_script(out: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "tests.engine._train_script", "--out", str(out), *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def _run_in_process(out: Path, *args: str) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the script does, so kernels reduce in the same order
    try:
        return _train_script.main(["--out", str(out), *args])
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference_weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    result = _run_in_process(out)
    assert result["step"] == 18
    return load_safetensors(out / "final" / "model.safetensors")


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path, reference_weights):
    out = tmp_path / "run"
    out.mkdir()
    # 2 micro-batches per step: call 19 is inside step 10, after the step-8 checkpoint (mid epoch 2).
    proc = _start_script(out, "--hang-at-call", "19")
    try:
        deadline = time.monotonic() + 120
        while not (out / "HANGING").exists():
            if proc.poll() is not None:
                pytest.fail(f"training script exited early:\n{proc.stdout.read().decode()}")
            if time.monotonic() > deadline:
                pytest.fail("training script did not reach the hang point in time")
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    latest = resolve_checkpoint("latest", out)
    meta = load_checkpoint(latest).meta
    assert latest.name == "step_8" and (meta["epoch"], meta["batch_in_epoch"]) == (1, 4)
    assert meta["extra"] == {"mask_ratio": 0.9}

    result = _run_in_process(out, "--resume", "latest")
    assert result["step"] == 18
    assert json.loads((out / "config.json").read_text())["resolved"]["resumed_from"] == str(latest)
    _assert_same_weights(load_safetensors(out / "final" / "model.safetensors"), reference_weights)
    with open(out / "logs" / "metrics.csv") as fh:
        steps = [int(row["step"]) for row in csv.DictReader(fh)]
    assert steps == list(range(1, 19))  # rows of the killed run past step 8 were replaced


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, reference_weights):
    out = tmp_path / "run"
    proc = _start_script(out, "--crash-in-save-at", "12")
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 3, stdout.decode()
    ckpt_dir = out / "checkpoints"
    leftovers = [p.name for p in ckpt_dir.iterdir() if p.name.startswith("step_12")]
    assert len(leftovers) == 1 and ".tmp-" in leftovers[0]  # half-written, never published
    assert (ckpt_dir / "latest").read_text().strip() == "step_8"
    previous = load_checkpoint(resolve_checkpoint("latest", out))
    assert previous.step == 8 and previous.trainer_state["step"] == 8

    result = _run_in_process(out, "--resume", "latest")
    assert result["step"] == 18
    assert not any(".tmp-" in p.name for p in ckpt_dir.iterdir())  # cleaned on restart
    _assert_same_weights(load_safetensors(out / "final" / "model.safetensors"), reference_weights)


def test_remove_incomplete_checkpoints(tmp_path):
    (tmp_path / "step_3.tmp-abc").mkdir()
    save_checkpoint(tmp_path, 2, nn.Linear(1, 1).state_dict())
    removed = remove_incomplete_checkpoints(tmp_path)
    assert [p.name for p in removed] == ["step_3.tmp-abc"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_2"]


def test_checkpoint_and_final_folders_follow_the_umask(tmp_path):
    import os

    from pacx.engine.checkpoint import save_checkpoint, save_final

    previous = os.umask(0o022)
    try:
        ckpt = save_checkpoint(tmp_path / "checkpoints", 1, {"w": torch.zeros(2)})
        final = save_final(tmp_path / "final", {"w": torch.zeros(2)}, {"step": 1})
    finally:
        os.umask(previous)
    for folder in (ckpt, final):
        assert (folder.stat().st_mode & 0o777) == 0o755, folder
        assert ((folder / "model.safetensors").stat().st_mode & 0o777) == 0o644
