"""Command-line plumbing shared by the recipes: parse, resolve and validate the configuration, run stages."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from pacx.distributed import init_distributed, is_main_process
from pacx.engine import latest_checkpoint
from pacx.io import load_json, save_json
from pacx.teachers import get_teacher, list_teachers

from .config import add_common_arguments, config_from_args
from .console import StagePlan, configure_logging
from .ranks import patient_group
from .stages import stage_dependencies, stage_is_done

__all__ = ["RESUME_MODES", "parse_recipe_args", "resume_point", "run_stage"]

DEFAULT_OUT = "runs/pacx_full"
# What ``--resume`` takes: "path" ("latest" or a checkpoint folder; one training stage),
# "latest" (every training stage from its own latest checkpoint), "none" (no flag: nothing trains).
RESUME_MODES = ("path", "latest", "none")
_STARTED = "started.json"  # written when a stage starts: the configuration its checkpoints belong to
log = logging.getLogger(__name__)


def _teacher_flags() -> dict[str, tuple[str, str, str]]:
    """``{dest: (flag, "teachers.<name>.<key>", help)}`` for every registered teacher's own flags."""
    flags = {}
    for name in list_teachers():
        for flag, (key, text) in get_teacher(name).cli_options.items():
            flags[flag.lstrip("-").replace("-", "_")] = (flag, f"teachers.{name}.{key}", text)
    return flags


def _add_resume(parser: argparse.ArgumentParser, resume: str) -> None:
    if resume not in RESUME_MODES:
        raise ValueError(f"resume must be one of {RESUME_MODES}, got {resume!r}")
    if resume == "latest":
        parser.add_argument("--resume", choices=["latest"], default=None,
                            help="continue every training stage that was interrupted from its own latest checkpoint "
                                 "(finished stages are skipped, stages never started start)")
    elif resume == "path":
        parser.add_argument("--resume", default=None, metavar="latest|CHECKPOINT",
                            help="continue the stage's training from its latest checkpoint or a checkpoint folder")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless its help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        return text if "(default" in text else super()._get_help_string(action)


def parse_recipe_args(
    description: str,
    argv: Sequence[str] | None = None,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
    resume: str = "path",
) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Parse a recipe's command line, resolve and validate its configuration, set up its log.

    Every recipe takes the same core options (``--profile``, ``--config``, ``--set``, ``--out``,
    ``--seed``, ``--data``, ``--data-root``, ``--force``, ``--print-config``, ``--version``),
    ``--mae-checkpoint`` and the flags the registered teachers declare (e.g.
    ``--ecgfounder-checkpoint``), so any stage can be rerun alone on the folder ``pacx_full.py``
    wrote. The whole configuration is validated (:func:`pacx.pipeline.schema.validate_config`)
    before anything runs: a bad key, type or value exits with status 2 and names the key.
    ``--print-config`` prints the result as YAML and exits. Otherwise the ``pacx`` logger is
    sent to stdout and ``<out>/log.txt`` (:func:`pacx.pipeline.console.configure_logging`) and
    the configuration is written to ``<out>/run_config.json``.

    Args:
        description: the recipe's one-line summary, shown by ``--help``.
        argv: the arguments (default ``sys.argv[1:]``).
        extra: adds the recipe's own options to the parser.
        resume: which ``--resume`` the recipe takes, one of :data:`RESUME_MODES`.

    Returns:
        The parsed arguments and the validated configuration.
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=_HelpFormatter)
    add_common_arguments(parser, DEFAULT_OUT)
    parser.add_argument("--mae-checkpoint", default=None,
                        help="MAE weights to start from instead of the profile's (facebookresearch, timm, "
                             "Lightning or safetensors layout)")
    teacher_flags = _teacher_flags()
    for dest, (flag, key, text) in teacher_flags.items():
        parser.add_argument(flag, dest=dest, default=None, help=f"{text} (sets {key})")
    _add_resume(parser, resume)
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    overrides = [f"{key}={getattr(args, dest)}" for dest, (_, key, _) in teacher_flags.items()
                 if getattr(args, dest) is not None]
    args.overrides = [*args.overrides, *overrides]
    try:
        cfg = config_from_args(args)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    if args.print_config:
        print(yaml.safe_dump(cfg, sort_keys=False), end="")
        parser.exit(0)
    init_distributed()  # so that only rank 0 writes the log
    patient_group()  # a collective: every rank creates it here, before any of them works alone
    configure_logging(args.out)
    if is_main_process():
        save_json(cfg, Path(args.out) / "run_config.json")
    return args, cfg


def resume_point(out: str | Path, stage: str, cfg: Any, resume: str | Path | None) -> Path | None:
    """The checkpoint a stage continues from: ``resume`` as given, or for ``"latest"`` the stage's own.

    With ``"latest"``, the latest complete checkpoint under ``<out>/<stage>/checkpoints`` (None
    when it has none: the stage starts), provided the stage was started with this configuration.

    Raises:
        ValueError: when the stage's checkpoints were written for another configuration.
    """
    if resume is None or str(resume) != "latest":
        return None if resume is None else Path(resume)
    folder = Path(out) / stage
    found = latest_checkpoint(folder / "checkpoints")
    if found is None:
        return None
    if (folder / _STARTED).is_file():  # older runs have none: the Trainer's own check remains
        started = load_json(folder / _STARTED).get("config")
        if started != json.loads(json.dumps(stage_dependencies(cfg, stage), default=str)):
            raise ValueError(f"{stage}: the checkpoints under {folder / 'checkpoints'} were written for another "
                             "configuration; rerun without --resume to start this stage afresh (they are archived)")
    return found


def run_stage(stage: str, fn: Callable[..., dict[str, Any]], cfg: dict[str, Any], out: str | Path,
              force: bool = False, resume: str | Path | None = None, plan: StagePlan | None = None,
              **kwargs: Any) -> dict[str, Any]:
    """Run one stage unless it already finished for this configuration (``force`` reruns it).

    Args:
        stage: the stage name (its folder under ``out``).
        fn: ``fn(cfg, out, **kwargs)`` runs it and returns its ``done.json`` information.
        cfg: the stage's configuration.
        out: the run folder.
        force: rerun a finished stage.
        resume: for a training stage, ``"latest"`` or a checkpoint folder, passed to ``fn`` as
            ``resume`` (see :func:`resume_point`); None passes nothing.
        plan: the command's :class:`StagePlan`, for ``[k/N]`` headers, the ETA and timings.
        **kwargs: passed to ``fn``.
    """
    init_distributed()
    patient_group()
    out = Path(out)
    plan = plan or StagePlan([stage], cfg["profile"])
    if not force and stage_is_done(out, stage, cfg):
        log.info("[pacx] %s", plan.header(stage, f"outputs for this configuration exist in {out / stage}, "
                                                 "skipping (--force reruns)"))
        return json.loads((out / stage / "done.json").read_text())
    notes, point = [], None
    if resume is not None:
        point = resume_point(out, stage, cfg, resume)
        kwargs["resume"] = None if point is None else str(point)
        shown = point.relative_to(out / stage) if point is not None and point.is_relative_to(out / stage) else point
        notes.append("no checkpoint of this stage, starting from step 0" if point is None else f"resuming from {shown}")
    if is_main_process():
        save_json({"stage": stage, "config": stage_dependencies(cfg, stage)}, out / stage / _STARTED)
    return plan.timed(stage, fn, cfg, out, notes=notes, record=point is None, **kwargs)
