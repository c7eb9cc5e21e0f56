"""Pixel intensities of CXR files: one policy from PNG/JPEG/TIFF and DICOM to 8-bit grayscale.

Every CXR in pacx goes through 8-bit grayscale (the training data, Symile-MIMIC's JPEG-derived
arrays, is 8-bit), bright = dense. How a file's values become 0..255:

* **8-bit images** (PNG, JPEG, BMP...; grayscale, colour or palette): kept as stored, colour
  through PIL's luminance weights.
* **Integer images with more than 8 bits** (16-bit PNG/TIFF, including 12-bit detector values
  stored in a 16-bit PNG): the file does not say which part of the 16-bit range is used (a
  12-bit image fills 0..4095, a rescaled export 0..65535), so the image's own range is
  stretched to 0..255 (min-max), as a DICOM viewer does without a window. Dividing by 256
  would leave a 12-bit image near-black.
* **Float images**: min-max.
* **DICOM**: the modality LUT (Rescale Slope/Intercept or Modality LUT Sequence) turns stored
  values into modality units; then, when the file carries one, the VOI LUT (Window
  Center/Width, or the VOI LUT Sequence, which DICOM prefers when both are present; the first
  view) is applied and its output range is mapped to 0..255, so pixels outside the window clip
  to black or white as on a reading station. Without a VOI LUT the values are min-max scaled,
  so a 12-bit study gives the same picture as DICOM and as a 16-bit PNG. MONOCHROME1 (low
  values bright) is inverted last. A multi-frame file gives its first frame.
* A constant image becomes all zeros.

pydicom is needed for DICOM only (``pip install 'pacx[dicom]'``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["minmax_to_uint8", "read_dicom_gray8", "to_grayscale_8bit"]

# PIL's luminance weights (ITU-R 601-2), also used for the rare colour DICOM.
_LUMA = np.array([0.299, 0.587, 0.114])


def minmax_to_uint8(values: np.ndarray) -> np.ndarray:
    """Stretch an array's own value range to 0..255 (rounded); a constant array gives zeros.

    Args:
        values: any real array.

    Returns:
        uint8 array of the same shape.

    Example:
        >>> minmax_to_uint8(np.array([100, 2100, 4095])).tolist()
        [0, 128, 255]
    """
    array = np.asarray(values, dtype=np.float64)
    low, high = float(array.min()), float(array.max())
    if not high > low:
        return np.zeros(array.shape, dtype=np.uint8)
    return np.round((array - low) / (high - low) * 255.0).astype(np.uint8)


def to_grayscale_8bit(image: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit grayscale (mode ``"L"``) following the module's policy.

    8-bit modes keep their values (colour and palette through PIL's luminance conversion);
    integer modes of more than 8 bits (``I;16``, ``I``) and float images are min-max scaled.
    Module-level (not a lambda) so that loaders pickle into DataLoader workers.

    Args:
        image: a PIL image of any mode.

    Returns:
        A mode ``"L"`` PIL image of the same size.
    """
    from PIL import Image

    if image.mode == "L":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        return Image.fromarray(minmax_to_uint8(np.asarray(image)))
    return image.convert("L")


def _has_voi_lut_sequence(ds) -> bool:
    items = ds.get("VOILUTSequence")
    return bool(items) and all(items[0].get(key) is not None for key in ("LUTDescriptor", "LUTData"))


def _voi_to_uint8(values: np.ndarray, ds) -> np.ndarray | None:
    """The VOI LUT of ``ds`` applied to modality values, scaled to 0..255; None without one."""
    from pydicom.pixels import apply_voi, apply_windowing

    if _has_voi_lut_sequence(ds):
        # Integer input as pydicom expects; the LUT's nominal output range is 0..2**bits - 1.
        out = apply_voi(np.round(values).astype(np.int64), ds, index=0).astype(np.float64)
        low, high = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        out = apply_windowing(values.astype(np.float64), ds, index=0)
        # The output range depends on the bit depth and the modality LUT: read it off two
        # probes far below and far above every window instead of re-deriving it.
        with np.errstate(over="ignore"):
            low, high = (float(v) for v in apply_windowing(np.array([-1e30, 1e30]), ds, index=0))
    else:
        return None
    if not high > low:
        return minmax_to_uint8(out)
    return np.round(np.clip((out - low) / (high - low), 0.0, 1.0) * 255.0).astype(np.uint8)


def read_dicom_gray8(path: str | os.PathLike) -> np.ndarray:
    """Read a DICOM file as an ``(H, W)`` uint8 image under the module's intensity policy.

    Args:
        path: the DICOM file.

    Returns:
        uint8 array, bright = dense (MONOCHROME1 inverted).

    Raises:
        ImportError: when pydicom is not installed.
        FileNotFoundError: when the file does not exist.
        ValueError: when the file is not a DICOM image pydicom can decode (names the file).

    Example:
        >>> read_dicom_gray8("study/image.dcm").shape  # doctest: +SKIP
        (2048, 2048)
    """
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut
    except ImportError as err:
        raise ImportError("reading DICOM needs pydicom: pip install 'pacx[dicom]'") from err
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DICOM file not found: {path}")
    try:
        ds = pydicom.dcmread(str(path))
        pixels = np.asarray(ds.pixel_array)
    except Exception as err:  # pydicom raises many types; the user needs the file's name
        raise ValueError(f"cannot decode DICOM file {path}: {type(err).__name__}: {err}") from err
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    if int(ds.get("SamplesPerPixel", 1)) == 3:  # colour (rare for CXR): no grayscale LUTs apply
        gray = pixels[..., :3].astype(np.float64) @ _LUMA
        return np.round(gray).astype(np.uint8) if pixels.dtype == np.uint8 else minmax_to_uint8(gray)
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    gray = _voi_to_uint8(values, ds)
    if gray is None:
        gray = minmax_to_uint8(values)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        gray = 255 - gray  # MONOCHROME1 stores dense tissue as low values
    return gray
