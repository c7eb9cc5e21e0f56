"""Schematic PA chest radiographs of the synthetic cohort (numpy, vectorised over patients).

Physiology enters only through three subtle cues (heart width from ``heart_size``,
costophrenic blunting from ``effusion``, perihilar haze from ``haze``); geometric and exposure
nuisance, habitus, texture, bones, devices and noise carry most of the pixel variance. The
nodule (anatomy) is independent of physiology. See ``docs/synthetic_cohort.md``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pacx.constants import IMAGENET_MEAN, IMAGENET_STD

from ._common import check_image_size

__all__ = ["imagenet_normalised", "render_cxr"]


def _ramp(signed: np.ndarray, width: float) -> np.ndarray:
    """Soft inside-indicator of a signed distance (positive inside), linear over ``width``."""
    return np.clip(0.5 + signed * (1.0 / width), 0.0, 1.0)


def _superellipse(qx, qy, cx, cy, ax, ay, power: int = 2) -> np.ndarray:
    """Approximate signed distance (positive inside) to a superellipse of integer ``power``.

    ``(1 - |dx|^p - |dy|^p) / p`` equals ``1 - r`` to first order at the boundary (r = 1), which
    is all the anti-aliasing ramp needs, and it avoids the per-pixel fractional powers that
    dominated the rendering time.
    """
    dx = (qx - cx) / ax
    dy = (qy - cy) / ay
    if power == 2:
        s = dx * dx + dy * dy
    elif power == 3:
        s = np.abs(dx) * dx * dx + np.abs(dy) * dy * dy
    elif power == 4:
        dx = dx * dx
        dy = dy * dy
        s = dx * dx + dy * dy
    else:
        raise ValueError(f"power must be 2, 3 or 4, got {power}")
    # np.float32: a float64 numpy scalar here would silently promote every image to float64.
    return (1.0 - s) * np.float32(np.minimum(ax, ay) / power)


def _segment_distance(qx, qy, x0, y0, x1, y1) -> np.ndarray:
    """Distance from every pixel to the segment (x0, y0)-(x1, y1) (per-patient endpoints)."""
    vx, vy = x1 - x0, y1 - y0
    t = ((qx - x0) * vx + (qy - y0) * vy) / (vx * vx + vy * vy + 1e-12)
    t = np.clip(t, 0.0, 1.0)
    ex = qx - (x0 + t * vx)
    ey = qy - (y0 + t * vy)
    return np.sqrt(ex * ex + ey * ey)


def _over(base: np.ndarray, alpha: np.ndarray, value) -> np.ndarray:
    """Alpha-composite ``value`` over ``base`` (a denser structure in front)."""
    return base + alpha * (value - base)


def _col(x) -> np.ndarray:
    """(B,) -> (B, 1, 1) float32 for broadcasting against (B, S, S) images."""
    return np.asarray(x, dtype=np.float32).reshape(-1, 1, 1)


def _dome(qx: np.ndarray, hab: np.ndarray) -> np.ndarray:
    """y of the diaphragm surface: two domes, the patient's right (image left) one higher."""
    xr = qx / hab
    right = (xr + 0.34) * (1.0 / 0.42)
    left = (xr - 0.35) * (1.0 / 0.42)
    return np.where(qx < 0, 0.40 + 0.32 * right * right, 0.45 + 0.32 * left * left)


