"""``benchmarks/bench_trainer.py`` runs at toy size and prints its table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_trainer_toy_run_prints_the_ratio_table(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PACX_BENCH_CACHE=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_trainer.py"), "--toy", "--repeats", "1",
         "--json", str(tmp_path / "trainer.json")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| stage |"))
    assert "trainer / isolated" in header and "ratio min" in header and "ratio max" in header
    row = next(line for line in lines if line.startswith("| mae |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    ratio = float(row.strip("|").split("|")[columns.index("trainer / isolated")])
    assert 0.0 < ratio < 10.0  # a ratio of two rates measured in the same process
    assert (tmp_path / "trainer.json").is_file()
