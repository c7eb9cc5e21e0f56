"""Stage 1c: every configured teacher's embeddings, computed once per split (Stage 2 never runs a teacher).

Writes ``<out>/teachers/<split>/<name>.npy`` (float32, rows aligned with ``data_npy/<split>``).
Under ``torchrun`` every rank embeds its own contiguous share of each split's rows and rank 0
joins the shares, so the work is split evenly. Rerunning it recomputes every file: it is
restartable and takes no ``--resume``.

Example:
    python recipes/cache_teachers.py --profile quick --out runs/demo
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pacx.distributed import get_rank, get_world_size, is_main_process
from pacx.io import load_safetensors
from pacx.nets import compute_teacher_embeddings
from pacx.pipeline import TEACHER_SPLITS, data_root, mark_done, parse_recipe_args, run_stage
from pacx.pipeline.ranks import main_process_first, patient_barrier, shard
from pacx.teachers import get_teacher

log = logging.getLogger("pacx.recipes.cache_teachers")


def _save(array: np.ndarray, path: Path) -> None:
    """``np.save`` through a temporary file, so that a killed run leaves no truncated cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, array)
    tmp.replace(path)


def run(cfg: dict[str, Any], out: str | Path) -> dict[str, Any]:
    """Embed every split with every configured (trained, frozen) teacher, the rows shared between ranks."""
    out, start = Path(out), time.perf_counter()
    root = data_root(cfg, out)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rank, world = get_rank(), get_world_size()
    shapes: dict[str, list[int]] = {}
    for name in cfg["distill"]["teachers"]:
        plugin = get_teacher(name, cfg["teachers"][name])
        net = plugin.build(root)
        net.load_state_dict(load_safetensors(out / f"teacher_{name}" / "final" / "model.safetensors"))
        teacher = plugin.frozen(net)
        teacher.name = name
        for split in TEACHER_SPLITS:
            # Rank 0 preprocesses (and caches) the split first; the other ranks then read that cache.
            data = main_process_first(plugin.dataset, root, split, out / "cache" / name)
            rows = shard(len(data))
            log.info("[pacx] teachers: %s on %s (%d rows%s)", name, split, len(data),
                     f", rows {rows.start}-{rows.stop} on this rank" if world > 1 else "")
            loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data, rows), batch_size=256, shuffle=False)
            emb = compute_teacher_embeddings(teacher, loader, device=device).astype(np.float32)
            path = out / "teachers" / split / f"{name}.npy"
            _save(emb, path.with_name(f".{name}.rank{rank}.part"))
            patient_barrier()
            if is_main_process():
                parts = [path.with_name(f".{name}.rank{r}.part") for r in range(world)]
                _save(np.concatenate([np.load(p) for p in parts]), path)
                for p in parts:
                    p.unlink()
                shapes[f"{split}/{name}"] = [len(data), int(emb.shape[1])]
    info = {"shapes": shapes, "seconds": time.perf_counter() - start, "world_size": world}
    mark_done(out, "teachers", cfg, info)
    return info


if __name__ == "__main__":
    args, cfg = parse_recipe_args(__doc__.splitlines()[0], resume="none")
    run_stage("teachers", run, cfg, args.out, force=args.force)
