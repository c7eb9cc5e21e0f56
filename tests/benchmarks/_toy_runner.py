"""Run benchmark scripts one after another in this process and write one JSON report.

``python -m tests.benchmarks._toy_runner JOBS.json REPORT.json``, where JOBS is a list of
``{"name", "mode", "argv"}`` (``argv[0]`` the script path) and ``mode`` is:

* ``run``: execute the script as ``__main__`` with ``argv`` (``runpy.run_path``);
* ``parse``: the same, but stop right after its ``ArgumentParser.parse_args`` succeeded (checks
  that a command line is valid without running it).

The report maps each name to ``{"rc", "stdout", "stderr", "seconds"}``; an exception is rc 1 with
its traceback in ``stderr``. One process for all jobs pays the import of torch, timm and MONAI
once (the bulk of a toy run's time); the test process that starts it stays clean.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import runpy
import sys
import time
import traceback
from pathlib import Path
from typing import Any


class _Parsed(Exception):
    """Raised by the patched ``parse_args`` once the command line has parsed."""


def _run_script(argv: list[str], parse_only: bool) -> int:
    sys.argv = list(argv)
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> argparse.Namespace:
        original(self, *args, **kwargs)
        raise _Parsed

    if parse_only:
        argparse.ArgumentParser.parse_args = parse_then_stop  # type: ignore[method-assign]
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except _Parsed:
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
    return 1 if parse_only else 0  # a parse job that never reached parse_args is a failure


def _run_job(job: dict[str, Any]) -> dict[str, Any]:
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = _run_script(job["argv"], parse_only=job["mode"] == "parse")
        except BaseException:  # noqa: BLE001 - any failure of a job is reported, the next job still runs
            traceback.print_exc()
            rc = 1
    return {"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue(), "seconds": time.perf_counter() - start}


def main(argv: list[str]) -> int:
    jobs = json.loads(Path(argv[0]).read_text())
    report = {}
    for job in jobs:
        report[job["name"]] = _run_job(job)
    tmp = Path(argv[1]).with_suffix(".tmp")
    tmp.write_text(json.dumps(report))
    os.replace(tmp, argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
