"""Stage 1b: every configured teacher, trained from scratch on the cohort or loaded from its weights.

The teachers are plug-ins (``pacx.teachers``); this loops over ``distill.teachers``. Each one
either loads published weights (``teachers.<name>.checkpoint``, e.g. ``--ecgfounder-checkpoint``)
or trains with its own Stage-1 objective on the cohort's training split, validated on ``val``.
The weights end in ``<out>/teacher_<name>/final/model.safetensors``.

Example:
    python recipes/train_teachers.py --profile quick --out runs/demo
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from pacx.distributed import is_main_process
from pacx.engine import Trainer, make_loader
from pacx.io import save_safetensors
from pacx.pipeline import data_root, mark_done, parse_recipe_args, run_stage, stage_is_done, trainer_config
from pacx.pipeline.console import StagePlan
from pacx.pipeline.ranks import main_process_first
from pacx.teachers import get_teacher


def train_teacher(cfg: dict[str, Any], out: str | Path, name: str, resume: str | None = None) -> dict[str, Any]:
    """Stage 1b for one teacher: load its weights or train it; save them; mark ``teacher_<name>`` done."""
    out, section = Path(out), cfg["teachers"][name]
    plugin = get_teacher(name, section)
    root, folder, cache = data_root(cfg, out), out / f"teacher_{name}", out / "cache" / name
    torch.manual_seed(int(cfg["seed"]))
    net = plugin.build(root)
    start = time.perf_counter()
    if section.get("checkpoint"):
        plugin.load_weights(net, section["checkpoint"])
        info: dict[str, Any] = {"loaded_from": str(section["checkpoint"])}
        if is_main_process():
            save_safetensors(net.state_dict(), folder / "final" / "model.safetensors")
    else:
        batch = int(section["batch_size"])
        # Rank 0 preprocesses (and caches) the data first; the other ranks then read that cache.
        train, val = (main_process_first(plugin.training_dataset, root, split, cache) for split in ("train", "val"))
        train = make_loader(train, batch_size=batch, shuffle=True, drop_last=True, seed=int(cfg["seed"]))
        val = make_loader(val, batch_size=batch, shuffle=False, drop_last=False)
        trainer = Trainer(trainer_config(cfg, section, f"teacher {name}"), folder, run_config={name: section})
        result = trainer.fit(net, train, plugin.loss, resume=resume, val_loader=val)
        info = {"final_loss": result["metrics"].get("loss"), "steps": result["step"]}
    info.update(plugin.describe(net), embed_dim=plugin.frozen(net).embed_dim, seconds=time.perf_counter() - start)
    mark_done(out, f"teacher_{name}", cfg, info)
    return info


def run(cfg: dict[str, Any], out: str | Path, resume: str | None = None, force: bool = False) -> dict[str, Any]:
    """Stage 1b for every configured teacher (finished teachers of this configuration are skipped).

    ``resume="latest"``: each teacher interrupted earlier continues from its own latest checkpoint.
    """
    names = cfg["distill"]["teachers"]
    plan = StagePlan([f"teacher_{n}" for n in names], cfg["profile"],
                     is_done=lambda s: not force and stage_is_done(out, s, cfg))
    return {n: run_stage(f"teacher_{n}", partial(train_teacher, name=n), cfg, out, force=force, resume=resume,
                         plan=plan) for n in names}


if __name__ == "__main__":
    args, cfg = parse_recipe_args(__doc__.splitlines()[0], resume="latest")
    run(cfg, args.out, resume=args.resume, force=args.force)
