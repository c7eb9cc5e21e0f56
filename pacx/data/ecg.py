"""12-lead ECG handling: lead orders, ECGFounder preprocessing and WFDB reading.

ECGFounder (the ECG teacher) expects ``(12, 5000)`` float input, 10 s at 500 Hz, in the
HEEDB lead order ``I, II, III, aVR, aVL, aVF, V1-V6``; MIMIC-IV-ECG (and therefore
Symile-MIMIC) stores ``I, II, III, aVR, aVF, aVL, V1-V6``. Its canonical preprocessing is a
50 Hz notch (Q 30), a 0.67-40 Hz order-4 Butterworth band-pass (both zero-phase, ``filtfilt``),
subtraction of a 201-sample (``int(0.4 * fs) + 1``) median baseline, and one global z-score
over the whole ``12 x T`` array (not per lead).
"""

from __future__ import annotations

import contextlib
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Sequence, TypeVar

import numpy as np
import torch
from scipy import ndimage, signal

__all__ = [
    "ECGFOUNDER_LEADS",
    "MIMIC_LEADS",
    "filter_ecg",
    "mimic_to_ecgfounder",
    "preprocess_ecg",
    "read_wfdb_ecg",
    "zscore_global",
]

ECGFOUNDER_LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
MIMIC_LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")

# Position in MIMIC order of each ECGFounder lead: only aVL/aVF (indices 4 and 5) swap.
_MIMIC_TO_ECGFOUNDER = [MIMIC_LEADS.index(name) for name in ECGFOUNDER_LEADS]

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def _check_leads_time(x: np.ndarray | torch.Tensor, name: str = "x") -> None:
    if x.ndim not in (2, 3) or x.shape[-2] != 12:
        raise ValueError(f"{name} must have shape (12, T) or (B, 12, T), got {tuple(x.shape)}")
    if x.shape[-1] < 1:
        raise ValueError(f"{name} must have at least one time sample, got shape {tuple(x.shape)}")


def mimic_to_ecgfounder(x: ArrayT) -> ArrayT:
    """Reorder leads from MIMIC-IV-ECG order to ECGFounder order (swap aVF and aVL).

    Args:
        x: array or tensor of shape ``(12, T)`` or ``(B, 12, T)`` in :data:`MIMIC_LEADS` order.

    Returns:
        A new array/tensor of the same type and shape in :data:`ECGFOUNDER_LEADS` order.

    Raises:
        ValueError: when the lead axis (second to last) does not have 12 entries.
    """
    _check_leads_time(x)
    return x[..., _MIMIC_TO_ECGFOUNDER, :]


def _median_baseline(x: np.ndarray, kernel: int) -> np.ndarray:
    flat = x.reshape(-1, x.shape[-1])
    # A loop over leads is deliberate: scipy's 1-D median filter has a fast running-median
    # path (~0.5 ms per 5000-sample lead), while the N-D filter on (leads, T) with a
    # (1, kernel) footprint is ~25x slower. mode="constant" (zero padding) matches
    # scipy.signal.medfilt, which ECGFounder uses.
    out = np.empty_like(flat)
    for i, lead in enumerate(flat):
        out[i] = ndimage.median_filter(lead, size=kernel, mode="constant", cval=0.0)
    return out.reshape(x.shape)


