"""Turn a folder of chest X-rays into a matrix of embeddings with an exported backbone.

Images are read as in training (:func:`pacx.data.transforms.load_cxr`: MONAI ``LoadImage``
with the PIL reader and ``reverse_indexing=False``, 8-bit grayscale, resized to the backbone's
input size), DICOM through pydicom when installed (:func:`pacx.data.image_io.read_dicom_gray8`:
modality and VOI LUTs, MONOCHROME1 inverted, the same intensity policy as PNG files), then
replicated to the backbone's channels and normalised with the mean and std of its
``config.json``. A file that cannot be read is reported, never fatal: it gets ``row = -1`` and
its error in the CSV index.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pacx.io import atomic_write

__all__ = ["IMAGE_EXTENSIONS", "EmbeddingReport", "embed_files", "embed_folder", "list_images", "load_image"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
_DICOM_EXTENSIONS = (".dcm", ".dicom")


@dataclass
class EmbeddingReport:
    """What :func:`embed_files` produced.

    Attributes:
        out_npy: the (N, D) float32 embeddings, one row per readable file, in index order.
        index_csv: ``path,row,error`` for every file (``row = -1`` when unreadable).
        num_embedded: number of rows.
        embedding_dim: D.
        failed: ``(path, error)`` of the files that could not be read.

    Example:
        >>> report = EmbeddingReport(Path("e.npy"), Path("e.csv"), 2, 768, [("bad.png", "ValueError: ...")])
        >>> print(report.summary().splitlines()[2])
        could not read 1 file(s):
    """

    out_npy: Path
    index_csv: Path
    num_embedded: int
    embedding_dim: int
    failed: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        """A few human-readable lines: counts, outputs and every failure."""
        lines = [
            f"embedded {self.num_embedded} image(s) -> {self.out_npy} ({self.num_embedded} x {self.embedding_dim})",
            f"index: {self.index_csv}",
        ]
        if self.failed:
            lines.append(f"could not read {len(self.failed)} file(s):")
            lines += [f"  {path}: {error}" for path, error in self.failed]
        return "\n".join(lines)


def list_images(
    image_dir: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS, recursive: bool = True
) -> list[Path]:
    """Image files under ``image_dir`` (case-insensitive extension match), sorted.

    Raises:
        FileNotFoundError: when ``image_dir`` is not a folder.
    """
    root = Path(image_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    wanted = {e.lower() for e in extensions}
    candidates = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in candidates if p.is_file() and p.suffix.lower() in wanted)


def load_image(
    path: str | os.PathLike,
    image_size: Sequence[int],
    in_chans: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> torch.Tensor:
    """Read one image and prepare it as a backbone input.

    PNG/JPEG/... go through :func:`pacx.data.transforms.load_cxr` (MONAI ``LoadImage`` with the
    PIL reader and ``reverse_indexing=False``, 8-bit grayscale, antialiased bilinear resize), the
    preprocessing used in training; DICOM files through
    :func:`pacx.data.image_io.read_dicom_gray8` (modality LUT, VOI LUT or min-max, MONOCHROME1
    inverted; see :mod:`pacx.data.image_io` for the intensity policy shared with PNG files), then
    the same resize. The grayscale image is replicated to ``in_chans`` channels and normalised
    with ``mean``/``std``.

    Args:
        path: image file.
        image_size: (H, W) of the backbone input.
        in_chans: backbone input channels.
        mean: per-channel mean (None: ImageNet's).
        std: per-channel std (None: ImageNet's).

    Returns:
        (in_chans, H, W) float32 tensor.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when it cannot be decoded, or ``mean``/``std`` do not have ``in_chans`` values.
    """
    from pacx.data.transforms import IMAGENET_MEAN, IMAGENET_STD, load_cxr  # MONAI: imported lazily

    path = Path(path)
    size = tuple(int(v) for v in image_size)
    mean = tuple(float(v) for v in (IMAGENET_MEAN if mean is None else mean))
    std = tuple(float(v) for v in (IMAGENET_STD if std is None else std))
    if len(mean) != in_chans or len(std) != in_chans:
        raise ValueError(f"mean and std must have in_chans={in_chans} values, got {len(mean)} and {len(std)}")
    if path.suffix.lower() in _DICOM_EXTENSIONS:
        from pacx.data.image_io import read_dicom_gray8

        gray = torch.from_numpy(read_dicom_gray8(path).astype(np.float32))
        # Resize on the 0..255 scale, then scale, in load_cxr's order, so DICOM and PNG agree.
        gray = F.interpolate(gray[None, None], size=size, mode="bilinear", align_corners=False, antialias=True)[0, 0]
        gray = gray / 255.0
    else:
        image = load_cxr(path, size)  # (3, H, W), ImageNet-normalised grayscale
        if in_chans == 3 and mean == tuple(IMAGENET_MEAN) and std == tuple(IMAGENET_STD):
            return image  # exactly the training input
        gray = image[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    pixels = gray.expand(in_chans, *size)
    return ((pixels - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)).contiguous().float()


def embed_files(
    backbone: str | os.PathLike | nn.Module,
    paths: Iterable[str | os.PathLike],
    out_npy: str | os.PathLike,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    root: str | os.PathLike | None = None,
    progress: bool = True,
    image_config: dict | None = None,
) -> EmbeddingReport:
    """Embed image files with a backbone and write ``out_npy`` plus a CSV index beside it.

    Args:
        backbone: a folder from :func:`pacx.engine.export_backbone`, or a module together with
            ``image_config`` (``{"image_size", "in_chans", "mean", "std"}``).
        paths: image files, embedded in this order.
        out_npy: destination ``.npy``; the index goes to the same name with ``.csv``.
        batch_size: images per forward pass.
        device: where the backbone runs.
        root: paths in the CSV are written relative to it when given.
        progress: show a tqdm bar.
        image_config: input contract when ``backbone`` is a module.

    Returns:
        The :class:`EmbeddingReport`.

    Raises:
        ValueError: when ``batch_size`` is not positive, ``out_npy`` does not end in ``.npy``
            or a module is given without ``image_config``.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    out_npy = Path(out_npy)
    if out_npy.suffix != ".npy":
        raise ValueError(f"out_npy must end with .npy, got {out_npy}")
    if isinstance(backbone, nn.Module):
        if image_config is None:
            raise ValueError("image_config is required when backbone is a module, got None")
        model, cfg = backbone, image_config
    else:
        from .export import backbone_input_config, load_backbone

        model, cfg = load_backbone(backbone), backbone_input_config(backbone)
    model = model.to(device).eval()
    paths = [Path(p) for p in paths]
    index_csv = out_npy.with_suffix(".csv")

    def shown(p: Path) -> str:
        return str(p.relative_to(root)) if root is not None else str(p)

    rows: list[tuple[str, int, str]] = []
    chunks: list[np.ndarray] = []
    pending: list[torch.Tensor] = []
    failed: list[tuple[str, str]] = []
    num_rows = 0

    def flush() -> None:
        if pending:
            with torch.no_grad():
                feats = model(torch.stack(pending).to(device))
            chunks.append(feats.float().cpu().numpy())
            pending.clear()

    for path in tqdm(paths, desc="embed", disable=not progress, dynamic_ncols=True):
        try:
            image = load_image(path, cfg["image_size"], cfg["in_chans"], cfg.get("mean"), cfg.get("std"))
        except Exception as err:  # a bad file is reported, the rest is still embedded
            message = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".strip()
            rows.append((shown(path), -1, message))
            failed.append((shown(path), message))
            continue
        pending.append(image)
        rows.append((shown(path), num_rows, ""))
        num_rows += 1
        if len(pending) == batch_size:
            flush()
    flush()

    dim = int(getattr(model, "num_features", 0) or (chunks[0].shape[1] if chunks else 0))
    embeddings = np.concatenate(chunks, 0) if chunks else np.zeros((0, dim), dtype=np.float32)

    def write_npy(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # a file handle: np.save would append ".npy" to the temp name
            np.save(fh, embeddings.astype(np.float32))

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "row", "error"])
            writer.writerows(rows)

    atomic_write(out_npy, write_npy)
    atomic_write(index_csv, write_csv)
    return EmbeddingReport(
        out_npy=out_npy, index_csv=index_csv, num_embedded=num_rows, embedding_dim=dim, failed=failed
    )


def embed_folder(
    backbone_dir: str | os.PathLike,
    image_dir: str | os.PathLike,
    out_npy: str | os.PathLike,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    recursive: bool = True,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    progress: bool = True,
) -> EmbeddingReport:
    """Embed every image under ``image_dir`` (sorted paths; CSV paths relative to it).

    Args:
        backbone_dir: folder from :func:`pacx.engine.export_backbone`.
        image_dir: folder of PNG/JPEG (and DICOM) files.
        out_npy: destination ``.npy`` (index CSV beside it).
        batch_size: images per forward pass.
        device: where the backbone runs.
        recursive: include sub-folders.
        extensions: file extensions considered images.
        progress: show a tqdm bar.

    Returns:
        The :class:`EmbeddingReport`.

    Example:
        >>> report = embed_folder("runs/pacx/backbone", "cxr_pngs/", "emb.npy")  # doctest: +SKIP
        >>> print(report.summary())  # doctest: +SKIP
    """
    paths = list_images(image_dir, extensions=extensions, recursive=recursive)
    return embed_files(
        backbone_dir, paths, out_npy, batch_size=batch_size, device=device, root=image_dir, progress=progress
    )
