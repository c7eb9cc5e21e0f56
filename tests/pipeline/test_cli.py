"""run_stage: skip when done, resume a training stage from its own checkpoint, refuse another configuration's."""

from __future__ import annotations

import logging

import pytest
import torch

from pacx.engine.checkpoint import save_checkpoint
from pacx.pipeline import get_profile, mark_done, run_stage
from pacx.pipeline.cli import resume_point


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.setenv("PACX_CACHE_DIR", str(tmp_path / "timings"))  # stage timings stay in the test
    return {"profile": "quick", "seed": 0, **get_profile("quick")}


def _stage(cfg, out, resume=None):
    """A stage that records what it was given and marks itself done."""
    _stage.calls.append(resume)
    mark_done(out, "distill", cfg, {"seconds": 0.0})
    return {"resume": resume}


def test_resume_latest_continues_from_the_stage_checkpoint(cfg, tmp_path, caplog):
    _stage.calls = []
    caplog.set_level(logging.INFO, logger="pacx")
    # Never started: nothing to resume, the stage starts from step 0.
    assert resume_point(tmp_path, "distill", cfg, "latest") is None
    (tmp_path / "distill").mkdir()
    (tmp_path / "distill" / "started.json").write_text("{}")  # as an interrupted run leaves it
    save_checkpoint(tmp_path / "distill" / "checkpoints", 3, {"w": torch.zeros(1)}, {"step": 3})
    cfg_b = {**cfg, "distill": {**cfg["distill"], "epochs": 9}}
    with pytest.raises(ValueError, match="written for another configuration"):
        resume_point(tmp_path, "distill", cfg_b, "latest")
    # The stage recorded its configuration when it started: a rerun of that configuration resumes.
    (tmp_path / "distill" / "started.json").unlink()
    out = run_stage("distill", _stage, cfg, tmp_path, resume="latest")
    assert out["resume"].endswith("checkpoints/step_3")
    assert "[pacx] distill: resuming from checkpoints/step_3" in caplog.text
    assert "[1/1] distill: running" in caplog.text
    # Finished: skipped, the function is not called again.
    assert run_stage("distill", _stage, cfg, tmp_path, resume="latest")["stage"] == "distill"
    assert len(_stage.calls) == 1
    # Started for another configuration, interrupted: its checkpoints are refused.
    with pytest.raises(ValueError, match="distill: the checkpoints under .* another configuration"):
        run_stage("distill", _stage, cfg_b, tmp_path, resume="latest")


def test_without_resume_nothing_is_passed(cfg, tmp_path):
    _stage.calls = []
    assert run_stage("distill", lambda c, o: {"ok": True}, cfg, tmp_path) == {"ok": True}


def test_help_states_each_default_once(capsys):
    from pacx.pipeline import parse_recipe_args

    with pytest.raises(SystemExit):
        parse_recipe_args("a recipe", ["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "global seed (default: the config file's, else 0)" in text
    assert "else 0) (default" not in text
    assert "(default: runs/pacx_full)" in text  # options whose help does not name a default still show it