def filter_ecg(x: np.ndarray, fs: float = 500.0, notch_hz: float | None = 50.0, notch_q: float = 30.0) -> np.ndarray:
    """ECGFounder filter chain: notch, 0.67-40 Hz band-pass and median-baseline removal.

    Every step works along the last (time) axis, independently per lead and per record.

    Args:
        x: ``(12, T)`` or ``(B, 12, T)`` array (any lead order). Computation is in float64.
        fs: sampling frequency in Hz. Defaults to 500.
        notch_hz: mains frequency removed by an ``iirnotch`` + ``filtfilt``. ECGFounder uses 50
            (its training data is Chinese); 60 matches US mains (MIMIC). ``None`` skips the notch.
        notch_q: quality factor of the notch. Defaults to 30.

    Returns:
        Filtered array of the input's shape and floating dtype (float32 input stays float32;
        integer input becomes float64).

    Raises:
        ValueError: on a wrong shape, a non-positive ``fs``, a notch frequency outside
            ``(0, fs / 2)``, a band edge at or above Nyquist, or too few samples for ``filtfilt``.

    Example:
        >>> y = filter_ecg(np.random.randn(12, 5000).astype(np.float32))
        >>> y.shape, y.dtype
        ((12, 5000), dtype('float32'))
    """
    x = np.asarray(x)
    _check_leads_time(x)
    if fs <= 0:
        raise ValueError(f"fs must be positive, got {fs}")
    if fs / 2.0 <= 40.0:
        raise ValueError(f"fs must exceed 80 Hz for the 0.67-40 Hz band-pass, got fs={fs}")
    if notch_hz is not None and not 0.0 < notch_hz < fs / 2.0:
        raise ValueError(f"notch_hz must be in (0, fs/2) = (0, {fs / 2}), got {notch_hz}")
    if notch_q <= 0:
        raise ValueError(f"notch_q must be positive, got {notch_q}")
    out_dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float64)
    y = x.astype(np.float64, copy=True)
    # b/a form with filtfilt (default odd padding) mirrors ECGFounder's util; an order-4
    # band-pass at these edges is numerically fine in b/a form (sos differs by ~1e-6).
    band_b, band_a = signal.butter(4, [0.67, 40.0], btype="bandpass", fs=fs)
    min_len = 3 * max(len(band_b), len(band_a)) + 1
    if y.shape[-1] < min_len:
        raise ValueError(f"x needs at least {min_len} time samples for filtfilt, got {y.shape[-1]}")
    if notch_hz is not None:
        notch_b, notch_a = signal.iirnotch(notch_hz, notch_q, fs=fs)
        y = signal.filtfilt(notch_b, notch_a, y, axis=-1)
    y = signal.filtfilt(band_b, band_a, y, axis=-1)
    kernel = int(0.4 * fs) + 1
    kernel += 1 - kernel % 2  # a median kernel must be odd (201 at 500 Hz already is)
    y = y - _median_baseline(y, kernel)
    return y.astype(out_dtype, copy=False)


