from __future__ import annotations

import csv
import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("timm")
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

from pacx.engine import embed_files, embed_folder, export_backbone, load_image  # noqa: E402
from tests.data._dicom import write_dicom  # noqa: E402
from tests.utils import require_shared_data  # noqa: E402

ROOT_RECIPES = __import__("pathlib").Path(__file__).resolve().parents[2] / "recipes"


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=24, depth=1, num_heads=2, num_classes=0)
    return export_backbone(vit, tmp_path_factory.mktemp("export") / "backbone")


def _gray() -> np.ndarray:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(40, 48), dtype=np.uint8)
    image[0, 0], image[0, 1] = 0, 255  # full range, so min-max scaling is the identity
    return image


def test_embed_folder_reports_unreadable_files(tmp_path, backbone):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    gray = _gray()
    Image.fromarray(gray).save(images / "a_gray.png")
    Image.fromarray(np.stack([gray] * 3, -1)).save(images / "b_rgb.png")  # same image, RGB
    Image.fromarray(gray.astype(np.uint16) * 256).save(images / "c_16bit.png")  # same image, 16-bit
    Image.fromarray(gray).save(images / "sub" / "d.jpg")
    (images / "e_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (images / "notes.txt").write_text("ignored: not an image extension")

    report = embed_folder(backbone, images, tmp_path / "out" / "emb.npy", batch_size=2, progress=False)

    emb = np.load(tmp_path / "out" / "emb.npy")
    assert emb.shape == (4, 24) and emb.dtype == np.float32 and np.isfinite(emb).all()
    assert report.num_embedded == 4 and report.embedding_dim == 24
    assert [p for p, _ in report.failed] == ["e_corrupt.png"]
    assert "e_corrupt.png" in report.summary()
    with open(tmp_path / "out" / "emb.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["path"], int(r["row"])) for r in rows] == [
        ("a_gray.png", 0), ("b_rgb.png", 1), ("c_16bit.png", 2), ("e_corrupt.png", -1), ("sub/d.jpg", 3)
    ]
    assert rows[3]["error"] and not rows[0]["error"]
    # grayscale, RGB-replicated and 16-bit versions of one picture embed identically
    np.testing.assert_allclose(emb[1], emb[0], atol=1e-6)
    np.testing.assert_allclose(emb[2], emb[0], atol=1e-6)


def test_dicom_matches_png_and_monochrome1_is_inverted(tmp_path, backbone):
    if importlib.util.find_spec("pydicom") is None:
        pytest.skip("optional extra pacx[dicom] (pydicom) not installed")
    gray = _gray()
    Image.fromarray(gray).save(tmp_path / "x.png")
    write_dicom(tmp_path / "x2.dcm", gray.astype(np.uint16) * 16, "MONOCHROME2")
    write_dicom(tmp_path / "x1.dcm", (255 - gray.astype(np.uint16)) * 16, "MONOCHROME1")
    Image.fromarray(gray.astype(np.uint16) * 16).save(tmp_path / "x16.png")  # the 12-bit values as PNG
    png = load_image(tmp_path / "x.png", (32, 32))
    for name in ("x2.dcm", "x1.dcm", "x16.png"):
        # one intensity policy (pacx.data.image_io) and one resize: the same input up to float rounding
        torch.testing.assert_close(load_image(tmp_path / name, (32, 32)), png, rtol=0, atol=1e-5)


def test_embed_recipe_cli(tmp_path, backbone, capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    Image.fromarray(_gray()).save(images / "one.png")
    spec = importlib.util.spec_from_file_location("embed_recipe", ROOT_RECIPES / "embed.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    code = recipe.main(["--backbone", str(backbone), "--images", str(images), "--out", str(tmp_path / "e.npy")])
    assert code == 0 and np.load(tmp_path / "e.npy").shape == (1, 24)
    assert "embedded 1 image(s)" in capsys.readouterr().out


@pytest.mark.real_data
def test_embed_montgomery_samples(tmp_path, backbone):
    cxr = require_shared_data("montgomery") / "cxr"
    paths = sorted(cxr.glob("*.png"))[:5]
    report = embed_files(backbone, paths, tmp_path / "mc.npy", batch_size=4, root=cxr, progress=False)
    emb = np.load(tmp_path / "mc.npy")
    assert report.failed == [] and emb.shape == (5, 24) and np.isfinite(emb).all()
    assert len({tuple(np.round(row, 5)) for row in emb}) == 5  # five different X-rays, five embeddings
    image = load_image(paths[0], (32, 32))
    from pacx.engine import IMAGENET_MEAN, IMAGENET_STD

    pixels = image * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    assert image.shape == (3, 32, 32) and 0 <= pixels.min() and pixels.max() <= 1 + 1e-6
    torch.testing.assert_close(pixels[0], pixels[2], rtol=0, atol=1e-6)  # grayscale replicated
