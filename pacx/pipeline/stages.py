"""The training stages of PaCX-MAE as functions of a run configuration.

Every stage writes under ``<out>/<stage>/`` and finishes by writing ``done.json`` holding the
hash of the configuration it depends on. :func:`stage_is_done` compares that hash, so a rerun
with the same configuration skips a finished stage and a changed configuration reruns it.
Recipes are thin command-line wrappers around these functions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pacx.data import EmbeddingDataset, LabelledDataset, SymileMIMIC, load_task_labels, load_teacher_embeddings
from pacx.data.ecg import preprocess_ecg
from pacx.data.synthetic import make_cohort, make_cxr_corpus
from pacx.data.transforms import stage1_train_transform, stage2_train_transform
from pacx.distributed import barrier, is_main_process
from pacx.engine import Trainer, TrainerConfig, export_backbone, load_backbone, make_loader
from pacx.engine.trainer import unwrap_model
from pacx.io import load_json, load_safetensors, save_json, save_safetensors
from pacx.nets import (
    ECGTeacher,
    LabDAE,
    LabTeacher,
    MaskedAutoencoderViT,
    PaCXDistiller,
    compute_teacher_embeddings,
    create_mae,
    ecgfounder_12lead,
    load_ecgfounder_checkpoint,
    load_mae_checkpoint,
    net1d_small,
)
from pacx.nets.mae_checkpoints import MAE_DECODER_PREFIXES

from .config import config_hash

__all__ = [
    "STAGES",
    "build_mae",
    "cache_teachers",
    "data_root",
    "distill",
    "pretrain_mae",
    "stage_is_done",
    "train_ecg_teacher",
    "train_lab_dae",
]

TEACHER_SPLITS = ("train", "val", "test")

# The configuration sections each stage depends on (its skip key).
STAGE_DEPENDENCIES: dict[str, tuple[str, ...]] = {
    "mae": ("data", "mae"),
    "lab_dae": ("data", "lab_dae"),
    "ecg_teacher": ("data", "ecg_teacher"),
    "teachers": ("data", "lab_dae", "ecg_teacher"),
    "distill": ("data", "mae", "lab_dae", "ecg_teacher", "distill"),
}


def _stage_key(cfg: Mapping[str, Any], stage: str) -> str:
    deps = STAGE_DEPENDENCIES.get(stage, tuple(k for k in cfg if k != "trainer"))
    return config_hash({"seed": cfg["seed"], **{k: cfg[k] for k in deps}})


def stage_is_done(out: str | Path, stage: str, cfg: Mapping[str, Any]) -> bool:
    """True when ``<out>/<stage>/done.json`` exists and was written for this configuration."""
    marker = Path(out) / stage / "done.json"
    if not marker.is_file():
        return False
    return load_json(marker).get("config_hash") == _stage_key(cfg, stage)


def _mark_done(out: Path, stage: str, cfg: Mapping[str, Any], info: Mapping[str, Any]) -> None:
    if is_main_process():
        save_json({"stage": stage, "config_hash": _stage_key(cfg, stage), **info}, out / stage / "done.json")
    barrier()


def _trainer_config(cfg: Mapping[str, Any], section: str) -> TrainerConfig:
    sec, tr = cfg[section], cfg["trainer"]
    return TrainerConfig(
        epochs=max(1, int(sec["epochs"])),
        lr=float(sec["lr"]),
        weight_decay=float(sec["weight_decay"]),
        betas=tuple(sec.get("betas", (0.9, 0.999))),
        warmup_epochs=float(sec.get("warmup_fraction", 0.0)) * max(1, int(sec["epochs"])),
        min_lr_ratio=float(sec.get("min_lr_ratio", 0.0)),
        grad_clip=sec.get("grad_clip"),
        amp=tr["amp"],
        compile=bool(tr["compile"]) and section in ("mae", "distill"),
        log_every=int(tr["log_every"]),
        save_every=int(tr["save_every"]) or None,
        keep_last=int(tr["keep_last"]),
        seed=int(cfg["seed"]),
        deterministic=False,
    )


def data_root(cfg: Mapping[str, Any], out: str | Path) -> Path:
    """The cohort root: the synthetic cohort (generated once, cached by its parameters) or Symile-MIMIC."""
    data = cfg["data"]
    if data["source"] == "symile":
        return Path(data["root"])
    cache = Path(data.get("cache_dir") or Path(out) / "data")
    root = None
    if is_main_process():
        root = make_cohort(cache, n_patients=int(data["n_patients"]), image_size=int(data["image_size"]),
                           seed=int(cfg["seed"]))
    barrier()
    if root is None:  # other ranks: the cohort now exists, the call returns at once
        root = make_cohort(cache, n_patients=int(data["n_patients"]), image_size=int(data["image_size"]),
                           seed=int(cfg["seed"]))
    return root


# ----------------------------------------------------------------------------------------
# Stage 1a: MAE


def build_mae(cfg: Mapping[str, Any]) -> MaskedAutoencoderViT:
    """The MAE of the configuration (a named preset or explicit architecture)."""
    sec = cfg["mae"]
    kwargs = {"mask_ratio": float(sec["mask_ratio"]), "norm_pix_loss": bool(sec["norm_pix_loss"])}
    if sec.get("preset"):
        return create_mae(sec["preset"], **kwargs)
    return MaskedAutoencoderViT(**sec["arch"], **kwargs)


def _mae_step(model: nn.Module, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    out = model(batch["cxr"])
    return out.loss, {}


def pretrain_mae(cfg: Mapping[str, Any], out: str | Path, resume: str | None = None) -> dict[str, Any]:
    """Stage 1a: pretrain the CXR MAE and export the random-init and MAE encoders.

    With ``mae.checkpoint`` set, the given weights (facebookresearch, timm or Lightning layout)
    are loaded instead of training.
    """
    out = Path(out)
    root = data_root(cfg, out)
    torch.manual_seed(int(cfg["seed"]))
    mae = build_mae(cfg)
    image_size = mae.img_size
    if is_main_process():  # the random-init baseline: the same architecture before any training
        export_backbone(mae.encoder, out / "backbones" / "random", extra={"stage": "random_init"})
    start = time.perf_counter()
    sec = cfg["mae"]
    if sec.get("checkpoint"):
        report = load_mae_checkpoint(mae, sec["checkpoint"], allow_missing=MAE_DECODER_PREFIXES)
        info: dict[str, Any] = {"loaded_from": str(sec["checkpoint"]), "missing_keys": list(report.missing)}
    else:
        corpus = sec.get("corpus")
        if corpus:  # an unpaired CXR-only corpus of its own (the shipped prior), else the cohort's train split
            cache = Path(cfg["data"].get("cache_dir") or out / "data")
            root = make_cxr_corpus(cache, {"train": int(corpus["n_train"])}, image_size=int(corpus["image_size"]),
                                   seed=int(corpus["seed"]), kind="prior")
        dataset = SymileMIMIC(root, "train", modalities=("cxr",), image_size=image_size,
                              cxr_transform=stage1_train_transform(image_size))
        loader = make_loader(dataset, batch_size=int(sec["batch_size"]), shuffle=True, drop_last=True,
                             num_workers=int(cfg["data"]["num_workers"]), seed=int(cfg["seed"]))
        trainer = Trainer(_trainer_config(cfg, "mae"), out / "mae", run_config={"mae": sec, "data": cfg["data"]})
        result = trainer.fit(mae, loader, _mae_step, resume=resume,
                             extra_meta=lambda m: {"mask_ratio": m.mask_ratio, "last_mask_ratio": m.last_mask_ratio})
        mae = unwrap_model(mae)
        info = {"final_loss": result["metrics"].get("loss"), "steps": result["step"]}
    if not sec.get("checkpoint") and mae.last_mask_ratio != mae.mask_ratio:
        raise RuntimeError(f"MAE trained at mask ratio {mae.last_mask_ratio}, configured {mae.mask_ratio}")
    info.update(mask_ratio=float(mae.mask_ratio), seconds=time.perf_counter() - start)
    if is_main_process():
        export_backbone(mae.encoder, out / "backbones" / "mae", extra={"stage": "mae", "mask_ratio": mae.mask_ratio})
        save_json(mae.config, out / "mae" / "mae_config.json")
        save_safetensors(mae.state_dict(), out / "mae" / "mae_full.safetensors")
    _mark_done(out, "mae", cfg, info)
    return info


# ----------------------------------------------------------------------------------------
# Stage 1b: teachers


def _build_lab_dae(cfg: Mapping[str, Any]) -> LabDAE:
    sec = cfg["lab_dae"]
    return LabDAE(num_labs=50, latent_dim=int(sec["latent_dim"]), hidden_dim=int(sec["hidden_dim"]),
                  corruption_prob=float(sec["corruption_prob"]))


def _lab_step(model: nn.Module, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    loss, _, details = model(batch["labs"], batch["labs_observed"])
    return loss, {"imputation_mse": details["imputation_mse"], "latent_std": details["latent_std"]}


def train_lab_dae(cfg: Mapping[str, Any], out: str | Path, resume: str | None = None) -> dict[str, Any]:
    """Stage 1b: train the mask-aware lab denoising autoencoder on the training split."""
    out = Path(out)
    root = data_root(cfg, out)
    sec = cfg["lab_dae"]
    torch.manual_seed(int(cfg["seed"]))
    dae = _build_lab_dae(cfg)
    dataset = SymileMIMIC(root, "train", modalities=("labs",))
    loader = make_loader(dataset, batch_size=int(sec["batch_size"]), shuffle=True, drop_last=True,
                         seed=int(cfg["seed"]))
    start = time.perf_counter()
    result = Trainer(_trainer_config(cfg, "lab_dae"), out / "lab_dae", run_config={"lab_dae": sec}).fit(
        dae, loader, _lab_step, resume=resume)
    info = {"final_loss": result["metrics"].get("loss"), "seconds": time.perf_counter() - start}
    _mark_done(out, "lab_dae", cfg, info)
    return info


def preprocessed_ecg(root: Path, split: str, cache_dir: Path, chunk: int = 64) -> np.ndarray:
    """ECGs of a split through the ECGFounder chain, computed once and cached as ``.npy``.

    Filtering every record on every epoch would dominate a CPU run, so the filtered,
    z-scored (N, 12, 5000) array is written once (atomically) and memory-mapped afterwards.
    """
    path = cache_dir / f"ecg_{split}.npy"
    if path.is_file():
        return np.load(path, mmap_mode="r")
    raw = SymileMIMIC(root, split, modalities=("ecg",), ecg_preprocess=False)
    n = len(raw)
    first = raw[0]["ecg"].numpy()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".ecg_{split}.tmp.npy"
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, *first.shape))
    for lo in tqdm(range(0, n, chunk), desc=f"ECG preprocessing ({split})", disable=not is_main_process()):
        hi = min(n, lo + chunk)
        block = np.stack([raw[i]["ecg"].numpy() for i in range(lo, hi)])
        arr[lo:hi] = preprocess_ecg(block)
    arr.flush()
    del arr
    tmp.replace(path)
    return np.load(path, mmap_mode="r")


class _ArrayECG(torch.utils.data.Dataset):
    """Items ``{"ecg": (12, T)}`` from a preprocessed array."""

    def __init__(self, ecg: np.ndarray) -> None:
        self.ecg = ecg

    def __len__(self) -> int:
        return len(self.ecg)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"ecg": torch.from_numpy(np.array(self.ecg[index], dtype=np.float32))}


def _ecg_label_names(root: Path) -> list[str]:
    meta_path = root / "cohort.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{meta_path} not found: ECG teacher pretraining needs the cohort's ECG diagnostic labels; "
            "on real data pass --ecgfounder-checkpoint instead")
    return list(load_json(meta_path)["ecg_labels"])


def _build_ecg_net(cfg: Mapping[str, Any], n_classes: int) -> nn.Module:
    arch = cfg["ecg_teacher"]["arch"]
    if arch == "ecgfounder":
        return ecgfounder_12lead(n_classes=n_classes)
    if arch == "small":
        return net1d_small(n_classes=n_classes)
    raise ValueError(f"ecg_teacher.arch must be 'ecgfounder' or 'small', got {arch!r}")


def _ecg_step(model: nn.Module, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    logits = model(batch["ecg"])
    loss = nn.functional.binary_cross_entropy_with_logits(logits, batch["label"])
    return loss, {}


def train_ecg_teacher(cfg: Mapping[str, Any], out: str | Path, resume: str | None = None) -> dict[str, Any]:
    """Stage 1b: the ECG teacher: ECGFounder weights when given, else Net1D trained on ECG labels."""
    out = Path(out)
    sec = cfg["ecg_teacher"]
    start = time.perf_counter()
    folder = out / "ecg_teacher"
    if sec.get("checkpoint"):
        net = ecgfounder_12lead(n_classes=150)
        load_ecgfounder_checkpoint(net, sec["checkpoint"])
        info: dict[str, Any] = {"loaded_from": str(sec["checkpoint"]), "arch": "ecgfounder"}
        if is_main_process():
            save_safetensors(net.state_dict(), folder / "final" / "model.safetensors")
    else:
        root = data_root(cfg, out)
        names = _ecg_label_names(root)
        ecg = preprocessed_ecg(root, "train", out / "ecg_cache")
        hadm = SymileMIMIC(root, "train", modalities=("labs",)).hadm_ids
        labels = load_task_labels(root, "train", names, hadm_ids=hadm)
        dataset = LabelledDataset(_ArrayECG(ecg), labels.astype(np.float32), names=names)
        loader = make_loader(dataset, batch_size=int(sec["batch_size"]), shuffle=True, drop_last=True,
                             seed=int(cfg["seed"]))
        torch.manual_seed(int(cfg["seed"]))
        net = _build_ecg_net(cfg, len(names))
        result = Trainer(_trainer_config(cfg, "ecg_teacher"), folder, run_config={"ecg_teacher": sec}).fit(
            net, loader, _ecg_step, resume=resume)
        info = {"final_loss": result["metrics"].get("loss"), "labels": names, "arch": sec["arch"]}
    info["seconds"] = time.perf_counter() - start
    _mark_done(out, "ecg_teacher", cfg, info)
    return info


def load_teachers(cfg: Mapping[str, Any], out: str | Path) -> dict[str, Any]:
    """The frozen teachers of a run, rebuilt from their saved weights."""
    out = Path(out)
    teachers: dict[str, Any] = {}
    dae = _build_lab_dae(cfg)
    dae.load_state_dict(load_safetensors(out / "lab_dae" / "final" / "model.safetensors"))
    teachers["labs"] = LabTeacher(dae)
    sec = cfg["ecg_teacher"]
    if sec.get("checkpoint"):
        net = ecgfounder_12lead(n_classes=150)
    else:
        names = load_json(out / "ecg_teacher" / "done.json")["labels"]
        net = _build_ecg_net(cfg, len(names))
    net.load_state_dict(load_safetensors(out / "ecg_teacher" / "final" / "model.safetensors"))
    teachers["ecg"] = ECGTeacher(net)
    return teachers


def cache_teachers(cfg: Mapping[str, Any], out: str | Path) -> dict[str, Any]:
    """Compute every teacher's embeddings once per split: ``<out>/teachers/<split>/<name>.npy``."""
    out = Path(out)
    root = data_root(cfg, out)
    teachers = load_teachers(cfg, out)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    shapes: dict[str, Any] = {}
    if is_main_process():
        for split in TEACHER_SPLITS:
            labs = SymileMIMIC(root, split, modalities=("labs",))
            ecg = _ArrayECG(preprocessed_ecg(root, split, out / "ecg_cache"))
            inputs = {"labs": labs, "ecg": ecg}
            for name, teacher in teachers.items():
                loader = torch.utils.data.DataLoader(inputs[name], batch_size=256, shuffle=False)
                emb = compute_teacher_embeddings(teacher, loader, device=device)
                path = out / "teachers" / split / f"{name}.npy"
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, emb.astype(np.float32))
                shapes[f"{split}/{name}"] = list(emb.shape)
    info = {"shapes": shapes, "seconds": time.perf_counter() - start}
    _mark_done(out, "teachers", cfg, info)
    return info


