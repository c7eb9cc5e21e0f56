"""Data-loader throughput of Stage-2 CXR batches from memory-mapped Symile arrays (one process).

Reads the ``train`` split of a cohort in the Symile-MIMIC layout with :class:`pacx.data.SymileMIMIC`
(``modalities=("cxr",)``, rows copied out of ``np.load(mmap_mode="r")``), resizes to the model's
input size, applies :func:`pacx.data.stage2_train_transform`, and batches through
:func:`pacx.engine.make_loader` (``pin_memory`` on CUDA, where each batch is also copied to the
GPU with ``non_blocking=True``). Measured for several worker counts and two storage variants:

* ``float32``: ``(N, 3, S, S)`` float32, ImageNet-normalised (the Symile release's format);
* ``uint8``: ``(N, 1, S, S)`` uint8 grayscale, which :class:`SymileMIMIC` also reads (12x
  fewer bytes; converted, replicated to 3 channels and normalised per item).

and three ways of producing a training batch:

* ``read``: :class:`SymileMIMIC` with resize, no augmentation (the floor of the per-item path);
* ``per sample``: :class:`SymileMIMIC` + :func:`pacx.data.stage2_train_transform` in the workers;
* ``batch, on device``: the workers only read the stored rows as they are (uint8 stays uint8) and
  collate; the batch is copied to ``--device`` and :func:`pacx.data.stage2_batch_transform`
  converts, resizes and augments it there (timed up to a device synchronisation).

By default the synthetic cohort is generated once into ``--cache-dir`` (``make_cohort`` at
``--cohort-size``) and both variants are written from it at ``--stored-size`` (resized when
the sizes differ: ``--paper`` stores 320 px like the Symile release and trains at 224). Pass
``--root`` to read an existing cohort instead (its ``cxr_train.npy`` is the float32 variant).
Rows are repeated as needed so an epoch holds enough batches; after a few runs the files sit in
the page cache, as a training split that fits in RAM does after its first epoch, so this
measures decoding and augmentation, not the disk.

Per configuration: a fresh iterator, ``max(1, workers)`` batches to fill the pipeline, then
``--batches`` timed batches; the median over ``--repeats`` such samples (configurations
rotate between samples). ``--model-ips`` (a model step's images/s, e.g. from
``bench_distill.py``) adds the headroom column: loader images/s / model images/s (> 1: the
loader keeps up).

Run (CPU, small): ``python benchmarks/bench_data.py --threads 1``
Run (GPU, paper): ``python benchmarks/bench_data.py --device cuda --paper --model-ips 2500 --json data.json``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import add_common_args, print_header, print_table, repeat_dataset, setup, sync, write_json  # noqa: E402

from torch.utils.data import Dataset  # noqa: E402

from pacx.data import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    SymileMIMIC,
    stage2_batch_transform,
    stage2_train_transform,
)
from pacx.data.synthetic import make_cohort  # noqa: E402
from pacx.engine import make_loader, move_to_device  # noqa: E402

SPLIT = "train"
CHUNK = 64  # rows converted at a time when writing variants


def _write_split(folder: Path, name: str, array_fn: Any, shape: tuple[int, ...], dtype: Any, hadm: np.ndarray) -> None:
    split_dir = folder / "data_npy" / SPLIT
    split_dir.mkdir(parents=True, exist_ok=True)
    np.save(split_dir / f"hadm_id_{SPLIT}.npy", hadm)
    tmp = split_dir / f".{name}_{SPLIT}.tmp.npy"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
    for lo in range(0, shape[0], CHUNK):
        out[lo : lo + CHUNK] = array_fn(lo, min(lo + CHUNK, shape[0]))
    out.flush()
    del out
    os.replace(tmp, split_dir / f"{name}_{SPLIT}.npy")


def storage_variants(root: Path, stored_size: int, cache: Path) -> dict[str, Path]:
    """Cohort roots holding the train split's CXRs as float32 (N,3,S,S) and uint8 (N,1,S,S) at ``stored_size``."""
    split_dir = root / "data_npy" / SPLIT
    src = np.load(split_dir / f"cxr_{SPLIT}.npy", mmap_mode="r")
    if src.dtype != np.float32 or src.ndim != 4 or src.shape[1] != 3:
        raise ValueError(f"--root must hold float32 (N, 3, S, S) CXRs, got {src.dtype} {src.shape}")
    hadm = np.load(split_dir / f"hadm_id_{SPLIT}.npy")
    n, size = src.shape[0], src.shape[-1]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def float_rows(lo: int, hi: int) -> np.ndarray:
        x = torch.from_numpy(np.array(src[lo:hi]))
        if size != stored_size:
            x = F.interpolate(x, size=(stored_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
        return x.numpy()

    def uint8_rows(lo: int, hi: int) -> np.ndarray:
        unit = (torch.from_numpy(float_rows(lo, hi)) * std + mean)[:, :1]  # grayscale: channels are equal
        return unit.clamp(0, 1).mul(255).round().to(torch.uint8).numpy()

    key = f"{root.name}_{n}_{size}_to_{stored_size}"
    variants = {"float32": root if size == stored_size else cache / "variants" / key / "float32",
                "uint8": cache / "variants" / key / "uint8"}
    if variants["float32"] != root and not (variants["float32"] / "data_npy" / SPLIT / f"cxr_{SPLIT}.npy").exists():
        _write_split(variants["float32"], "cxr", float_rows, (n, 3, stored_size, stored_size), np.float32, hadm)
    if not (variants["uint8"] / "data_npy" / SPLIT / f"cxr_{SPLIT}.npy").exists():
        _write_split(variants["uint8"], "cxr", uint8_rows, (n, 1, stored_size, stored_size), np.uint8, hadm)
    return variants


class StoredRows(Dataset):
    """The ``cxr`` rows of one split exactly as stored (uint8 stays uint8, no resize): the input of
    the batch augmentation, which does the conversion on the device."""

    def __init__(self, root: Path) -> None:
        self.path = root / "data_npy" / SPLIT / f"cxr_{SPLIT}.npy"
        self.length = int(np.load(self.path, mmap_mode="r").shape[0])
        self._array: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None}  # workers reopen the memory map

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return {"cxr": torch.from_numpy(np.array(self._array[index]))}


def sample_images_per_second(loader: Any, fill: int, batches: int, device: torch.device,
                             augment: Any = None) -> float:
    """One sample: a fresh iterator, ``fill`` untimed batches, then ``batches`` timed ones (copied to
    ``device`` off CPU, then passed through ``augment`` when given)."""
    it = iter(loader)

    def produce() -> dict[str, Any]:
        batch = next(it)
        if device.type != "cpu":
            batch = move_to_device(batch, device, non_blocking=True)
        if augment is not None:
            batch["cxr"] = augment(batch["cxr"])
        return batch

    for _ in range(fill):
        produce()
    images = 0
    start = time.perf_counter()
    for _ in range(batches):
        images += produce()["cxr"].shape[0]
    sync(device)
    return images / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--root", default=None, help="existing cohort root (holds data_npy/); default: synthetic")
    parser.add_argument("--cache-dir", default=os.environ.get("PACX_BENCH_CACHE", "/tmp/pacx_bench_cache"),
                        help="where the synthetic cohort and storage variants are written")
    parser.add_argument("--n-patients", type=int, default=600, help="synthetic cohort size (train = 50%%)")
    parser.add_argument("--cohort-size", type=int, default=64, help="image size the synthetic cohort is generated at")
    parser.add_argument("--stored-size", type=int, default=None, help="stored CXR side (default: cohort's; --paper 320)")
    parser.add_argument("--image-size", type=int, default=None, help="model input side (default 64; --paper 224)")
    parser.add_argument("--batch", type=int, default=None,
                        help="batch (default 32; --paper 64: images/s hardly depend on it, and a 0-worker sample of "
                             "256 augmented 224-px images would take ~10 s)")
    parser.add_argument("--workers", default=None, help="worker counts (default 0,1,2; --paper 0,4,8,12)")
    parser.add_argument("--batches", type=int, default=None, help="timed batches per sample (default 6; --paper 8)")
    parser.add_argument("--model-ips", type=float, default=None, help="model step images/s, for the headroom column")
    args = parser.parse_args(argv)
    device = setup(args, repeats=(3, 2), warmup=(0, 0))
    paper = args.paper
    args.image_size = args.image_size or (224 if paper else 64)
    args.batch = args.batch or (64 if paper else 32)
    args.workers = args.workers or ("0,4,8,12" if paper else "0,1,2")
    args.batches = args.batches or (8 if paper else 6)
    workers = list(dict.fromkeys(int(w) for w in args.workers.split(",") if w.strip()))  # gpu_check may repeat one
    print_header("bench_data", device, args, f"batch={args.batch} image_size={args.image_size} workers={workers}")

    cache = Path(args.cache_dir)
    start = time.perf_counter()
    if args.root:
        root = Path(args.root)
    else:
        root = make_cohort(cache / "cohorts", n_patients=args.n_patients, image_size=args.cohort_size, seed=args.seed)
    stored = args.stored_size or (320 if paper else int(np.load(root / "data_npy" / SPLIT / f"cxr_{SPLIT}.npy",
                                                                  mmap_mode="r").shape[-1]))
    args.stored_size = stored
    variants = storage_variants(root, stored, cache)
    print(f"cohort {root} + variants at {stored} px ready in {time.perf_counter() - start:.1f} s")

    modes = ("read", "per sample", "batch, on device")
    configs = []  # (storage, workers, mode)
    for storage in variants:
        configs.append((storage, 0, "read"))
        configs += [(storage, w, mode) for mode in modes[1:] for w in workers]
    loaders, augments = {}, {}
    for storage, w, mode in configs:
        if mode == "batch, on device":
            base = StoredRows(variants[storage])
            augments[(storage, w, mode)] = stage2_batch_transform(
                args.image_size, generator=torch.Generator().manual_seed(args.seed))
        else:
            base = SymileMIMIC(variants[storage], SPLIT, modalities=("cxr",), image_size=args.image_size,
                               cxr_transform=stage2_train_transform(args.image_size) if mode == "per sample" else None)
        need = (max(1, w) + args.batches) * args.batch
        dataset = repeat_dataset(base, need)
        loaders[(storage, w, mode)] = make_loader(dataset, batch_size=args.batch, shuffle=True, drop_last=True,
                                                  num_workers=w, seed=args.seed, pin_memory=device.type == "cuda")
    samples: dict[tuple, list[float]] = {c: [] for c in configs}
    for r in range(args.repeats):
        shift = r % len(configs)
        for config in configs[shift:] + configs[:shift]:
            samples[config].append(sample_images_per_second(loaders[config], max(1, config[1]), args.batches, device,
                                                            augments.get(config)))
    del loaders  # shuts the persistent workers down

    rows = []
    median = {c: statistics.median(v) for c, v in samples.items()}
    read_label = "no (read)" if stored == args.image_size else "no (read+resize)"
    for storage, w, mode in configs:
        ips = median[(storage, w, mode)]
        nbytes = np.load(variants[storage] / "data_npy" / SPLIT / f"cxr_{SPLIT}.npy", mmap_mode="r")[0].nbytes
        per_sample = median.get((storage, w, "per sample"))
        rows.append({
            "storage": storage,
            "bytes/row": nbytes,
            "workers": w,
            "stage-2 aug": mode if mode != "read" else read_label,
            "images/s": ips,
            "vs per sample": ips / per_sample if per_sample else None,
            "uint8 / float32": ips / median[("float32", w, mode)] if storage == "uint8" else None,
            "headroom vs model": ips / args.model_ips if args.model_ips else None,
        })
    print_table(f"Loader images/s, batch {args.batch}, stored {stored} px -> {args.image_size} px, "
                f"median of {args.repeats} x {args.batches} batches", list(rows[0]), rows)
    if args.model_ips:
        print(f"\nheadroom = loader images/s / model images/s ({args.model_ips:.1f}); > 1 means the loader keeps up")
    write_json(args.json, "bench_data", device, args, {"loader": rows})


if __name__ == "__main__":
    main()
