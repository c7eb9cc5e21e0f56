"""Chest X-ray image transforms: MONAI file loading and tensor augmentations per stage.

Every CXR in pacx, from a file or from a Symile ``.npy`` array, becomes a ``(3, H, W)`` float
tensor, grayscale replicated to three channels and ImageNet-normalised. Files are decoded by
MONAI (:func:`load_cxr_transform`, :func:`load_cxr`) with ``PILReader(reverse_indexing=False)``:
MONAI's default PIL reader swaps the two spatial axes, so a non-square image would come out
transposed compared with PIL/torchvision. The stage transforms (:func:`stage1_train_transform`,
:func:`stage2_train_transform`, :func:`eval_transform`) then work on such normalised tensors,
so the same code serves files and arrays. They use ``torchvision.transforms.v2`` because MONAI
has no area/aspect-ratio ``RandomResizedCrop`` nor a ``RandomErasing`` with the reference's
parameters.

Randomness: a :class:`CXRTransform` built with a ``torch.Generator`` draws one seed per call
from it and runs the augmentation under that seed in a forked RNG state, so a given generator
seed reproduces the same sequence of augmentations without touching the global RNG. Without a
generator the global torch RNG is used: ``monai.utils.set_determinism(seed)`` or
``torch.manual_seed(seed)`` makes a run reproducible, and ``torch.utils.data.DataLoader`` gives
each worker its own torch seed.

Batch augmentation on the device (:class:`~pacx.data.batch_augment.BatchAugment`,
``stage2_batch_transform``, ``eval_batch_transform``) lives in :mod:`pacx.data.batch_augment`;
the names stay importable from here.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor, PILReader
from monai.transforms import (
    Compose,
    EnsureChannelFirst,
    EnsureType,
    LoadImage,
    NormalizeIntensity,
    RepeatChannel,
    ScaleIntensityRange,
    Transform,
)
from torchvision.transforms import v2

from pacx.constants import IMAGENET_MEAN, IMAGENET_STD

from .image_io import to_grayscale_8bit  # the intensity policy for >8-bit files lives there

__all__ = [
    "CXRTransform",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "denormalize_imagenet",
    "eval_transform",
    "load_cxr",
    "load_cxr_transform",
    "load_mask",
    "normalize_imagenet",
    "stage1_train_transform",
    "stage2_train_transform",
    "to_grayscale_8bit",
]

# Names that moved to pacx.data.batch_augment; resolved on first access so that this module
# does not import the one that imports its helpers (_size_pair, _stats).
_MOVED_TO_BATCH_AUGMENT = ("BatchAugment", "eval_batch_transform", "stage2_batch_transform")


def __getattr__(name: str) -> Any:
    if name in _MOVED_TO_BATCH_AUGMENT:
        from . import batch_augment

        return getattr(batch_augment, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _size_pair(image_size: int | Sequence[int], name: str = "image_size") -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        pair = (int(image_size), int(image_size))
    elif isinstance(image_size, Sequence) and len(image_size) == 2:
        pair = (int(image_size[0]), int(image_size[1]))
    else:
        raise ValueError(f"{name} must be an int or a (height, width) pair, got {image_size!r}")
    if min(pair) < 1:
        raise ValueError(f"{name} must be positive, got {image_size!r}")
    return pair


class _AntialiasedResize(Transform):
    """Bilinear resize of a channel-first image with torch's built-in anti-aliasing.

    Used instead of ``monai.transforms.Resize(anti_aliasing=True)``, whose Gaussian
    pre-smoothing costs seconds on full-resolution CXRs (4.6 s vs 0.06 s at 2500x3000 on CPU),
    and it matches ``torchvision``'s ``Resize(antialias=True)`` used on tensors.
    """

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(img, dtype=torch.float32)
        if isinstance(x, MetaTensor):
            x = x.as_tensor()
        if tuple(x.shape[-2:]) == self.size:
            return x
        return F.interpolate(x[None], size=self.size, mode="bilinear", align_corners=False, antialias=True)[0]


def _loader(image_size: int | Sequence[int] | None) -> list:
    reader = PILReader(converter=to_grayscale_8bit, reverse_indexing=False)
    with warnings.catch_warnings():
        # Registering MONAI's default readers warns about an optional GPU DICOM codec that
        # this PIL-only loader never uses.
        warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
        load = LoadImage(reader=reader, image_only=True)
    # LoadImage also registers every default reader and falls back to them when ours fails;
    # a corrupt PNG must not be retried as DICOM or .npy, so keep only the PIL reader.
    load.readers = [r for r in load.readers if r is reader]
    steps: list = [load, EnsureChannelFirst(channel_dim="no_channel")]
    if image_size is not None:
        steps.append(_AntialiasedResize(_size_pair(image_size)))
    return steps


def load_cxr_transform(image_size: int | Sequence[int] | None = None) -> Compose:
    """MONAI pipeline from an image file path to a ``(3, H, W)`` ImageNet-normalised tensor.

    Steps: ``LoadImage`` (PIL, ``reverse_indexing=False`` so rows stay rows; any mode is turned
    into 8-bit grayscale by :func:`to_grayscale_8bit`) -> channel first -> optional bilinear
    resize with torch's anti-aliasing to ``image_size`` (aspect ratio not kept, as the
    reference's ``Resize((S, S))``) -> scale 0..255 to [0, 1] -> replicate to 3 channels ->
    ImageNet normalisation -> plain ``torch.Tensor`` (no MONAI metadata).

    Args:
        image_size: output size, an int (square) or ``(height, width)``; ``None`` keeps the
            file's size.

    Returns:
        A ``monai.transforms.Compose`` mapping a path to a float32 tensor.

    Raises:
        ValueError: on an invalid ``image_size``.

    Example:
        >>> load = load_cxr_transform(224)
        >>> load("montgomery/cxr/MCUCXR_0001_0.png").shape  # doctest: +SKIP
        torch.Size([3, 224, 224])
    """
    steps = _loader(image_size)
    steps += [
        ScaleIntensityRange(a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0),
        RepeatChannel(repeats=3),
        NormalizeIntensity(subtrahend=np.array(IMAGENET_MEAN), divisor=np.array(IMAGENET_STD), channel_wise=True),
        EnsureType(data_type="tensor", dtype=torch.float32, track_meta=False),
    ]
    return Compose(steps)


# Pipelines are cached per size: building a LoadImage registers every MONAI reader, which is
# slow and noisy, while the deterministic pipelines themselves hold no state.
@functools.lru_cache(maxsize=16)
def _cxr_pipeline(size: tuple[int, int] | None) -> Compose:
    return load_cxr_transform(size)


@functools.lru_cache(maxsize=16)
def _mask_pipeline(size: tuple[int, int] | None) -> Compose:
    return Compose(_loader(size) + [EnsureType(data_type="tensor", dtype=torch.float32, track_meta=False)])


def _decode_failure(path: Path, err: BaseException) -> str:
    from PIL import Image

    # MONAI's message lists readers and tracebacks; PIL's own error is the useful reason.
    try:
        with Image.open(path) as image:
            image.load()
    except Exception as pil_err:
        return f"{type(pil_err).__name__}: {pil_err}"
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def _run_loader(pipeline: Compose, path: str | Path) -> torch.Tensor:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        out = pipeline(str(path))
    except Exception as err:  # MONAI wraps decoder errors in RuntimeError; name the file instead
        raise ValueError(f"cannot decode image file {path}: {_decode_failure(path, err)}") from err
    if isinstance(out, MetaTensor):
        out = out.as_tensor()
    return torch.as_tensor(out, dtype=torch.float32)


def load_cxr(path: str | Path, image_size: int | Sequence[int] | None = None) -> torch.Tensor:
    """Load one CXR file with :func:`load_cxr_transform`.

    Args:
        path: image file (PNG, JPEG, TIFF, BMP... anything PIL decodes).
        image_size: optional output size (int or ``(height, width)``).

    Returns:
        ``(3, H, W)`` float32 tensor, ImageNet-normalised.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when the file cannot be decoded (the message names it).
    """
    return _run_loader(_cxr_pipeline(None if image_size is None else _size_pair(image_size)), path)


def load_mask(
    path: str | Path, image_size: int | Sequence[int] | None = None, threshold: float = 127.0
) -> torch.Tensor:
    """Load a binary mask image as a ``(1, H, W)`` float tensor of 0/1.

    The 8-bit mask is resized bilinearly with anti-aliasing (when ``image_size`` is given) and
    THEN thresholded, so boundaries follow the area majority instead of nearest-neighbour
    aliasing, and resize interpolation values in the file are binarised too.

    Args:
        path: mask file.
        image_size: optional output size (int or ``(height, width)``).
        threshold: pixels strictly above it (on the 0..255 scale) are foreground. Defaults to 127.

    Returns:
        ``(1, H, W)`` float32 tensor with values in {0, 1}.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when the file cannot be decoded or ``threshold`` is outside [0, 255].
    """
    if not 0.0 <= threshold <= 255.0:
        raise ValueError(f"threshold must be in [0, 255], got {threshold}")
    mask = _run_loader(_mask_pipeline(None if image_size is None else _size_pair(image_size)), path)
    return (mask > threshold).to(torch.float32)


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (3, 1, 1) if x.ndim == 3 else (1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(shape)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(shape)
    return mean, std


def _check_image(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"{name} must have shape (3, H, W) or (B, 3, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got dtype {x.dtype}")


def normalize_imagenet(x: torch.Tensor) -> torch.Tensor:
    """Map a [0, 1] image ``(3, H, W)`` or ``(B, 3, H, W)`` to ImageNet-normalised values."""
    _check_image(x)
    mean, std = _stats(x)
    return (x - mean) / std


def denormalize_imagenet(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize_imagenet` (back to the [0, 1] intensity scale)."""
    _check_image(x)
    mean, std = _stats(x)
    return x * std + mean