# ----------------------------------------------------------------------------------------
# Stage 2: distillation


def build_distiller(cfg: Mapping[str, Any], student: nn.Module, teacher_dims: Mapping[str, int]) -> PaCXDistiller:
    """The Stage-2 module of the configuration around ``student``."""
    sec = cfg["distill"]
    lora = {"r": sec["lora"]["r"], "alpha": sec["lora"]["alpha"], "dropout": sec["lora"]["dropout"],
            "targets": tuple(sec["lora"]["targets"])}
    return PaCXDistiller(
        student, dict(teacher_dims), shared_dim=int(sec["shared_dim"]), lambda_c=float(sec["lambda_c"]),
        lambda_r=float(sec["lambda_r"]), temperature=float(sec["temperature"]),
        label_smoothing=float(sec["label_smoothing"]), head_dropout=float(sec["head_dropout"]),
        tuning=sec["tuning"], lora=lora, trainable_norms=sec["trainable_norms"],
    )


def _distill_step(model: nn.Module, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    return model(batch["cxr"], batch["teacher_embeddings"])


def distill(cfg: Mapping[str, Any], out: str | Path, resume: str | None = None,
            stage: str = "distill", backbone_name: str = "pacx") -> dict[str, Any]:
    """Stage 2: tune the MAE encoder towards the cached teacher embeddings; export the PaCX encoder."""
    out = Path(out)
    root = data_root(cfg, out)
    sec = cfg["distill"]
    names = list(sec["teachers"])
    embeddings = load_teacher_embeddings(out, "train", names)
    student = load_backbone(out / "backbones" / "mae")
    image_size = student.patch_embed.img_size[0]
    torch.manual_seed(int(cfg["seed"]))
    model = build_distiller(cfg, student, {n: e.shape[1] for n, e in embeddings.items()})
    transform = stage2_train_transform(image_size) if sec.get("augment", True) else None
    dataset = EmbeddingDataset(
        SymileMIMIC(root, "train", modalities=("cxr",), image_size=image_size, cxr_transform=transform), embeddings)
    loader = make_loader(dataset, batch_size=int(sec["batch_size"]), shuffle=True, drop_last=True,
                         num_workers=int(cfg["data"]["num_workers"]), seed=int(cfg["seed"]))
    start = time.perf_counter()
    result = Trainer(_trainer_config(cfg, "distill"), out / stage, run_config={"distill": sec}).fit(
        model, loader, _distill_step, resume=resume)
    model = unwrap_model(model)
    info = {"final_loss": result["metrics"].get("loss"), "metrics": result["metrics"], "teachers": names,
            "seconds": time.perf_counter() - start}
    if is_main_process():
        export_backbone(model.export_encoder(), out / "backbones" / backbone_name,
                        extra={"stage": stage, "teachers": names})
        save_safetensors(model.state_dict(), out / stage / "distiller.safetensors")
    _mark_done(out, stage, cfg, info)
    return info


STAGES: dict[str, Callable[..., dict[str, Any]]] = {
    "mae": pretrain_mae,
    "lab_dae": train_lab_dae,
    "ecg_teacher": train_ecg_teacher,
    "teachers": cache_teachers,
    "distill": distill,
}
