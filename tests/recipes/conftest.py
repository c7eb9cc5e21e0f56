"""Quick-profile runs of ``recipes/pacx_full.py`` shared by the recipe tests (each made once per session).

``quick_runs`` holds two runs of one configuration (checkpoints every step):

* ``resumed``: SIGKILLed in the middle of Stage 2 once a checkpoint exists, then rerun with
  ``--resume latest``;
* ``uninterrupted``: a copy of the killed run's folder without its Stage-2 folder, finished by a
  plain rerun, so Stage 2 onwards ran without interruption.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.utils import SHARED_DATA

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
REAL = (SHARED_DATA / "montgomery").is_dir()
# Fewer Stage-2 variants than the quick profile's default keep the runs short; a checkpoint every
# step gives Stage 2 something to resume from.
OVERRIDES = ("variants=[shuffled_teachers, regression_only]", "trainer.save_every=1")


@dataclass
class QuickRuns:
    resumed: Path
    uninterrupted: Path
    resumed_log: str
    uninterrupted_log: str
    killed_log: str
    env: dict[str, str]


def recipe_command(recipe: str, out: Path, *extra: str, overrides: tuple[str, ...] = OVERRIDES) -> list[str]:
    """``python recipes/<recipe> --profile quick --out OUT --seed 0 --set ...`` plus ``extra``."""
    sets = [arg for item in overrides for arg in ("--set", item)]
    return [sys.executable, str(RECIPES / recipe), "--profile", "quick", "--out", str(out), "--seed", "0", *sets,
            *extra]


def run_recipe(cmd: list[str], env: dict[str, str], timeout: float = 1200) -> str:
    """Run a command to the end; its stdout and stderr together (the test fails on a non-zero exit)."""
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done.stdout + done.stderr


def _kill_in_stage2(out: Path, env: dict[str, str]) -> str:
    """Start the pipeline and SIGKILL it once Stage 2 has written a checkpoint; its output so far."""
    log = out.parent / f"{out.name}.killed.log"
    with log.open("w") as sink:
        first = subprocess.Popen(recipe_command("pacx_full.py", out), cwd=ROOT, env=env, stdout=sink,
                                 stderr=subprocess.STDOUT)
        pointer, deadline = out / "distill" / "checkpoints" / "latest", time.monotonic() + 1200
        while not pointer.exists():
            if first.poll() is not None:
                raise AssertionError("the run ended before it could be interrupted:\n" + log.read_text()[-4000:])
            if time.monotonic() > deadline:
                first.kill()
                raise AssertionError("Stage 2 wrote no checkpoint within 1200 s")
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    assert not (out / "distill" / "done.json").exists(), "Stage 2 finished before the kill: nothing to resume"
    return log.read_text()


@pytest.fixture(scope="session")
def quick_runs(tmp_path_factory) -> QuickRuns:
    base = tmp_path_factory.mktemp("quick_runs")
    # Every warning is shown once per place (the tests check that none comes from pacx itself);
    # stage timings go to a cache of the test's own.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default",
           "PACX_CACHE_DIR": str(base / "cache")}
    resumed, uninterrupted = base / "resumed", base / "uninterrupted"
    killed_log = _kill_in_stage2(resumed, env)
    shutil.copytree(resumed, uninterrupted,
                    ignore=lambda d, names: ["distill", "log.txt"] if Path(d) == resumed else [])
    uninterrupted_log = run_recipe(recipe_command("pacx_full.py", uninterrupted), env)
    real = ("--real-eval",) if REAL else ()
    resumed_log = run_recipe(recipe_command("pacx_full.py", resumed, "--resume", "latest", *real), env)
    return QuickRuns(resumed, uninterrupted, resumed_log, uninterrupted_log, killed_log, env)
