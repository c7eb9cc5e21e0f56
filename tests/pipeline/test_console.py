"""Stage headers with elapsed time and an ETA from earlier runs; the pacx log in <out>/log.txt."""

from __future__ import annotations

import logging

from pacx.pipeline.console import StagePlan, configure_logging, format_seconds


def test_eta_comes_from_an_earlier_run_of_the_profile(tmp_path):
    history = tmp_path / "stage_seconds.json"
    first = StagePlan(["data", "mae", "distill"], "quick", history=history)
    assert first.header("mae", "running") == "[2/3] mae: running (elapsed 0:00)"  # never timed: no ETA
    for stage, seconds in (("data", 10), ("mae", 50), ("distill", 65)):
        first.record(stage, seconds)
    # A later run skips data: the ETA counts the stages still to run.
    later = StagePlan(["data", "mae", "distill"], "quick", is_done=lambda s: s == "data", history=history)
    assert later.eta("data") == 125 and later.eta("mae") == 115 and later.eta("distill") == 65
    assert later.header("mae", "running").endswith("ETA 1:55 from an earlier quick run)")
    # Another profile has no timings yet.
    assert StagePlan(["mae"], "cpu", history=history).eta("mae") is None
    assert format_seconds(3725) == "1:02:05"


def test_unwritable_history_is_ignored(tmp_path):
    (tmp_path / "file").write_text("")
    StagePlan(["mae"], "quick", history=tmp_path / "file" / "t.json").record("mae", 1.0)


def test_log_goes_to_stdout_and_the_run_folder(tmp_path, capsys):
    logger = configure_logging(tmp_path / "run")
    try:
        logging.getLogger("pacx.pipeline.cli").info("[pacx] hello")
        configure_logging(tmp_path / "run")  # a second call replaces the handlers: no double lines
        logging.getLogger("pacx.recipes").info("[pacx] again")
        assert capsys.readouterr().out == "[pacx] hello\n[pacx] again\n"
        lines = (tmp_path / "run" / "log.txt").read_text().splitlines()
        assert [line.split(" ", 2)[2] for line in lines] == ["[pacx] hello", "[pacx] again"]
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