def render_cxr(
    state: Mapping[str, np.ndarray], image_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Draw schematic PA chest radiographs, vectorised over patients.

    Canonical coordinates span [-1, 1] (x to the image right = patient's left, y downwards);
    each patient's geometric nuisance (translation, rotation, scale) maps pixels into them, so
    the image and the lung mask share the same warp. Physiology enters only through the heart
    width (``heart_size``), costophrenic blunting (``effusion``) and perihilar haze (``haze``).

    Args:
        state: latent state from :func:`sample_latent_state` (uses ``heart_size``,
            ``effusion``, ``haze``, ``nodule``).
        image_size: side length in pixels (>= 16).
        rng: numpy random generator (nuisance and pixel noise).

    Returns:
        ``images`` (B, S, S) float32 in [0, 1] (bright = dense), ``lung_mask`` (B, S, S) uint8,
        and ``info``: per-patient float32 arrays ``ctr`` (true cardiothoracic ratio),
        ``device`` (0/1), ``nodule_x``, ``nodule_y`` (canonical units, NaN without nodule),
        ``nodule_radius_px``.

    Raises:
        ValueError: when ``image_size`` < 16.
    """
    # One long function on purpose (~180 lines): the layers are composited in a fixed order,
    # each drawing from ``rng`` in turn, and that order fixes the bytes of every cohort ever
    # generated; splitting it would thread a dozen shared arrays through helpers for no gain.
    size = check_image_size(image_size)
    b = int(np.asarray(state["heart_size"]).shape[0])
    f32 = np.float32
    u = lambda lo, hi: rng.uniform(lo, hi, b).astype(f32)  # noqa: E731
    nrm = lambda sd: (sd * rng.standard_normal(b)).astype(f32)  # noqa: E731

    # Geometric nuisance: translation, rotation, scale (patient positioning, distance).
    tx, ty = u(-0.12, 0.12), u(-0.10, 0.10)
    theta = np.deg2rad(nrm(4.0))
    scale = u(0.86, 1.10)
    habitus = np.clip(1.0 + nrm(0.06), 0.85, 1.15).astype(f32)  # chest width (body build)

    centres = (np.arange(size, dtype=f32) + 0.5) * (2.0 / size) - 1.0
    px, py = centres.reshape(1, 1, size), centres.reshape(1, size, 1)
    cos_t, sin_t = _col(np.cos(theta) / scale), _col(np.sin(theta) / scale)
    dx, dy = px - _col(tx), py - _col(ty)
    qx = cos_t * dx + sin_t * dy
    qy = cos_t * dy - sin_t * dx
    del dx, dy
    edge = 2.4 / size  # anti-aliasing width: about one pixel
    hab = _col(habitus)

    # Body (thorax + shoulders), background air outside it.
    body = np.maximum(
        _superellipse(qx, qy, 0.0, 0.25, 0.92 * hab, 1.30, 3),
        _superellipse(qx, qy, 0.0, -0.98, 1.20 * hab, 0.32, 2),
    )
    body_alpha = _ramp(body, 3 * edge)
    dens = 0.03 + body_alpha * (_col(u(0.38, 0.50)) - 0.03)  # soft-tissue thickness varies

    # Lung fields: two superellipses cut below by the diaphragm domes.
    above_dome = _dome(qx, hab) - qy
    lung_r = _superellipse(qx, qy, -0.36 * hab, -0.03, 0.30 * hab, 0.70, 3)
    lung_l = _superellipse(qx, qy, 0.37 * hab, -0.01, 0.29 * hab, 0.68, 3)
    lung_env = np.maximum(lung_r, lung_l)
    del lung_r, lung_l
    lung_field = np.minimum(_ramp(lung_env, edge), _ramp(above_dome, edge))
    dens = _over(dens, lung_field, _col(u(0.10, 0.16)))

    # Vascular/interstitial texture: smooth random field inside the lungs (nuisance).
    dens += 0.05 * lung_field * _smooth_noise(rng, b, size, cells=6)

    # Abdomen below the domes, with a gastric air bubble under the left dome.
    dens = _over(dens, np.minimum(_ramp(-above_dome, edge), body_alpha), 0.62)
    bubble = _superellipse(qx, qy, 0.36 * hab, _col(0.68 + u(0.0, 0.08)), 0.10, 0.06)
    dens = _over(dens, _ramp(bubble, edge) * _col(u(0.0, 1.0) > 0.3), 0.25)

    # Mediastinum, aortic knob, trachea.
    mediastinum = _ramp(_superellipse(qx, qy, 0.0, -0.42, 0.115, 0.62, 4), edge)
    dens = _over(dens, mediastinum, 0.60)
    dens = _over(dens, _ramp(_superellipse(qx, qy, 0.11, -0.40, 0.075, 0.075), edge), 0.62)
    dens = _over(dens, _ramp(_superellipse(qx, qy, 0.0, -0.72, 0.035, 0.40, 4), edge), 0.30)

    # Physiology cue 1: the heart, a rotated ellipse whose width grows 10% per SD of the latent
    # heart size (habitus widens it a little too, as a broad chest does).
    heart_size = np.asarray(state["heart_size"], dtype=f32)
    h_ax = 0.33 * (1.0 + 0.10 * heart_size) * (0.5 + 0.5 * habitus)
    h_ay = 0.23 * (1.0 + 0.04 * heart_size)
    rot = np.deg2rad(22.0 + nrm(4.0))  # long axis from the right base down to the apex
    hx, hy = qx - 0.10, qy - 0.34
    cr, sr = _col(np.cos(rot)), _col(np.sin(rot))
    heart = _ramp(_superellipse(cr * hx + sr * hy, cr * hy - sr * hx, 0.0, 0.0, _col(h_ax), _col(h_ay)), edge)
    del hx, hy
    dens = _over(dens, heart, 0.64)

    # Visible lung = lung fields not hidden by heart or mediastinum: the segmentation target,
    # from the same warped coordinates as the image.
    visible_lung = lung_field * (1.0 - heart) * (1.0 - mediastinum)
    lung_mask = (visible_lung > 0.5).astype(np.uint8)

    # Physiology cue 2: costophrenic blunting (pleural effusion), a meniscus rising laterally.
    effusion = np.asarray(state["effusion"], dtype=f32)
    lateral = np.clip((np.abs(qx) / hab - 0.15) * 2.0, 0.0, 1.0)
    side_factor = np.where(qx < 0, _col(u(0.6, 1.2)), _col(u(0.6, 1.2)))
    rise = _col(0.30 * effusion) * side_factor * (0.25 + 0.75 * lateral * lateral)
    dens = _over(dens, visible_lung * _ramp(rise - above_dome, 3 * edge), 0.50)
    del lateral, side_factor, rise

    # Physiology cue 3: perihilar (bat-wing) haze from congestion.
    haze_amp = 0.045 * np.log1p(np.exp(1.3 * np.asarray(state["haze"], dtype=f32)))
    hx = (np.abs(qx) / hab - 0.17) * (1.0 / 0.24)
    hy = (qy - 0.02) * (1.0 / 0.36)
    bump = np.clip(1.0 - hx * hx - hy * hy, 0.0, 1.0)
    dens += _col(haze_amp) * (bump * bump) * visible_lung
    del hx, hy, bump

    # Bones: spine, posterior ribs (curving down laterally), clavicles.
    spine = _ramp(_superellipse(qx, qy, 0.0, 0.0, 0.07, 1.4, 4), edge)
    seg = qy * (1.0 / 0.14)
    dens += spine * (0.05 + 0.05 * np.abs(seg - np.floor(seg) - 0.5))
    thorax = _ramp(lung_env + 0.05, 2 * edge) * _ramp(above_dome + 0.05, edge)
    # Posterior ribs arch over each hemithorax; anterior ribs run down towards the sternum.
    xr = np.abs(qx) / hab - 0.30
    phase = (qy - 0.55 * xr * xr) * (1.0 / 0.16) + _col(u(0.0, 1.0))
    ribs = np.clip(1.0 - np.abs(phase - np.floor(phase) - 0.5) * (1.0 / 0.17), 0.0, 1.0)
    phase = (qy + 0.45 * np.abs(qx) / hab) * (1.0 / 0.19) + _col(u(0.0, 1.0))
    ribs += 0.5 * np.clip(1.0 - np.abs(phase - np.floor(phase) - 0.5) * (1.0 / 0.15), 0.0, 1.0)
    dens += _col(u(0.07, 0.12)) * ribs * thorax
    del seg, thorax, xr, phase, ribs, spine, lung_env
    for side in (-1.0, 1.0):
        clav = _segment_distance(qx, qy, side * 0.11, -0.72, side * 0.62 * hab, _col(-0.86 + u(-0.04, 0.04)))
        dens += 0.16 * _ramp(0.032 - clav, edge)

    # Nodule: anatomy finding, independent of physiology; 3-6 px radius at 64 px (a fixed
    # anatomical size in canonical units).
    has_nodule = np.asarray(state["nodule"]) > 0.5
    nod_x, nod_y = _sample_lung_points(rng, b, habitus)
    nod_r = u(3.0, 6.0) * (2.0 / 64.0)
    nod_amp = u(0.22, 0.30)
    sel = np.flatnonzero(has_nodule)
    if sel.size:
        ddx, ddy = qx[sel] - _col(nod_x[sel]), qy[sel] - _col(nod_y[sel])
        rr = (ddx * ddx + ddy * ddy) / _col(nod_r[sel] ** 2)
        dens[sel] += _col(nod_amp[sel]) * np.sqrt(np.clip(1.0 - rr, 0.0, 1.0))

    # Devices (about 40% of patients, independent of physiology): ECG electrodes, a central
    # line, an endotracheal tube.
    has_device = rng.random(b) < 0.40
    kinds = rng.random((3, b))
    electrode_xy = rng.uniform(-1.0, 1.0, (3, 2, b)).astype(f32) * np.array([[0.75], [0.55]], f32)[None]
    line_side = np.where(rng.random(b) < 0.5, -1.0, 1.0).astype(f32)
    line_end, tube_end = u(-0.25, -0.10), u(-0.62, -0.50)
    sel = np.flatnonzero(has_device & (kinds[0] < 0.7))
    if sel.size:
        sx, sy = qx[sel], qy[sel]
        for k in range(3):
            ddx, ddy = sx - _col(electrode_xy[k, 0, sel]), sy - _col(electrode_xy[k, 1, sel] - 0.05)
            d = np.sqrt(ddx * ddx + ddy * ddy)
            dens[sel] += 0.55 * _ramp(0.045 - d, edge) * (0.6 + 0.4 * _ramp(d - 0.02, edge))
    sel = np.flatnonzero(has_device & (kinds[1] < 0.5))
    if sel.size:
        side = _col(line_side[sel])
        pts = [(side * 0.62, -0.80), (side * 0.30, -0.68), (side * 0.10, -0.50), (0.03, _col(line_end[sel]))]
        d = np.full((sel.size, size, size), np.inf, f32)
        for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
            d = np.minimum(d, _segment_distance(qx[sel], qy[sel], x0, y0, x1, y1))
        dens[sel] += 0.40 * _ramp(0.012 - d, edge)
    sel = np.flatnonzero(has_device & (kinds[2] < 0.35))
    if sel.size:
        wall = _ramp(0.026 - np.abs(np.abs(qx[sel]) - 0.018), edge) * _ramp(_col(tube_end[sel]) - qy[sel], edge)
        dens[sel] += 0.35 * wall

    # Exposure: gamma, contrast, brightness, heel-effect gradient; then quantum noise.
    dens = np.clip(dens, 1e-6, 1.0) ** _col(np.exp(nrm(0.22)))
    dens = dens * _col(u(0.80, 1.15)) + _col(nrm(0.05))
    phi = u(0.0, 2.0 * np.pi)
    dens += _col(u(0.0, 0.10)) * (_col(np.cos(phi)) * px + _col(np.sin(phi)) * py)
    dens += _col(u(0.01, 0.035)) * rng.standard_normal(dens.shape, dtype=f32)
    images = np.clip(dens, 0.0, 1.0, out=dens)

    thoracic_width = (0.36 + 0.30 + 0.37 + 0.29) * habitus
    heart_width = 2.0 * np.sqrt((h_ax * np.cos(rot)) ** 2 + (h_ay * np.sin(rot)) ** 2)
    info = {
        "ctr": (heart_width / thoracic_width).astype(f32),
        "device": has_device.astype(f32),
        "nodule_x": np.where(has_nodule, nod_x, np.nan).astype(f32),
        "nodule_y": np.where(has_nodule, nod_y, np.nan).astype(f32),
        "nodule_radius_px": np.where(has_nodule, nod_r * scale * size / 2.0, 0.0).astype(f32),
    }
    return images, lung_mask, info


def _smooth_noise(rng: np.random.Generator, b: int, size: int, cells: int) -> np.ndarray:
    """Zero-mean smooth random field (B, S, S): bilinear upsampling of a coarse grid."""
    coarse = rng.standard_normal((b, cells + 1, cells + 1)).astype(np.float32)
    pos = (np.arange(size, dtype=np.float32) + 0.5) * (cells / size)
    i0 = np.minimum(pos.astype(np.int64), cells - 1)
    w = (pos - i0).astype(np.float32)
    rows = coarse[:, i0, :] * (1 - w)[None, :, None] + coarse[:, i0 + 1, :] * w[None, :, None]
    return rows[:, :, i0] * (1 - w)[None, None, :] + rows[:, :, i0 + 1] * w[None, None, :]


def _sample_lung_points(rng: np.random.Generator, b: int, habitus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One point per patient well inside a lung field and away from the heart (rejection)."""
    tries = 32
    side = np.where(rng.random((b, tries)) < 0.5, -1.0, 1.0)
    x = side * rng.uniform(0.20, 0.58, (b, tries)) * habitus[:, None]
    y = rng.uniform(-0.50, 0.30, (b, tries))
    cx = np.where(side < 0, -0.36, 0.37) * habitus[:, None]
    inside = ((x - cx) / (0.24 * habitus[:, None])) ** 2 + (y / 0.55) ** 2 < 1.0
    clear_of_heart = ~((x > -0.15) & (y > 0.0))
    ok = inside & clear_of_heart
    first = np.argmax(ok, axis=1)  # every row has a valid point with overwhelming probability
    rows = np.arange(b)
    return x[rows, first].astype(np.float32), y[rows, first].astype(np.float32)


def imagenet_normalised(images: np.ndarray) -> np.ndarray:
    """(B, S, S) grayscale in [0, 1] -> (B, 3, S, S) float32 ImageNet-normalised (the Symile storage)."""
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((images[:, None, :, :] - mean) / std, dtype=np.float32)
