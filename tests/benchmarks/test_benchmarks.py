"""Every benchmark runs at toy size and prints its table; every command of gpu_check.sh parses.

All benchmark jobs of a session run in ONE subprocess (``tests/benchmarks/_toy_runner.py``), one
after another, each as ``__main__`` with its own argv: importing torch, timm and MONAI is most of a
toy run's time, and paying it once keeps these tests to seconds each on an idle 2-core machine.
``bench_trainer.py`` has its own test (``test_bench_trainer.py``); ``gpu_check.sh``,
``cuda_smoke.py``, ``dist_infonce_check.py`` and ``bench_ranks.py`` (which spawns its own
processes, so it runs in a subprocess of its own) are checked through their CPU paths, ``--help``
and the command lines that ``gpu_check.sh`` would run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = "benchmarks"
CACHE = "{cache}"  # replaced by a temporary directory


@dataclass(frozen=True)
class Toy:
    """One toy run: the script's argv and text its output must contain (a table header and a row)."""

    script: str
    args: tuple[str, ...]
    expect: tuple[str, ...]

    @property
    def name(self) -> str:
        return Path(self.script).stem


TOYS = [
    Toy("bench_losses.py", ("--threads", "1", "--sizes", "64", "--dim", "16", "--repeats", "1", "--warmup", "0"),
        ("| B | ours ms | plain ms | ours / plain |", "| 64 |")),
    Toy("bench_mae.py", ("--threads", "1", "--batch", "2", "--ratios", "0.9,0", "--batch-sizes", "4",
                         "--image-sizes", "32", "--repeats", "1", "--warmup", "0"),
        ("| mask ratio | visible tokens | images/s |", "| 0.90 |", "| params (M) | engine's choice |",
         "foreach / fused")),
    Toy("bench_distill.py", ("--threads", "1", "--batch", "4", "--repeats", "1", "--warmup", "0"),
        ("| candidate | ms | images/s |", "| step |", "teacher forwards during Stage 2: 0")),
    Toy("bench_lora.py", ("--threads", "1", "--batch", "2", "--repeats", "1", "--warmup", "0"),
        ("| inference | ms |", "| merged + unwrapped |", "| training | ms |")),
    Toy("bench_data.py", ("--threads", "1", "--cache-dir", CACHE, "--n-patients", "40", "--cohort-size", "32",
                          "--image-size", "32", "--batch", "4", "--workers", "0", "--batches", "1", "--repeats", "1"),
        ("| storage | bytes/row | workers | stage-2 aug | images/s | vs per sample |",
         "| float32 | 12288 | 0 | per sample |", "| uint8 | 1024 | 0 | batch, on device |")),
    Toy("bench_linear_probe.py", ("--threads", "1", "--n-train", "32", "--n-eval", "16", "--epochs", "2",
                                  "--img-size", "16", "--embed-dim", "32", "--depth", "1", "--batch-size", "16"),
        ("| path | seconds | test AUROC |", "| backbone re-run every epoch |", "AUROC identical: True")),
    Toy("cuda_smoke.py", ("--device", "cpu"),
        ("[PASS] GlobalInfoNCE device == cpu (float32)", "[PASS] BatchAugment device == cpu",
         "[PASS] Trainer.fit bf16 (3 steps)",
         "cuda_smoke: 0 failure(s)")),
    Toy("synthetic_cohort_audit.py", ("--n-patients", "120", "--image-size", "16", "--ecg-patients", "24",
                                      "--variance-patients", "64"),
        ('"physiology_pixel_variance_share"', '"audit_seconds"')),
    # Without torchrun the script has one rank and says so (its 2-rank run is tested below).
    Toy("dist_infonce_check.py", ("--per-rank", "4", "--dim", "8"), ("nothing to compare",)),
]
HELP = ["bench_losses.py", "bench_mae.py", "bench_distill.py", "bench_lora.py", "bench_data.py",
        "bench_linear_probe.py", "cuda_smoke.py", "synthetic_cohort_audit.py", "dist_infonce_check.py",
        "bench_ranks.py"]


def gpu_check_steps() -> list[tuple[str, int, list[str]]]:
    """(step name, limit in s, command) of every step of gpu_check.sh, as bash expands them (list mode runs nothing)."""
    env = dict(os.environ, PACX_GPU_CHECK_LIST="1", PYTHON=sys.executable, OUT="/tmp/pacx_gpu_list")
    proc = subprocess.run(["bash", str(ROOT / BENCH / "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=60, check=True)
    steps = []
    for line in proc.stdout.splitlines():
        if line.startswith("STEP "):
            _, name, limit, *command = shlex.split(line)
            steps.append((name, int(limit), command))
    return steps


def _gpu_check_jobs(steps: list[tuple[str, int, list[str]]]) -> list[dict]:
    """A parse job per python script a step runs (torchrun's script included); pytest steps are checked apart."""
    jobs = []
    for name, _, command in steps:
        args = command[1:]  # drop the interpreter
        if args[:2] != ["-m", "pytest"]:
            script = next(i for i, arg in enumerate(args) if arg.endswith(".py"))
            jobs.append({"name": f"gpu_check:{name}", "mode": "parse", "argv": args[script:]})
    return jobs


def _check_pytest_step(args: list[str]) -> None:
    """The test paths exist and the ``-k`` expression names at least one test function in them."""
    paths = [ROOT / a for a in args if not a.startswith("-") and (ROOT / a).suffix in ("", ".py") and "/" in a]
    missing = [str(p) for p in paths if not p.exists()]
    assert paths and not missing, f"pytest step: missing test paths {missing}"
    terms = set(re.findall(r"\w+", args[args.index("-k") + 1])) - {"and", "or", "not"} if "-k" in args else {""}
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("test_*.py")))]
    names = {m for f in files for m in re.findall(r"^\s*def (test_\w+)", f.read_text(), flags=re.M)}
    assert any(term in name for term in terms for name in names), f"pytest step: -k {terms} selects no test"


