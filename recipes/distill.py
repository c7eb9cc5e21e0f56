"""Stage 2: tune the MAE encoder with LoRA towards the cached teacher embeddings; export the PaCX backbone.

    L = lambda_c * mean_t InfoNCE(cxr, t) + lambda_r * mean_t (1 - cos(reg_t(cxr), t))

over the teachers ``t`` of ``distill.teachers``, with GlobalInfoNCE (learnable temperature,
label smoothing, negatives from every rank) and a cosine regression onto each teacher's raw
embedding. The training batches are augmented on their device (the reference's Stage-2
augmentations, drawn per image). Validated every epoch on the ``val`` split (same loss, no
augmentation); the
checkpoint with the lowest validation loss is exported (``distill.export: best``), as the
authors do. ``distill.shuffle_teachers`` permutes each teacher's embeddings across patients: the
control with the teachers' distribution but no patient correspondence.

Example:
    python recipes/distill.py --profile quick --out runs/demo
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pacx.data import EmbeddingDataset, SymileMIMIC, load_teacher_embeddings, stage2_batch_transform
from pacx.distributed import is_main_process
from pacx.engine import Trainer, export_backbone, load_backbone, make_loader
from pacx.engine.trainer import unwrap_model
from pacx.io import load_safetensors, save_safetensors
from pacx.pipeline import build_distiller, data_root, mark_done, parse_recipe_args, run_stage, trainer_config


def distill_step(model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """One Stage-2 step (and the validation step): the distiller returns the loss and its terms."""
    return model(batch["cxr"], batch["teacher_embeddings"])


def augmented_step(augment: Any) -> Any:
    """The training step: the batch is augmented on its device first (``stage2_batch_transform``)."""

    def step(model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        return model(augment(batch["cxr"]), batch["teacher_embeddings"])

    return step


def teacher_targets(cfg: dict[str, Any], out: Path, split: str) -> dict[str, np.ndarray]:
    """The cached embeddings of the configured teachers; permuted across patients for the control."""
    names, sec = cfg["distill"]["teachers"], cfg["distill"]
    embeddings = load_teacher_embeddings(out, split, names)
    if sec.get("shuffle_teachers"):  # one independent permutation per teacher and split
        rng = np.random.default_rng([int(cfg["seed"]), 7, ["train", "val"].index(split)])
        embeddings = {n: np.asarray(e)[rng.permutation(len(e))] for n, e in embeddings.items()}
    return embeddings


def run(cfg: dict[str, Any], out: str | Path, resume: str | None = None, stage: str = "distill",
        backbone: str = "pacx") -> dict[str, Any]:
    """Stage 2 on the cohort's training pairs; exports ``backbones/<backbone>``."""
    out, sec, start = Path(out), cfg["distill"], time.perf_counter()
    root = data_root(cfg, out)
    targets = {split: teacher_targets(cfg, out, split) for split in ("train", "val")}
    student = load_backbone(out / "backbones" / "mae")  # the Stage-1 encoder, a plain timm ViT
    size = student.patch_embed.img_size[0]
    torch.manual_seed(int(cfg["seed"]))
    model = build_distiller(sec, student, {n: e.shape[1] for n, e in targets["train"].items()})

    train = EmbeddingDataset(SymileMIMIC(root, "train", ("cxr",), size), targets["train"])
    val = EmbeddingDataset(SymileMIMIC(root, "val", ("cxr",), size), targets["val"])
    workers, batch = int(cfg["data"]["num_workers"]), int(sec["batch_size"])
    loader = make_loader(train, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
                         seed=int(cfg["seed"]))
    val_loader = make_loader(val, batch_size=batch, shuffle=False, drop_last=False, num_workers=workers)

    trainer = Trainer(trainer_config(cfg, sec, stage), out / stage, run_config={"distill": sec})
    step = augmented_step(stage2_batch_transform(size)) if sec.get("augment", True) else distill_step
    result = trainer.fit(model, loader, step, resume=resume, val_loader=val_loader, val_step_fn=distill_step)
    model = unwrap_model(model)
    chosen = {"selected": "final", "step": result["step"]}
    if sec.get("export", "best") == "best" and result.get("best"):
        model.load_state_dict(load_safetensors(Path(result["best"]["dir"]) / "model.safetensors"))
        chosen = {"selected": "best", "step": result["best"]["step"], "val_loss": result["best"]["val_loss"]}
    if is_main_process():
        export_backbone(model.export_encoder(), out / "backbones" / backbone,
                        extra={"stage": stage, "teachers": list(sec["teachers"]), **chosen})
        save_safetensors(model.state_dict(), out / stage / "distiller.safetensors")
    info = {"final_loss": result["metrics"].get("loss"), "metrics": result["metrics"], "teachers": sec["teachers"],
            "export": chosen, "best": result.get("best"), "seconds": time.perf_counter() - start}
    mark_done(out, stage, cfg, info)
    return info


if __name__ == "__main__":
    args, cfg = parse_recipe_args(__doc__.splitlines()[0])
    run_stage("distill", run, cfg, args.out, force=args.force, resume=args.resume)