def zscore_global(x: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Z-score each record with ONE mean and ONE std over all its leads and samples.

    Args:
        x: ``(12, T)`` (one record) or ``(B, 12, T)`` (each record normalised on its own).
        eps: added to the std to avoid division by zero. Defaults to 1e-8.

    Returns:
        ``(x - mean) / (std + eps)`` with the input's shape and floating dtype.

    Raises:
        ValueError: on a wrong shape or a negative ``eps``.
    """
    x = np.asarray(x)
    _check_leads_time(x)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    out_dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float64)
    x64 = x.astype(np.float64, copy=False)
    mean = x64.mean(axis=(-2, -1), keepdims=True)
    std = x64.std(axis=(-2, -1), keepdims=True)
    return ((x64 - mean) / (std + eps)).astype(out_dtype, copy=False)


def preprocess_ecg(x: np.ndarray, fs: float = 500.0, notch_hz: float | None = 50.0) -> np.ndarray:
    """ECGFounder input preprocessing: :func:`filter_ecg` then :func:`zscore_global`.

    The leads must already be in :data:`ECGFOUNDER_LEADS` order (see :func:`mimic_to_ecgfounder`).
    Because the chain removes DC and the z-score removes scale, Symile-MIMIC's globally
    min-max-scaled ECGs give the same result as the raw millivolt signal (up to edge effects).

    Args:
        x: ``(12, T)`` or ``(B, 12, T)`` array.
        fs: sampling frequency in Hz. Defaults to 500.
        notch_hz: mains frequency to notch (50 as ECGFounder, 60 for US data, ``None`` to skip).

    Returns:
        Preprocessed array, same shape and floating dtype.

    Raises:
        ValueError: see :func:`filter_ecg`.

    Example:
        >>> z = preprocess_ecg(np.random.randn(12, 5000))
        >>> bool(abs(z.mean()) < 1e-6 and abs(z.std() - 1.0) < 1e-6)
        True
    """
    return zscore_global(filter_ecg(x, fs=fs, notch_hz=notch_hz))


@contextlib.contextmanager
def _quiet_wfdb():
    # wfdb 4.x calls pandas APIs that pandas 3 deprecates (inplace=...); the warnings say
    # nothing about the user's record, so they are silenced for wfdb's own modules only.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"wfdb(\.|$)")
        yield


def _record_base(path: str | Path) -> Path:
    path = Path(path)
    # wfdb wants the record name without extension; accept a path to any of its files.
    if path.suffix.lower() in (".hea", ".dat", ".mat", ".xyz"):
        path = path.with_suffix("")
    return path


def read_wfdb_ecg(
    path: str | Path,
    fs: int = 500,
    seconds: float = 10.0,
    leads: Sequence[str] = ECGFOUNDER_LEADS,
) -> np.ndarray:
    """Read a WFDB record as a ``(len(leads), fs * seconds)`` float32 array in physical units.

    Leads are selected by name, case-insensitively (``"aVR"``, ``"AVR"`` and ``"avr"`` are one
    lead), and returned in the order of ``leads``; other signals in the record (e.g. Frank
    leads) are ignored. The signal is resampled to ``fs`` with a polyphase filter
    (``scipy.signal.resample_poly``), then the first ``seconds`` are kept, zero-padded at the
    end when the record is shorter. NaNs (present in some MIMIC-IV-ECG records) become 0 with
    a warning.

    Args:
        path: record path, with or without a ``.hea``/``.dat``/``.mat`` suffix.
        fs: target sampling frequency in Hz. Defaults to 500.
        seconds: duration to return. Defaults to 10.
        leads: lead names to return, in order. Defaults to :data:`ECGFOUNDER_LEADS`.

    Returns:
        float32 array of shape ``(len(leads), round(fs * seconds))``.

    Raises:
        FileNotFoundError: when the header file does not exist.
        ValueError: when the record lacks some requested leads (names the record, the missing
            and the available leads), when its header or signal file is unreadable, truncated
            or empty (names the record), or on invalid ``fs``/``seconds``/``leads``.

    Example:
        >>> x = read_wfdb_ecg("ecg_cinc2021/E07500")  # doctest: +SKIP
        >>> x.shape  # doctest: +SKIP
        (12, 5000)
    """
    if fs <= 0 or seconds <= 0:
        raise ValueError(f"fs and seconds must be positive, got fs={fs}, seconds={seconds}")
    if len(leads) == 0:
        raise ValueError("leads must name at least one lead, got an empty sequence")
    wanted = [name.lower() for name in leads]
    if len(set(wanted)) != len(wanted):
        raise ValueError(f"leads must be distinct (case-insensitively), got {list(leads)}")
    base = _record_base(path)
    header = base.with_suffix(".hea")
    if not header.is_file():
        raise FileNotFoundError(f"WFDB header not found: {header}")
    with _quiet_wfdb():
        import wfdb  # local import: only this reader needs it

        try:
            head = wfdb.rdheader(str(base))
        except Exception as err:  # wfdb raises IndexError/ValueError/... naming no file
            raise ValueError(f"cannot read WFDB header {header}: {type(err).__name__}: {err}") from err
    names = [str(n) for n in (head.sig_name or [])]
    lookup: dict[str, int] = {}
    for i, name in enumerate(names):
        lookup.setdefault(name.strip().lower(), i)
    missing = [lead for lead, key in zip(leads, wanted) if key not in lookup]
    if missing:
        raise ValueError(f"ECG record {base} lacks leads {missing}; it has {names}")
    channels = [lookup[key] for key in wanted]
    src_fs = float(head.fs)
    n_out = int(round(fs * seconds))
    # Read only what is needed plus one second of margin so that the polyphase filter sees
    # real signal (not an artificial end) around the cut.
    if not head.sig_len:
        raise ValueError(f"WFDB record {base} holds no samples (signal length {head.sig_len} in {header})")
    sampto = min(int(head.sig_len), int(np.ceil((seconds + 1.0) * src_fs)))
    with _quiet_wfdb():
        try:
            record = wfdb.rdrecord(str(base), channels=channels, sampto=sampto, physical=True)
        except Exception as err:  # a truncated signal file surfaces as a numpy reshape error
            raise ValueError(
                f"cannot read the signals of WFDB record {base} (truncated or corrupt signal file?): "
                f"{type(err).__name__}: {err}"
            ) from err
    x = np.asarray(record.p_signal, dtype=np.float64).T  # (leads, time)
    if np.isnan(x).any():
        bad = [leads[i] for i in np.flatnonzero(np.isnan(x).any(axis=1))]
        warnings.warn(f"ECG record {base}: NaN samples in leads {bad} replaced by 0", RuntimeWarning, stacklevel=2)
        x = np.nan_to_num(x, nan=0.0)
    if src_fs != fs:
        ratio = Fraction(fs / src_fs).limit_denominator(1000)
        x = signal.resample_poly(x, ratio.numerator, ratio.denominator, axis=-1)
    out = np.zeros((len(leads), n_out), dtype=np.float32)
    n_keep = min(n_out, x.shape[-1])
    out[:, :n_keep] = x[:, :n_keep]
    return out