@pytest.fixture(scope="module")
def report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run the jobs of the tests selected in this session in one subprocess; the name -> result report."""
    selected = {item.name for item in request.session.items if item.module is request.module}
    cache = tmp_path_factory.mktemp("bench_cache")
    jobs = []
    needs = {"bench_losses": {"test_losses_toy_run_reads_no_device_value"}}
    for toy in TOYS:
        if {f"test_toy_run_prints_its_table[{toy.name}]", *needs.get(toy.name, ())} & selected:
            argv = [str(Path(BENCH) / toy.script)] + [a.replace(CACHE, str(cache)) for a in toy.args]
            jobs.append({"name": toy.name, "mode": "run", "argv": argv})
    for script in HELP:
        if f"test_help[{Path(script).stem}]" in selected:
            jobs.append({"name": f"help:{script}", "mode": "run", "argv": [str(Path(BENCH) / script), "--help"]})
    if "test_every_gpu_check_command_parses" in selected:
        jobs += _gpu_check_jobs(gpu_check_steps())
    folder = tmp_path_factory.mktemp("toy")
    jobs_file, report_file = folder / "jobs.json", folder / "report.json"
    jobs_file.write_text(json.dumps(jobs))
    env = dict(os.environ, OMP_NUM_THREADS="1", PACX_BENCH_CACHE=str(cache), MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, "-m", "tests.benchmarks._toy_runner", str(jobs_file), str(report_file)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and report_file.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(report_file.read_text())


def _failure(result: dict) -> str:
    return f"rc={result['rc']}\n--- stdout\n{result['stdout'][-4000:]}\n--- stderr\n{result['stderr'][-4000:]}"


@pytest.mark.parametrize("toy", TOYS, ids=[toy.name for toy in TOYS])
def test_toy_run_prints_its_table(toy: Toy, report: dict) -> None:
    result = report[toy.name]
    assert result["rc"] == 0, _failure(result)
    for text in toy.expect:
        assert text in result["stdout"], f"{text!r} not printed\n{_failure(result)}"


def test_losses_toy_run_reads_no_device_value(report: dict) -> None:
    """GlobalInfoNCE's forward + backward in the benchmark dispatches no host-synchronising operator."""
    lines = report["bench_losses"]["stdout"].splitlines()
    header = next(line for line in lines if line.startswith("| B |"))
    row = next(line for line in lines if line.startswith("| 64 |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    values = [c.strip() for c in row.strip("|").split("|")]
    assert values[columns.index("host reads ours")] == "0"
    assert int(values[columns.index("ops ours")]) < int(values[columns.index("ops plain")])


@pytest.mark.parametrize("script", HELP, ids=[Path(s).stem for s in HELP])
def test_help(script: str, report: dict) -> None:
    result = report[f"help:{script}"]
    assert result["rc"] == 0 and "usage:" in result["stdout"], _failure(result)


def test_every_gpu_check_command_parses(report: dict) -> None:
    steps = gpu_check_steps()
    names = [name for name, _, _ in steps]
    assert {"bench_losses", "bench_mae", "bench_distill", "bench_trainer", "bench_data", "bench_mae_compile",
            "bench_distill_compile", "dist_nccl"} <= set(names)
    # 8 minutes on one GPU: the single-GPU steps' limits and ~15 s of environment report fit the 480 s budget.
    assert sum(limit for name, limit, _ in steps if name != "dist_nccl") + 15 <= 480
    for name, _, command in steps:
        if command[1:3] == ["-m", "pytest"]:
            _check_pytest_step(command[3:])
            continue
        result = report[f"gpu_check:{name}"]
        assert result["rc"] == 0, f"gpu_check step {name}: {_failure(result)}"


@pytest.mark.distributed
def test_dist_infonce_check_on_two_gloo_ranks(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(Path(BENCH) / "dist_infonce_check.py"), "--per-rank", "4", "--dim", "8", "--backend", "gloo"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "FAIL" not in proc.stdout and "PASS" in proc.stdout, proc.stdout


@pytest.mark.distributed
def test_bench_ranks_runs_one_and_two_gloo_ranks() -> None:
    """The scaling benchmark trains on 1 and on 2 spawned ranks and prints a row for each."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(Path(BENCH) / "bench_ranks.py"), "--world-sizes", "1", "2", "--batch", "4",
         "--steps", "2", "--warmup", "1", "--repeats", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| ranks | images/s | speed-up vs 1 rank |" in proc.stdout, proc.stdout
    rows = [line for line in proc.stdout.splitlines() if re.match(r"\| [12] \|", line)]
    assert [row.split("|")[1].strip() for row in rows] == ["1", "2"], proc.stdout
    assert all(float(row.split("|")[2]) > 0 for row in rows), proc.stdout
