"""Stage 1a: pretrain the CXR ViT as a masked autoencoder (mask ratio 0.90), or load a prior.

The ``cpu`` profile loads the prior shipped with pacx (``mae.checkpoint: prior:cpu64``), as the
paper loads its CheXpert MAE; ``--set mae.checkpoint=null`` pretrains on the cohort instead.
Either way the random-init and MAE encoders are exported as timm backbones.

With ``mae.export_prior: <name>`` (the ``prior`` profile) the result is also written as a
shippable prior, ``<out>/prior/mae_prior_<name>.{safetensors,json}``.

Examples:
    python recipes/pretrain_mae.py --profile quick --out runs/demo
    python recipes/pretrain_mae.py --profile prior --seed 1000 --out runs/prior   # rebuild the shipped prior
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from pacx.data import SymileMIMIC
from pacx.data.transforms import stage1_train_transform
from pacx.distributed import is_main_process
from pacx.engine import Trainer, export_backbone, make_loader
from pacx.engine.trainer import unwrap_model
from pacx.io import load_json, save_json, save_safetensors
from pacx.nets import MAE_DECODER_PREFIXES, MaskedAutoencoderViT, create_mae, load_mae_checkpoint
from pacx.pipeline import mark_done, parse_recipe_args, pretraining_root, run_stage, trainer_config
from pacx.pretrained import resolve_mae_checkpoint, write_prior


def build_mae(cfg: dict[str, Any]) -> MaskedAutoencoderViT:
    """The MAE of the configuration: a named preset or an explicit architecture."""
    sec = cfg["mae"]
    kwargs = {"mask_ratio": float(sec["mask_ratio"]), "norm_pix_loss": bool(sec["norm_pix_loss"])}
    return create_mae(sec["preset"], **kwargs) if sec.get("preset") else MaskedAutoencoderViT(**sec["arch"], **kwargs)


def mae_step(model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    """One Stage-1 step: the masked-patch reconstruction loss."""
    return model(batch["cxr"]).loss, {}


def export_prior(name: str, mae: MaskedAutoencoderViT, cfg: dict[str, Any], out: Path, info: dict[str, Any]) -> Path:
    """Write a shippable prior (``mae_prior_<name>.safetensors`` + its JSON record) under ``<out>/prior/``.

    The record holds the architecture, the corpus (parameters and content hash), the training run
    (with ``info``'s ``selected`` and ``note`` when given: the checkpoint chosen and why) and the
    file's SHA-256; copy both files into ``pacx/pretrained/`` to ship them.
    """
    corpus_root = pretraining_root(cfg, out)
    corpus = load_json(corpus_root / "cohort.json")
    record = {
        "format": "pacx-mae-prior/1",
        "name": name,
        "mae_config": mae.config,
        "corpus": {**corpus["parameters"], "content_hash": corpus["content_hash"]},
        "training": {k: cfg["mae"][k] for k in ("epochs", "batch_size", "lr", "weight_decay", "betas", "warmup_fraction")}
        | {"seed": cfg["seed"], "steps": info.get("steps"), "final_loss": info.get("final_loss")}
        | {k: info[k] for k in ("selected", "note") if k in info},  # which checkpoint, and why
        "recipe": f"python recipes/pretrain_mae.py --profile {cfg['profile']} --seed {cfg['seed']}",
    }
    return write_prior(name, mae.state_dict(), record, out / "prior")


def run(cfg: dict[str, Any], out: str | Path, resume: str | None = None) -> dict[str, Any]:
    """Stage 1a: pretrain (or load) the MAE; export ``backbones/random`` and ``backbones/mae``."""
    out, sec = Path(out), cfg["mae"]
    torch.manual_seed(int(cfg["seed"]))
    mae = build_mae(cfg)
    if is_main_process():  # the random-init baseline: the same architecture before any training
        export_backbone(mae.encoder, out / "backbones" / "random", extra={"stage": "random_init"})
    start = time.perf_counter()
    if sec.get("checkpoint"):  # a pretrained prior, like the paper's CheXpert MAE
        report = load_mae_checkpoint(mae, resolve_mae_checkpoint(sec["checkpoint"]), allow_missing=MAE_DECODER_PREFIXES)
        info: dict[str, Any] = {"loaded_from": str(sec["checkpoint"]), "missing_keys": list(report.missing)}
    else:
        root, size = pretraining_root(cfg, out), mae.img_size
        train = SymileMIMIC(root, "train", modalities=("cxr",), image_size=size,
                            cxr_transform=stage1_train_transform(size))
        loader = make_loader(train, batch_size=int(sec["batch_size"]), shuffle=True, drop_last=True,
                             num_workers=int(cfg["data"]["num_workers"]), seed=int(cfg["seed"]))
        val_loader = None
        if not sec.get("corpus"):  # the cohort's validation split, without augmentation
            val = SymileMIMIC(root, "val", modalities=("cxr",), image_size=size)
            val_loader = make_loader(val, batch_size=int(sec["batch_size"]), shuffle=False, drop_last=False)
        images = {k: cfg["data"][k] for k in ("source", "root", "n_patients", "image_size")}  # not num_workers
        trainer = Trainer(trainer_config(cfg, sec, "mae"), out / "mae", run_config={"mae": sec, "data": images})
        result = trainer.fit(mae, loader, mae_step, resume=resume, val_loader=val_loader,
                             extra_meta=lambda m: {"mask_ratio": m.mask_ratio, "last_mask_ratio": m.last_mask_ratio})
        mae = unwrap_model(mae)
        if mae.last_mask_ratio != mae.mask_ratio:
            raise RuntimeError(f"MAE trained at mask ratio {mae.last_mask_ratio}, configured {mae.mask_ratio}")
        info = {"final_loss": result["metrics"].get("loss"), "steps": result["step"]}
    info.update(mask_ratio=float(mae.mask_ratio), seconds=time.perf_counter() - start)
    if is_main_process():
        export_backbone(mae.encoder, out / "backbones" / "mae", extra={"stage": "mae", "mask_ratio": mae.mask_ratio})
        save_json(mae.config, out / "mae" / "mae_config.json")
        save_safetensors(mae.state_dict(), out / "mae" / "mae_full.safetensors")
        if sec.get("export_prior") and not sec.get("checkpoint"):
            info["prior"] = str(export_prior(sec["export_prior"], mae, cfg, out, info))
    mark_done(out, "mae", cfg, info)
    return info


if __name__ == "__main__":
    args, cfg = parse_recipe_args(__doc__.splitlines()[0])
    run_stage("mae", run, cfg, args.out, force=args.force, resume=args.resume)
