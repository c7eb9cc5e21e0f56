"""Stage-2 augmentation of a whole collated batch, on whatever device the batch lives on.

:class:`BatchAugment` (built by :func:`stage2_batch_transform` or, without augmentation, by
:func:`eval_batch_transform`) applies the Stage-2 augmentations of
:func:`pacx.data.transforms.stage2_train_transform`, or only the uint8/float to
normalised-float conversion, to a whole collated batch with per-sample parameters drawn from
one generator, so the loader workers only read and collate and the accelerator does the rest.
The per-sample file loading and transforms live in :mod:`pacx.data.transforms`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .transforms import _size_pair, _stats

__all__ = ["BatchAugment", "eval_batch_transform", "stage2_batch_transform"]


def _uniform(batch: int, low: float, high: float, generator: torch.Generator | None, tries: int = 0) -> torch.Tensor:
    """``batch`` (or ``(batch, tries)``) float64 draws from U[low, high) on the generator's device."""
    shape = (batch, tries) if tries else (batch,)
    device = generator.device if generator is not None else "cpu"
    return torch.rand(shape, generator=generator, dtype=torch.float64, device=device) * (high - low) + low


def _first_valid(values: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the value at the first valid try and whether any try was valid (no host read)."""
    first = valid.to(torch.int8).argmax(dim=1, keepdim=True)
    return values.gather(1, first)[:, 0], valid.any(dim=1)


def _box_sides(area: torch.Tensor, log_ratio: tuple[float, float], generator: torch.Generator | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rounded (height, width) of boxes of ``area`` pixels with a log-uniform aspect ratio
    (width / height), as torchvision's ``RandomResizedCrop`` and ``RandomErasing`` draw them."""
    aspect = _uniform(area.shape[0], *log_ratio, generator, tries=area.shape[1]).exp()
    return (area / aspect).sqrt().round(), (area * aspect).sqrt().round()


def _offsets(free: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """An integer uniform in [0, free] per entry (``torch.randint(0, free + 1)`` with a per-row bound)."""
    return (_uniform(free.shape[0], 0.0, 1.0, generator) * (free + 1)).floor()


class BatchAugment:
    """Stage-2 augmentation of a whole batch ``(B, C, H, W)`` on whatever device it lives on.

    The same augmentations as :func:`pacx.data.transforms.stage2_train_transform`, with the same
    ranges, but drawn per sample for a whole batch at once and applied with batched tensor
    operations (one ``grid_sample``, two intensity maps, one grouped convolution, one masked
    fill), so the DataLoader workers only read and collate and the accelerator does the rest:

    1. Input: ``uint8`` ``(B, 1|3, H, W)`` (0..255 grayscale, as the storage-saving Symile arrays
       hold it: ``x / 255``, replicated to three channels) or float ImageNet-normalised
       ``(B, 3, H, W)`` (un-normalised and clamped to [0, 1]). Resized to ``image_size`` with
       anti-aliasing when the size differs, as :class:`~pacx.data.SymileMIMIC` does before its
       per-sample transform.
    2. ``RandomResizedCrop(scale=crop_scale, ratio=crop_ratio)``: crop box drawn as torchvision
       draws it (10 tries, then the centre crop), resampled to ``image_size``.
    3. With probability ``affine_p``: rotation in ``[-degrees, degrees]``, translation by a whole
       number of pixels up to ``translate`` x the side, scale in ``affine_scale``, about the centre;
       pixels from outside the crop are 0. Steps 2 and 3 are ONE bilinear resampling (the
       per-sample path resamples twice, the affine step with nearest neighbour).
    4. With probability ``jitter_p``: brightness factor in ``1 +- brightness`` and contrast factor
       in ``1 +- contrast``, in random order, each clamped to [0, 1] (torchvision's
       ``ColorJitter``: contrast blends with the mean luminance of the image).
    5. With probability ``blur_p``: Gaussian blur, ``blur_kernel`` taps, sigma in ``blur_sigma``,
       reflect padding.
    6. ImageNet normalisation, then with probability ``erase_p``: a box of ``erase_scale`` of the
       area with aspect ratio in ``erase_ratio`` (log-uniform) set to 0 (the ImageNet mean).

    There is no horizontal flip, as in the per-sample transform. ``crop_scale=None`` and a
    probability of 0 switch a step off; with every step off the call is the uint8 (or float)
    to normalised-float conversion alone, identical to the reader's.

    Randomness: all parameters of a call are drawn on the host (or on the generator's device)
    from ``generator`` (the global torch RNG when None) with pure tensor operations, then moved
    to the batch's device in one copy (pinned, non-blocking on CUDA). A call therefore never
    waits for the device (after the first call per device and dtype, which builds three small
    constant tensors), and a generator seed gives the same draws on every device.
    :meth:`sample_params` exposes the draws; ``__call__(x, params)`` replays them.

    Args:
        image_size: output side, an int or ``(height, width)``.
        crop_scale: crop area as a fraction of the image, or None for no crop. Defaults to (0.75, 1.0).
        crop_ratio: crop aspect-ratio range (width / height). Defaults to (0.85, 1.15).
        affine_p: probability of the affine step. Defaults to 0.6.
        degrees: rotation range. Defaults to 10.0.
        translate: largest shift as a fraction of the side. Defaults to 0.1.
        affine_scale: zoom range. Defaults to (0.9, 1.1).
        jitter_p: probability of the brightness/contrast step. Defaults to 0.3.
        brightness: brightness factor spread. Defaults to 0.2.
        contrast: contrast factor spread. Defaults to 0.2.
        blur_p: probability of the blur. Defaults to 0.15.
        blur_sigma: blur sigma range. Defaults to (0.1, 2.0).
        blur_kernel: blur taps, odd. Defaults to 5.
        erase_p: probability of random erasing. Defaults to 0.25.
        erase_scale: erased area range as a fraction of the image. Defaults to (0.02, 0.1).
        erase_ratio: erased box aspect-ratio range. Defaults to (0.3, 3.3).
        generator: optional ``torch.Generator`` for reproducible draws.

    Raises:
        ValueError: on a probability outside [0, 1], an empty or invalid range, or an even or
            non-positive ``blur_kernel``.

    Example:
        >>> augment = stage2_batch_transform(224, generator=torch.Generator().manual_seed(0))
        >>> batch = torch.randint(0, 256, (8, 1, 320, 320), dtype=torch.uint8)
        >>> augment(batch).shape, augment(batch).dtype
        (torch.Size([8, 3, 224, 224]), torch.float32)
    """

    def __init__(
        self,
        image_size: int | Sequence[int],
        crop_scale: tuple[float, float] | None = (0.75, 1.0),
        crop_ratio: tuple[float, float] = (0.85, 1.15),
        affine_p: float = 0.6,
        degrees: float = 10.0,
        translate: float = 0.1,
        affine_scale: tuple[float, float] = (0.9, 1.1),
        jitter_p: float = 0.3,
        brightness: float = 0.2,
        contrast: float = 0.2,
        blur_p: float = 0.15,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        blur_kernel: int = 5,
        erase_p: float = 0.25,
        erase_scale: tuple[float, float] = (0.02, 0.1),
        erase_ratio: tuple[float, float] = (0.3, 3.3),
        generator: torch.Generator | None = None,
    ) -> None:
        self.size = _size_pair(image_size)
        for name, p in (("affine_p", affine_p), ("jitter_p", jitter_p), ("blur_p", blur_p), ("erase_p", erase_p)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        ranges = {"crop_ratio": crop_ratio, "affine_scale": affine_scale, "blur_sigma": blur_sigma,
                  "erase_scale": erase_scale, "erase_ratio": erase_ratio}
        if crop_scale is not None:
            ranges["crop_scale"] = crop_scale
        for name, (low, high) in ranges.items():
            if not 0.0 < low <= high or (name.endswith("scale") and name != "affine_scale" and high > 1.0):
                raise ValueError(f"{name} must satisfy 0 < low <= high (<= 1 for an area), got {(low, high)}")
        for name, value, top in (("degrees", degrees, 180.0), ("translate", translate, 1.0),
                                 ("brightness", brightness, 1.0), ("contrast", contrast, 1.0)):
            if not 0.0 <= value <= top:
                raise ValueError(f"{name} must be in [0, {top}], got {value}")
        if blur_kernel < 1 or blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel must be a positive odd integer, got {blur_kernel}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.crop_scale, self.crop_ratio = crop_scale, tuple(crop_ratio)
        self.affine_p, self.degrees, self.translate = affine_p, degrees, translate
        self.affine_scale = tuple(affine_scale)
        self.jitter_p, self.brightness, self.contrast = jitter_p, brightness, contrast
        self.blur_p, self.blur_sigma, self.blur_kernel = blur_p, tuple(blur_sigma), blur_kernel
        self.erase_p, self.erase_scale, self.erase_ratio = erase_p, tuple(erase_scale), tuple(erase_ratio)
        self.generator = generator
        self._constants: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, ...]] = {}

    # ----------------------------------------------------------------------------- parameters
    def sample_params(self, batch: int) -> dict[str, torch.Tensor]:
        """Draw every random parameter of one call for ``batch`` images (float64, generator's device).

        Returns:
            ``crop_box`` (B, 4) as top, left, height, width in output pixels; ``affine`` (B,) bool,
            ``angle`` (B,) degrees, ``translate`` (B, 2) pixels (x, y), ``zoom`` (B,); ``jitter``
            (B,) bool, ``brightness`` (B,), ``contrast`` (B,), ``brightness_first`` (B,) bool;
            ``blur`` (B,) bool, ``sigma`` (B,); ``erase`` (B,) bool, ``erase_box`` (B, 4). A step
            that is off gives its identity (full crop box, angle 0, factors 1...).
        """
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        g, (height, width) = self.generator, self.size
        params = {"crop_box": self._crop_boxes(batch)}
        params["affine"] = _uniform(batch, 0.0, 1.0, g) < self.affine_p
        params["angle"] = _uniform(batch, -self.degrees, self.degrees, g) * params["affine"]
        shift = torch.stack([_uniform(batch, -self.translate * width, self.translate * width, g),
                             _uniform(batch, -self.translate * height, self.translate * height, g)], dim=1)
        params["translate"] = shift.round() * params["affine"][:, None]  # whole pixels, as torchvision
        params["zoom"] = torch.where(params["affine"], _uniform(batch, *self.affine_scale, g), 1.0)
        params["jitter"] = _uniform(batch, 0.0, 1.0, g) < self.jitter_p
        for name, spread in (("brightness", self.brightness), ("contrast", self.contrast)):
            params[name] = torch.where(params["jitter"], _uniform(batch, 1 - spread, 1 + spread, g), 1.0)
        params["brightness_first"] = _uniform(batch, 0.0, 1.0, g) < 0.5
        params["blur"] = _uniform(batch, 0.0, 1.0, g) < self.blur_p
        params["sigma"] = _uniform(batch, *self.blur_sigma, g)
        params["erase"], params["erase_box"] = self._erase_boxes(batch)
        return params

    def _crop_boxes(self, batch: int) -> torch.Tensor:
        """torchvision's ``RandomResizedCrop.get_params`` for a batch: 10 tries, then the centre crop."""
        height, width = self.size
        g = self.generator
        if self.crop_scale is None:
            ones = torch.ones(batch, dtype=torch.float64, device=g.device if g is not None else "cpu")
            return torch.stack([0 * ones, 0 * ones, height * ones, width * ones], dim=1)
        area = _uniform(batch, *self.crop_scale, g, tries=10) * (height * width)
        h, w = _box_sides(area, (math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])), g)
        valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        h, ok = _first_valid(h, valid)
        w, _ = _first_valid(w, valid)
        # No try fitted: torchvision's fallback, the whole image cut to the nearest allowed ratio.
        low, high = self.crop_ratio
        if width / height < low:
            fb_h, fb_w = round(width / low), width
        elif width / height > high:
            fb_h, fb_w = height, round(height * high)
        else:
            fb_h, fb_w = height, width
        h, w = torch.where(ok, h, float(fb_h)), torch.where(ok, w, float(fb_w))
        top = torch.where(ok, _offsets(height - h, g), float((height - fb_h) // 2))
        left = torch.where(ok, _offsets(width - w, g), float((width - fb_w) // 2))
        return torch.stack([top, left, h, w], dim=1)

    def _erase_boxes(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """torchvision's ``RandomErasing.get_params`` for a batch: 10 tries, else nothing is erased."""
        height, width = self.size
        g = self.generator
        applied = _uniform(batch, 0.0, 1.0, g) < self.erase_p
        area = _uniform(batch, *self.erase_scale, g, tries=10) * (height * width)
        # RandomErasing draws the ratio as height / width: swap the sides _box_sides returns.
        w, h = _box_sides(area, (math.log(self.erase_ratio[0]), math.log(self.erase_ratio[1])), g)
        valid = (h < height) & (w < width)
        h, ok = _first_valid(h, valid)
        w, _ = _first_valid(w, valid)
        applied = applied & ok
        box = torch.stack([_offsets(height - h, g), _offsets(width - w, g), h, w], dim=1)
        return applied, box * applied[:, None]

    # ----------------------------------------------------------------------------- application
    def __call__(self, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Augment a batch; see the class docstring.

        Args:
            x: ``uint8`` ``(B, 1|3, H, W)`` or float ImageNet-normalised ``(B, 3, H, W)``, any device.
            params: draws from :meth:`sample_params` (a fresh draw when None).

        Returns:
            ``(B, 3, *image_size)`` ImageNet-normalised float tensor on ``x``'s device (float32 for
            uint8 input, else ``x``'s dtype).

        Raises:
            ValueError: on a wrongly shaped or typed ``x``.
        """
        unit = self._to_unit(x)
        if params is None:
            params = self.sample_params(unit.shape[0])
        dev = self._to_device(params, unit)
        if self.crop_scale is not None or self.affine_p > 0:
            unit = self._geometry(unit, dev)
        mean, std, luma = self._constants_for(unit)
        if self.jitter_p > 0:
            for alpha, beta in ((dev["alpha1"], dev["beta1"]), (dev["alpha2"], dev["beta2"])):
                gray = (unit.mean(dim=(2, 3)) * luma).sum(dim=1)  # mean luminance per image
                unit = unit.mul(alpha[:, None, None, None]).add_((beta * gray)[:, None, None, None]).clamp_(0.0, 1.0)
        if self.blur_p > 0:
            unit = self._blur(unit, dev["kernel"])
        out = (unit - mean) / std
        if self.erase_p > 0:
            top, left, h, w = dev["erase_box"].unbind(dim=1)
            rows = torch.arange(out.shape[2], device=out.device, dtype=out.dtype)
            cols = torch.arange(out.shape[3], device=out.device, dtype=out.dtype)
            in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])
            in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])
            out = out.masked_fill(in_rows[:, None, :, None] & in_cols[:, None, None, :], 0.0)
        return out

    def _to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] intensities, 3 channels, at ``image_size``."""
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            got = f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))}"
            raise ValueError(f"x must be a (B, C, H, W) tensor, got {got}")
        if x.dtype == torch.uint8 and x.shape[1] in (1, 3):
            unit = x.to(torch.float32).div_(255.0).expand(-1, 3, -1, -1)
        elif x.is_floating_point() and x.shape[1] == 3:
            mean, std, _ = self._constants_for(x)
            unit = (x * std + mean).clamp_(0.0, 1.0)
        else:
            raise ValueError(
                "x must be uint8 (B, 1|3, H, W) or float ImageNet-normalised (B, 3, H, W), "
                f"got {x.dtype} {tuple(x.shape)}"
            )
        if tuple(unit.shape[-2:]) != self.size:
            unit = F.interpolate(unit, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return unit

    def _constants_for(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ImageNet mean and std (1, 3, 1, 1) and torchvision's ``rgb_to_grayscale`` weights (1, 3),
        built once per device and dtype: a tensor built from host data is a blocking copy on an
        accelerator."""
        key = (x.device, x.dtype)
        if key not in self._constants:
            mean, std = _stats(x[:1])
            luma = torch.tensor([[0.2989, 0.587, 0.114]], dtype=x.dtype, device=x.device)
            self._constants[key] = (mean, std, luma)
        return self._constants[key]

    def _to_device(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything the device needs, packed on the host into one (B, K) tensor and copied once."""
        batch = x.shape[0]
        if params["crop_box"].shape[0] != batch:
            raise ValueError(f"params are for {params['crop_box'].shape[0]} images, got a batch of {batch}")
        theta, box = self._theta(params)
        b_first = params["brightness_first"]
        bright = torch.stack([params["brightness"], torch.zeros_like(params["brightness"])], dim=1)
        contr = torch.stack([params["contrast"], 1.0 - params["contrast"]], dim=1)
        step1 = torch.where(b_first[:, None], bright, contr)
        step2 = torch.where(b_first[:, None], contr, bright)
        taps = torch.arange(self.blur_kernel, dtype=torch.float64, device=b_first.device) - self.blur_kernel // 2
        kernel = (-0.5 * (taps / params["sigma"][:, None]) ** 2).exp()
        kernel = kernel / kernel.sum(dim=1, keepdim=True)
        delta = (taps == 0).to(torch.float64).expand_as(kernel)
        kernel = torch.where(params["blur"][:, None], kernel, delta)
        parts = {"theta": theta.flatten(1), "box": box, "alpha1": step1[:, :1], "beta1": step1[:, 1:],
                 "alpha2": step2[:, :1], "beta2": step2[:, 1:], "kernel": kernel, "erase_box": params["erase_box"]}
        packed = torch.cat(list(parts.values()), dim=1).to(torch.float32)
        if packed.device.type == "cpu" and x.device.type == "cuda":
            packed = packed.pin_memory()  # a non-blocking copy needs pinned host memory
        packed = packed.to(x.device, non_blocking=True)
        out, start = {}, 0
        for name, part in parts.items():
            out[name] = packed[:, start : start + part.shape[1]].to(x.dtype)
            start += part.shape[1]
        for name in ("alpha1", "beta1", "alpha2", "beta2"):
            out[name] = out[name][:, 0]
        out["theta"] = out["theta"].reshape(batch, 2, 3)
        return out

    def _theta(self, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``affine_grid`` matrices mapping output to input coordinates, and the crop boxes as
        (centre x, centre y, half width, half height) in normalised input coordinates.

        With ``v`` an output position in [-1, 1] and ``D = diag(W/2, H/2)`` (pixels per unit), the
        affine step samples the crop at ``u = D^-1 R(-angle) (D v - t) / zoom``, and the crop maps
        ``u`` to the input at ``centre + half * u``.
        """
        height, width = self.size
        top, left, h, w = params["crop_box"].unbind(dim=1)
        centre = torch.stack([(2 * left + w) / width - 1, (2 * top + h) / height - 1], dim=1)
        half = torch.stack([w / width, h / height], dim=1)
        angle = torch.deg2rad(params["angle"])
        cos, sin, zoom = angle.cos(), angle.sin(), params["zoom"]
        # D^-1 R(-angle) D / zoom with D = diag(W/2, H/2): a pixel-space rotation in normalised units.
        linear = torch.stack([torch.stack([cos, sin * height / width], 1),
                              torch.stack([-sin * width / height, cos], 1)], 1) / zoom[:, None, None]
        tx, ty = params["translate"].unbind(dim=1)
        shift = torch.stack([-(cos * tx + sin * ty) / (width / 2), -(cos * ty - sin * tx) / (height / 2)], 1)
        theta = torch.cat([half[:, :, None] * linear, (centre + half * shift / zoom[:, None])[:, :, None]], dim=2)
        return theta, torch.cat([centre, half], dim=1)

    def _geometry(self, unit: torch.Tensor, dev: dict[str, torch.Tensor]) -> torch.Tensor:
        """Crop + affine as one bilinear ``grid_sample``; positions outside the crop become 0."""
        grid = F.affine_grid(dev["theta"], list(unit.shape), align_corners=False)
        out = F.grid_sample(unit, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.affine_p > 0:
            centre, half = dev["box"][:, None, None, :2], dev["box"][:, None, None, 2:]
            inside = ((grid - centre).abs() <= half * (1 + 1e-6)).all(dim=-1)
            out = out * inside[:, None]
        return out

    def _blur(self, unit: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian blur with one kernel per image (a delta for images not blurred)."""
        batch, channels, height, width = unit.shape
        pad = self.blur_kernel // 2
        weight = kernel.repeat_interleave(channels, dim=0)[:, None, None, :]  # (B*C, 1, 1, k)
        flat = unit.reshape(1, batch * channels, height, width)
        flat = F.conv2d(F.pad(flat, (pad, pad, 0, 0), mode="reflect"), weight, groups=batch * channels)
        flat = F.conv2d(F.pad(flat, (0, 0, pad, pad), mode="reflect"), weight.transpose(2, 3), groups=batch * channels)
        return flat.reshape(batch, channels, height, width)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_size={self.size}, crop_scale={self.crop_scale}, "
            f"crop_ratio={self.crop_ratio}, "
            f"affine_p={self.affine_p}, jitter_p={self.jitter_p}, blur_p={self.blur_p}, erase_p={self.erase_p})"
        )


def stage2_batch_transform(image_size: int | Sequence[int], generator: torch.Generator | None = None) -> BatchAugment:
    """:func:`pacx.data.transforms.stage2_train_transform` for a whole batch on its device (a
    :class:`BatchAugment` with the reference's ranges and probabilities).

    Feed it the raw collated batch (``uint8`` ``(B, 1, S, S)`` from uint8 storage, or the float
    arrays) after the copy to the device, with the dataset's ``cxr_transform`` left at None.

    Args:
        image_size: output side, an int or ``(height, width)``.
        generator: optional generator for reproducible draws.

    Returns:
        A :class:`BatchAugment`.
    """
    return BatchAugment(image_size, generator=generator)


def eval_batch_transform(image_size: int | Sequence[int]) -> BatchAugment:
    """The deterministic batch conversion: uint8 or float input to ImageNet-normalised float at
    ``image_size`` (anti-aliased resize when the size differs), no augmentation.

    Args:
        image_size: output side, an int or ``(height, width)``.

    Returns:
        A :class:`BatchAugment` with every random step off.
    """
    return BatchAugment(image_size, crop_scale=None, affine_p=0.0, jitter_p=0.0, blur_p=0.0, erase_p=0.0)