class CXRTransform:
    """A tensor augmentation for ImageNet-normalised ``(3, H, W)`` CXRs, optionally seeded.

    ``pre`` runs on the normalised tensor; ``on_unit`` runs on the un-normalised [0, 1] image
    (intensity operations need the true intensity scale) and is followed by re-normalisation;
    ``post`` runs on the re-normalised tensor.

    Args:
        pre: transforms applied to the normalised input (e.g. geometry).
        on_unit: transforms applied between un-normalisation and re-normalisation.
        post: transforms applied after re-normalisation.
        generator: optional ``torch.Generator``; when given, each call draws a seed from it and
            runs under ``torch.random.fork_rng`` with that seed, so results depend only on the
            generator's state (the global RNG is left untouched).

    Example:
        >>> t = CXRTransform(pre=[v2.Resize((32, 32), antialias=True)])
        >>> t(torch.zeros(3, 64, 48)).shape
        torch.Size([3, 32, 32])
    """

    def __init__(
        self,
        pre: Sequence[Callable] = (),
        on_unit: Sequence[Callable] = (),
        post: Sequence[Callable] = (),
        generator: torch.Generator | None = None,
    ) -> None:
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.pre = v2.Compose(list(pre)) if pre else None
        self.on_unit = v2.Compose(list(on_unit)) if on_unit else None
        self.post = v2.Compose(list(post)) if post else None
        self.generator = generator

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre is not None:
            x = self.pre(x)
        if self.on_unit is not None:
            x = normalize_imagenet(self.on_unit(denormalize_imagenet(x).clamp(0.0, 1.0)))
        if self.post is not None:
            x = self.post(x)
        return x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Augment one image ``(3, H, W)`` (or a batch, which then shares one random draw)."""
        _check_image(x)
        if self.generator is None:
            return self._apply(x)
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._apply(x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(pre={self.pre}, on_unit={self.on_unit}, post={self.post})"


def stage1_train_transform(
    image_size: int, scale: tuple[float, float] = (0.5, 1.0), generator: torch.Generator | None = None
) -> CXRTransform:
    """Stage-1 (MAE) training augmentation: random resized crop + horizontal flip.

    ``RandomResizedCrop(image_size, scale=(0.5, 1.0))`` with the default aspect-ratio range
    (3/4, 4/3), bilinear with anti-aliasing, then ``RandomHorizontalFlip(0.5)``. Both commute
    with the per-channel ImageNet affine map, so they run on the normalised tensor directly.

    Args:
        image_size: output side length.
        scale: crop area range as a fraction of the image. Defaults to (0.5, 1.0).
        generator: optional generator for reproducible draws (see :class:`CXRTransform`).

    Returns:
        A :class:`CXRTransform` mapping ``(3, H, W)`` to ``(3, image_size, image_size)``.
    """
    size = _size_pair(image_size)
    if not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {scale}")
    return CXRTransform(
        pre=[v2.RandomResizedCrop(size, scale=tuple(scale), antialias=True), v2.RandomHorizontalFlip(0.5)],
        generator=generator,
    )


def stage2_train_transform(image_size: int, generator: torch.Generator | None = None) -> CXRTransform:
    """Stage-2 (distillation) training augmentation, as the reference's ``RobustTrainTransforms``.

    On the un-normalised [0, 1] image: ``RandomResizedCrop(image_size, scale=(0.75, 1.0),
    ratio=(0.85, 1.15))``; with p=0.6 ``RandomAffine(10 deg, translate 0.1, scale 0.9-1.1,
    fill 0)``; with p=0.3 ``ColorJitter(brightness=0.2, contrast=0.2)``; with p=0.15
    ``GaussianBlur(5, sigma in [0.1, 2])``. Then re-normalise, then ``RandomErasing(p=0.25,
    scale=(0.02, 0.1), ratio=(0.3, 3.3), value=0)`` on the normalised tensor (erased patches
    take the ImageNet mean). There is deliberately NO horizontal flip: heart and lung sides
    carry physiology.

    Args:
        image_size: output side length.
        generator: optional generator for reproducible draws (see :class:`CXRTransform`).

    Returns:
        A :class:`CXRTransform` mapping ``(3, H, W)`` to ``(3, image_size, image_size)``.
    """
    size = _size_pair(image_size)
    return CXRTransform(
        on_unit=[
            v2.RandomResizedCrop(size, scale=(0.75, 1.0), ratio=(0.85, 1.15), antialias=True),
            v2.RandomApply([v2.RandomAffine(degrees=10.0, translate=(0.1, 0.1), scale=(0.9, 1.1), fill=0.0)], p=0.6),
            v2.RandomApply([v2.ColorJitter(brightness=0.2, contrast=0.2)], p=0.3),
            v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 2.0))], p=0.15),
        ],
        post=[v2.RandomErasing(p=0.25, scale=(0.02, 0.1), ratio=(0.3, 3.3), value=0.0)],
        generator=generator,
    )


def eval_transform(image_size: int | Sequence[int]) -> CXRTransform:
    """Deterministic evaluation transform: anti-aliased bilinear resize to ``image_size``.

    Args:
        image_size: an int (square output) or ``(height, width)``.

    Returns:
        A :class:`CXRTransform` mapping ``(3, H, W)`` to ``(3, *image_size)``.
    """
    return CXRTransform(pre=[v2.Resize(_size_pair(image_size), antialias=True)])

