"""Tests for pacx.data.transforms: MONAI loading orientation/scaling, stage transforms, seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pacx.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CXRTransform,
    denormalize_imagenet,
    eval_transform,
    load_cxr,
    load_cxr_transform,
    load_mask,
    normalize_imagenet,
    stage1_train_transform,
    stage2_train_transform,
)
from tests.utils import require_shared_data


def _gradient_image(height: int = 40, width: int = 60) -> np.ndarray:
    """Non-square 8-bit image whose top-left block is bright: any transpose or flip shows."""
    img = np.zeros((height, width), dtype=np.uint8)
    img[:10, :20] = 255
    img[:, -1] = 128
    return img


def test_non_square_image_keeps_orientation(tmp_path):
    img = _gradient_image()
    Image.fromarray(img).save(tmp_path / "ns.png")
    x = load_cxr(tmp_path / "ns.png")
    assert x.shape == (3, 40, 60) and x.dtype == torch.float32 and type(x) is torch.Tensor
    unit = denormalize_imagenet(x)
    for c in range(3):  # grayscale replicated, [0, 1] = pixel / 255
        np.testing.assert_allclose(unit[c].numpy(), img / 255.0, atol=1e-6)


def test_resize_keeps_orientation_and_normalises(tmp_path):
    Image.fromarray(_gradient_image(80, 120)).save(tmp_path / "ns.png")
    x = load_cxr(tmp_path / "ns.png", (40, 60))
    assert x.shape == (3, 40, 60)
    unit = denormalize_imagenet(x)[0]
    assert unit[:4, :8].mean() > 0.95 and unit[-4:, :8].mean() < 0.05
    pipeline = load_cxr_transform(16)
    assert tuple(pipeline(str(tmp_path / "ns.png")).shape) == (3, 16, 16)


def test_rgb_and_16bit_inputs_become_grayscale(tmp_path):
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # pure red -> PIL luminance 76
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    x = denormalize_imagenet(load_cxr(tmp_path / "rgb.png"))
    assert torch.allclose(x, torch.full_like(x, 76 / 255), atol=1e-6)
    deep = np.full((8, 8), 2048, dtype=np.uint16)  # 12-bit values in a 16-bit PNG
    deep[0, :2] = (0, 4095)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    y = denormalize_imagenet(load_cxr(tmp_path / "deep.png"))
    # min-max scaled (pacx.data.image_io), neither clipped at 255 nor divided by 256
    assert torch.allclose(y[:, 1:], torch.full_like(y[:, 1:], 128 / 255), atol=1e-6)


def test_undecodable_and_missing_files_are_named(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"definitely not a png")
    with pytest.raises(ValueError, match="broken.png"):
        load_cxr(tmp_path / "broken.png")
    with pytest.raises(FileNotFoundError, match="absent.png"):
        load_cxr(tmp_path / "absent.png")


def test_load_mask_thresholds_after_resize(tmp_path):
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:, 32:] = 255
    mask[0, 0] = 100  # an interpolation value below the threshold
    Image.fromarray(mask).save(tmp_path / "m.png")
    m = load_mask(tmp_path / "m.png")
    assert m.shape == (1, 64, 64) and set(m.unique().tolist()) == {0.0, 1.0} and m[0, 0, 0] == 0
    small = load_mask(tmp_path / "m.png", 16)
    assert small.shape == (1, 16, 16) and set(small.unique().tolist()) <= {0.0, 1.0}
    assert small[0, :, :8].sum() == 0 and small[0, :, 8:].all()


def test_normalize_roundtrip_and_constants():
    x = torch.rand(2, 3, 5, 5)
    assert torch.allclose(denormalize_imagenet(normalize_imagenet(x)), x, atol=1e-6)
    n = normalize_imagenet(torch.ones(3, 1, 1))
    expected = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    assert torch.allclose(n.flatten(), torch.tensor(expected))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        normalize_imagenet(torch.zeros(1, 5, 5))


def _normalised_image(h: int = 64, w: int = 64) -> torch.Tensor:
    torch.manual_seed(0)
    return normalize_imagenet(torch.rand(1, h, w).expand(3, h, w).clone())


def test_eval_transform_resizes_deterministically():
    x = _normalised_image(64, 48)
    t = eval_transform(32)
    assert t(x).shape == (3, 32, 32)
    assert torch.equal(t(x), t(x))


@pytest.mark.parametrize("factory", [stage1_train_transform, stage2_train_transform])
def test_train_transforms_shape_and_generator_seeding(factory):
    x = _normalised_image()
    outputs = []
    for _ in range(2):
        t = factory(32, generator=torch.Generator().manual_seed(123))
        outputs.append([t(x) for _ in range(4)])
    assert all(o.shape == (3, 32, 32) for o in outputs[0])
    assert all(torch.equal(a, b) for a, b in zip(*outputs))  # same generator seed -> same draws
    assert not torch.equal(outputs[0][0], outputs[0][1])  # successive calls differ
    state = torch.get_rng_state()
    factory(32, generator=torch.Generator().manual_seed(1))(x)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is not consumed


def test_train_transforms_follow_global_seed_without_generator():
    x = _normalised_image()
    t = stage2_train_transform(32)
    torch.manual_seed(7)
    a = t(x)
    torch.manual_seed(7)
    assert torch.equal(a, t(x))


def test_stage2_has_no_flip_and_stays_in_normalised_range():
    x = _normalised_image()
    t = stage2_train_transform(32, generator=torch.Generator().manual_seed(0))
    low = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    high = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    for _ in range(10):
        y = t(x)
        assert y.min() >= low - 1e-4 and y.max() <= high + 1e-4
    names = [type(step).__name__ for step in t.on_unit.transforms] + [type(step).__name__ for step in t.post.transforms]
    assert not any("Flip" in n for n in names)
    assert names[0] == "RandomResizedCrop" and names[-1] == "RandomErasing"


def test_stage1_flips_some_images():
    x = torch.zeros(3, 16, 16)
    x[:, :, :4] = 1.0  # bright left band
    t = stage1_train_transform(16, scale=(1.0, 1.0), generator=torch.Generator().manual_seed(0))
    flipped = [bool(t(x)[0, :, -4:].mean() > 0.5) for _ in range(20)]
    assert any(flipped) and not all(flipped)


def test_cxr_transform_validation():
    with pytest.raises(ValueError, match="generator"):
        CXRTransform(generator=123)
    with pytest.raises(ValueError, match=r"image_size"):
        eval_transform(0)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        eval_transform(8)(torch.zeros(8, 8))


@pytest.mark.real_data
def test_montgomery_png_loads_like_pil():
    folder = require_shared_data("montgomery")
    path = folder / "cxr" / "MCUCXR_0001_0.png"
    x = load_cxr(path)
    reference = np.asarray(Image.open(path), dtype=np.float32) / 255.0
    np.testing.assert_allclose(denormalize_imagenet(x)[0].numpy(), reference, atol=1e-5)
