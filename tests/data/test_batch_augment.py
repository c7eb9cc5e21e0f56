"""Tests for pacx.data.batch_augment: the Stage-2 augmentations on a whole batch, on its device."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

import pacx.data.transforms
from pacx.data.batch_augment import BatchAugment, eval_batch_transform, stage2_batch_transform
from pacx.data.transforms import denormalize_imagenet, normalize_imagenet


def test_moved_names_stay_importable_from_transforms():
    for name in ("BatchAugment", "eval_batch_transform", "stage2_batch_transform"):
        assert getattr(pacx.data.transforms, name) is globals()[name]
    from pacx.data import BatchAugment as exported

    assert exported is BatchAugment
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        pacx.data.transforms.not_a_name  # noqa: B018


def _gradient_batch(batch: int = 4, size: int = 32) -> torch.Tensor:
    """Normalised (B, 3, S, S) images whose content is asymmetric (any flip, shift or rotation shows)."""
    gen = torch.Generator().manual_seed(5)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    unit = (0.6 * xx + 0.3 * yy**2)[None, None] + 0.1 * torch.rand(batch, 1, size, size, generator=gen)
    return normalize_imagenet(unit.clamp(0, 1).expand(-1, 3, -1, -1).contiguous())


def _only(step: str, size: int, **extra) -> BatchAugment:
    """A BatchAugment with every random step off except ``step`` (switched on with probability 1)."""
    off = {"crop_scale": None, "affine_p": 0.0, "jitter_p": 0.0, "blur_p": 0.0, "erase_p": 0.0}
    on = {"crop": {"crop_scale": (0.75, 1.0)}, "affine": {"affine_p": 1.0}, "jitter": {"jitter_p": 1.0},
          "blur": {"blur_p": 1.0}, "erase": {"erase_p": 1.0}}[step]
    return BatchAugment(size, **{**off, **on, **extra})


def test_batch_augment_shapes_dtypes_and_seeded_determinism():
    x = torch.randint(0, 256, (6, 1, 40, 40), dtype=torch.uint8)
    out = stage2_batch_transform(32, generator=torch.Generator().manual_seed(1))(x)
    assert out.shape == (6, 3, 32, 32) and out.dtype == torch.float32 and torch.isfinite(out).all()
    again = stage2_batch_transform(32, generator=torch.Generator().manual_seed(1))(x)
    torch.testing.assert_close(out, again, rtol=0, atol=0)
    other = stage2_batch_transform(32, generator=torch.Generator().manual_seed(2))(x)
    assert not torch.equal(out, other)
    # Per-sample draws: images of one batch are augmented differently.
    same = stage2_batch_transform(32, generator=torch.Generator().manual_seed(1))(x[:1].expand(6, -1, -1, -1))
    assert not torch.equal(same[0], same[1])
    # Float ImageNet-normalised input of another dtype keeps its dtype.
    assert stage2_batch_transform(16)(_gradient_batch().double()).dtype == torch.float64


def test_batch_augment_parameter_ranges_match_stage2_train_transform():
    size, n = 224, 4000
    params = stage2_batch_transform(size, generator=torch.Generator().manual_seed(3)).sample_params(n)
    top, left, h, w = params["crop_box"].unbind(1)
    area, ratio = h * w / size**2, w / h
    assert area.min() >= 0.75 - 2 / size and area.max() <= 1.0 and area.mean() < 0.95
    assert ratio.min() >= 0.85 - 2 / size and ratio.max() <= 1.15 + 2 / size
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= size).all() and (left + w <= size).all()
    for flag, p in (("affine", 0.6), ("jitter", 0.3), ("blur", 0.15), ("erase", 0.25)):
        assert abs(params[flag].double().mean().item() - p) < 0.03, flag  # 4.5 binomial sd at n = 4000
    on = params["affine"]
    assert params["angle"][on].abs().max() <= 10 and params["angle"][on].abs().max() > 9.5
    assert (params["angle"][~on] == 0).all() and (params["zoom"][~on] == 1).all()
    shift = params["translate"]
    assert shift.abs().max() <= round(0.1 * size) and (shift == shift.round()).all()
    assert params["zoom"][on].min() >= 0.9 and params["zoom"][on].max() <= 1.1
    for name in ("brightness", "contrast"):
        values = params[name][params["jitter"]]
        assert values.min() >= 0.8 and values.max() <= 1.2 and values.max() - values.min() > 0.35
        assert (params[name][~params["jitter"]] == 1).all()
    sigma = params["sigma"][params["blur"]]
    assert sigma.min() >= 0.1 and sigma.max() <= 2.0
    erased = params["erase"]
    e_top, e_left, e_h, e_w = params["erase_box"][erased].unbind(1)
    e_area, e_ratio = e_h * e_w / size**2, e_h / e_w
    assert e_area.min() >= 0.02 - 3 / size and e_area.max() <= 0.1 + 3 / size
    assert e_ratio.min() >= 0.3 * 0.9 and e_ratio.max() <= 3.3 * 1.1
    assert (e_top + e_h <= size).all() and (e_left + e_w <= size).all()
    assert (params["erase_box"][~erased] == 0).all()


def test_batch_augment_disabled_is_the_readers_uint8_conversion(tmp_path):
    from pacx.data import SymileMIMIC

    raw = torch.randint(0, 256, (5, 1, 24, 24), dtype=torch.uint8)
    split = tmp_path / "data_npy" / "train"
    split.mkdir(parents=True)
    np.save(split / "cxr_train.npy", raw.numpy())
    np.save(split / "hadm_id_train.npy", np.arange(5))
    reader = SymileMIMIC(tmp_path, "train", modalities=("cxr",))
    expected = torch.stack([reader[i]["cxr"] for i in range(5)])
    got = eval_batch_transform(24)(raw)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # Float input: every step off is the identity up to rounding of the un-normalise/normalise round trip.
    x = _gradient_batch()
    torch.testing.assert_close(eval_batch_transform(32)(x), x, rtol=0, atol=1e-6)
    # A size change is the reader's anti-aliased bilinear resize (done here before normalising).
    resized = SymileMIMIC(tmp_path, "train", modalities=("cxr",), image_size=16)
    torch.testing.assert_close(eval_batch_transform(16)(raw), torch.stack([resized[i]["cxr"] for i in range(5)]),
                               rtol=0, atol=1e-5)


def test_batch_augment_crop_is_torchvisions_resized_crop():
    x = _gradient_batch(size=32)
    aug = _only("crop", 32)
    params = aug.sample_params(4)
    out = aug(x, params)
    unit = denormalize_imagenet(x).clamp(0, 1)
    for i, (top, left, h, w) in enumerate(params["crop_box"].long().tolist()):
        ref = normalize_imagenet(v2.functional.resized_crop(unit[i], top, left, h, w, [32, 32], antialias=True))
        # Interior: at the border grid_sample reads the pixel beyond the crop where resize repeats the edge.
        torch.testing.assert_close(out[i, :, 1:-1, 1:-1], ref[:, 1:-1, 1:-1], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("angle", "translate", "zoom"), [(7.0, (0, 0), 1.0), (0.0, (3, -2), 1.0), (-9.0, (2, 1), 1.08)]
)
def test_batch_augment_affine_is_torchvisions_affine(angle, translate, zoom):
    x = _gradient_batch(batch=1, size=32)
    aug = _only("affine", 32)
    params = aug.sample_params(1)
    params["angle"][:] = angle
    params["translate"][:] = torch.tensor(translate, dtype=torch.float64)
    params["zoom"][:] = zoom
    def torchvision_affine(image: torch.Tensor) -> torch.Tensor:
        return v2.functional.affine(image, angle=angle, translate=list(translate), scale=zoom, shear=[0.0, 0.0],
                                    interpolation=v2.InterpolationMode.BILINEAR, fill=0.0)

    ref = torchvision_affine(denormalize_imagenet(x)[0].clamp(0, 1))
    out = denormalize_imagenet(aug(x, params))[0]
    # torchvision blends image and fill bilinearly over the partly covered border, this crop edge is
    # hard (as the per-sample path's crop then nearest-neighbour affine): compare where coverage is full.
    coverage = torchvision_affine(torch.ones(1, 32, 32))[0]
    full = -F.max_pool2d(-coverage[None, None], 3, stride=1, padding=1)[0, 0] > 1 - 1e-6
    assert full.float().mean() > 0.6
    torch.testing.assert_close(out[:, full], ref[:, full], rtol=0, atol=1e-5)
    assert out[:, coverage == 0].abs().max() < 1e-6  # the fill: 0, as torchvision's


@pytest.mark.parametrize("brightness_first", [True, False])
def test_batch_augment_jitter_is_torchvisions_brightness_and_contrast(brightness_first):
    x = _gradient_batch(batch=2)
    aug = _only("jitter", 32)
    params = aug.sample_params(2)
    params["brightness"][:] = torch.tensor([1.15, 0.85], dtype=torch.float64)
    params["contrast"][:] = torch.tensor([0.82, 1.19], dtype=torch.float64)
    params["brightness_first"][:] = brightness_first
    out = aug(x, params)
    for i in range(2):
        unit = denormalize_imagenet(x[i]).clamp(0, 1)
        b, c = params["brightness"][i].item(), params["contrast"][i].item()
        ops = [lambda t: v2.functional.adjust_brightness(t, b), lambda t: v2.functional.adjust_contrast(t, c)]
        for op in ops if brightness_first else ops[::-1]:
            unit = op(unit)
        torch.testing.assert_close(out[i], normalize_imagenet(unit), rtol=0, atol=1e-5)


def test_batch_augment_blur_and_erase_are_torchvisions():
    x = _gradient_batch(batch=3)
    aug = _only("blur", 32)
    params = aug.sample_params(3)
    params["blur"][:] = torch.tensor([True, False, True])
    params["sigma"][:] = torch.tensor([0.3, 1.0, 1.9], dtype=torch.float64)
    out = aug(x, params)
    for i in range(3):
        unit = denormalize_imagenet(x[i]).clamp(0, 1)
        if params["blur"][i]:
            sigma = params["sigma"][i].item()
            unit = v2.functional.gaussian_blur(unit, kernel_size=[5, 5], sigma=[sigma, sigma])
        torch.testing.assert_close(out[i], normalize_imagenet(unit), rtol=0, atol=1e-5)

    aug = _only("erase", 32)
    params = aug.sample_params(3)
    params["erase"][:] = torch.tensor([True, True, False])
    params["erase_box"][:] = torch.tensor([[2, 3, 5, 9], [20, 0, 12, 4], [0, 0, 0, 0]], dtype=torch.float64)
    out = aug(x, params)
    for i in range(3):
        ref = x[i].clone()
        if params["erase"][i]:
            top, left, h, w = params["erase_box"][i].long().tolist()
            ref = v2.functional.erase(ref, top, left, h, w, torch.tensor(0.0))
        torch.testing.assert_close(out[i], ref, rtol=0, atol=1e-6)


def test_batch_augment_reads_no_device_value_after_warm_up():
    from tests.losses._host_sync import forbid_host_sync

    aug = stage2_batch_transform(16, generator=torch.Generator().manual_seed(0))
    x = torch.randint(0, 256, (4, 1, 20, 20), dtype=torch.uint8)
    aug(x)  # builds the per-device constants (once per device and dtype)
    with forbid_host_sync():
        aug(x)


def test_batch_augment_validation():
    with pytest.raises(ValueError, match="affine_p must be a probability"):
        BatchAugment(16, affine_p=1.5)
    with pytest.raises(ValueError, match="crop_scale must satisfy"):
        BatchAugment(16, crop_scale=(0.5, 1.2))
    with pytest.raises(ValueError, match="blur_kernel must be a positive odd"):
        BatchAugment(16, blur_kernel=4)
    with pytest.raises(ValueError, match="degrees must be in"):
        BatchAugment(16, degrees=-1.0)
    aug = BatchAugment(16)
    with pytest.raises(ValueError, match=r"uint8 \(B, 1\|3, H, W\) or float"):
        aug(torch.zeros(2, 2, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) tensor"):
        aug(torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match="params are for 3 images, got a batch of 2"):
        aug(torch.zeros(2, 3, 16, 16), aug.sample_params(3))
