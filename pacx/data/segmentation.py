"""Image + binary mask pairs from two folders (lung segmentation probes).

Images and masks share file names (``image_dir/x.png`` <-> ``mask_dir/x.png``), as in the
NLM Montgomery County set (``cxr/`` and ``masks/``). Images are decoded with MONAI
(:func:`pacx.data.transforms.load_cxr`); masks are resized with anti-aliasing and thresholded
afterwards (:func:`pacx.data.transforms.load_mask`), which also binarises the interpolation
values a resized mask file may hold.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .transforms import load_cxr, load_mask

__all__ = ["IMAGE_SUFFIXES", "ImageMaskDataset", "montgomery_label", "montgomery_patient_id"]

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_ASPECT_TOLERANCE = 0.01
_MONTGOMERY = re.compile(r"^(?P<patient>.+)_(?P<label>[01])$")


def _montgomery_match(path: str | os.PathLike) -> re.Match:
    stem = Path(path).stem
    match = _MONTGOMERY.match(stem)
    if match is None:
        raise ValueError(f"Montgomery file name must end in _0 or _1 before the suffix, got {Path(path).name!r}")
    return match


def montgomery_label(path: str | os.PathLike) -> int:
    """Tuberculosis label from a Montgomery file name: ``..._1.png`` -> 1 (TB), ``..._0.png`` -> 0.

    Raises:
        ValueError: when the name does not end in ``_0``/``_1`` before the suffix.

    Example:
        >>> montgomery_label("MCUCXR_0104_1.png")
        1
    """
    return int(_montgomery_match(path).group("label"))


def montgomery_patient_id(path: str | os.PathLike) -> str:
    """Patient id of a Montgomery file: the name without its label suffix (one image per patient).

    Example:
        >>> montgomery_patient_id("cxr/MCUCXR_0104_1.png")
        'MCUCXR_0104'
    """
    return _montgomery_match(path).group("patient")


def _check_aspect_ratio(image_path: Path, mask_path: Path) -> None:
    """Refuse a mask whose aspect ratio differs from its image's: resizing would stretch it."""
    from PIL import Image

    # Headers only: both files were just decoded, so they open.
    with Image.open(image_path) as image, Image.open(mask_path) as mask:
        (image_w, image_h), (mask_w, mask_h) = image.size, mask.size
    # 1% tolerance: a mask saved at a lower resolution may round one side.
    if abs(mask_h / mask_w - image_h / image_w) > _ASPECT_TOLERANCE * (image_h / image_w):
        raise ValueError(
            f"mask {mask_path} is (H, W) = {(mask_h, mask_w)} but its image {image_path} is {(image_h, image_w)}: "
            "their aspect ratios differ, so resizing both to one size would stretch the mask; "
            "fix the mask file (crop or pad it to the image's aspect ratio)"
        )


class ImageMaskDataset(Dataset):
    """Paired images and binary masks.

    Items: ``cxr`` ``(3, S, S)`` float32 ImageNet-normalised, ``mask`` ``(1, S, S)`` float32 in
    {0, 1}, ``label`` (int64 scalar, only when ``label_fn`` is given), ``patient_id`` (str),
    ``path`` (str) and ``index`` (int).

    Args:
        image_dir: folder of images.
        mask_dir: folder of masks with the same file names.
        image_size: output side length (an int, or ``None`` to keep the file size).
        mask_threshold: mask pixels strictly above it (0..255 scale) are foreground.
            Defaults to 127.
        label_fn: optional ``file name -> int`` image-level label, called with the name relative
            to ``image_dir`` (e.g. :func:`montgomery_label`).
        files: optional file names (relative to ``image_dir``) to use, in order; default: every
            image file of ``image_dir`` (suffixes in :data:`IMAGE_SUFFIXES`), sorted.
        patient_id_fn: optional ``file name -> str``; default: the file stem (one image per patient).
        transform: optional callable ``(image, mask) -> (image, mask)`` for paired augmentation.

    A mask may have another resolution than its image (it is resized with it) but not another
    aspect ratio (beyond 1%): that is refused on access rather than silently stretched.

    Raises:
        FileNotFoundError: when a folder, a listed image or its mask is missing (names it).
        ValueError: when no image is found, ``label_fn`` rejects a file name (raised at
            construction), a file cannot be decoded or a mask's aspect ratio differs from its
            image's (raised on access, naming the files and their sizes).

    Example:
        >>> ds = ImageMaskDataset("montgomery/cxr", "montgomery/masks", 224,
        ...                       label_fn=montgomery_label, patient_id_fn=montgomery_patient_id)  # doctest: +SKIP
        >>> ds[0]["mask"].shape  # doctest: +SKIP
        torch.Size([1, 224, 224])
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        mask_dir: str | os.PathLike,
        image_size: int | None,
        mask_threshold: float = 127.0,
        label_fn: Callable[[str], int] | None = None,
        files: Sequence[str] | None = None,
        patient_id_fn: Callable[[str], str] | None = None,
        transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        self.image_dir, self.mask_dir = Path(image_dir), Path(mask_dir)
        for what, folder in (("image_dir", self.image_dir), ("mask_dir", self.mask_dir)):
            if not folder.is_dir():
                raise FileNotFoundError(f"{what} not found: {folder}")
        if not 0.0 <= mask_threshold <= 255.0:
            raise ValueError(f"mask_threshold must be in [0, 255], got {mask_threshold}")
        if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
            raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
        if files is None:
            names = sorted(
                p.name for p in self.image_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not names:
                raise ValueError(f"no image files {IMAGE_SUFFIXES} in {self.image_dir}")
        else:
            names = [str(f) for f in files]
            if not names:
                raise ValueError("files must list at least one image, got an empty sequence")
        for name in names:
            if not (self.image_dir / name).is_file():
                raise FileNotFoundError(f"image file not found: {self.image_dir / name}")
            if not (self.mask_dir / name).is_file():
                raise FileNotFoundError(f"mask file not found for image {name}: {self.mask_dir / name}")
        self.files = names
        self.image_size = image_size
        self.mask_threshold = float(mask_threshold)
        self.transform = transform
        self.labels = [int(label_fn(n)) for n in names] if label_fn is not None else None
        self.patient_ids = [patient_id_fn(n) if patient_id_fn is not None else Path(n).stem for n in names]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name = self.files[index]
        image = load_cxr(self.image_dir / name, self.image_size)
        mask = load_mask(self.mask_dir / name, self.image_size, threshold=self.mask_threshold)
        _check_aspect_ratio(self.image_dir / name, self.mask_dir / name)
        if tuple(mask.shape[-2:]) != tuple(image.shape[-2:]):
            raise ValueError(
                f"mask {self.mask_dir / name} is {tuple(mask.shape[-2:])} but its image is {tuple(image.shape[-2:])}; "
                "pass image_size to resize both"
            )
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        item: dict[str, Any] = {
            "cxr": image,
            "mask": mask,
            "patient_id": self.patient_ids[index],
            "path": str(self.image_dir / name),
            "index": int(index),
        }
        if self.labels is not None:
            item["label"] = torch.tensor(self.labels[index], dtype=torch.int64)
        return item
