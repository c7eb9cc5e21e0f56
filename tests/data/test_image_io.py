"""One intensity policy for 8-bit, 16-bit and 12-in-16 PNGs and DICOM (LUTs, MONOCHROME1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pacx.data.image_io import minmax_to_uint8, read_dicom_gray8, to_grayscale_8bit
from pacx.data.transforms import load_cxr
from tests.data._dicom import write_dicom


def _image12() -> np.ndarray:
    """A 12-bit picture using its whole range (0..4095)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 4096, size=(24, 20), dtype=np.uint16)
    image[0, 0], image[0, 1] = 0, 4095
    return image


def test_minmax_and_8bit_policy():
    assert minmax_to_uint8(np.array([[7, 7]])).tolist() == [[0, 0]]
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(np.asarray(to_grayscale_8bit(Image.fromarray(gray))), gray)  # 8-bit kept as stored
    rgb = Image.fromarray(np.stack([gray] * 3, -1))
    assert np.array_equal(np.asarray(to_grayscale_8bit(rgb)), gray)


def test_12bit_png_is_not_near_black_and_matches_its_8bit_version(tmp_path):
    image = _image12()
    Image.fromarray(image).save(tmp_path / "x16.png")  # 12-bit values in a 16-bit PNG
    Image.fromarray(minmax_to_uint8(image)).save(tmp_path / "x8.png")
    with Image.open(tmp_path / "x16.png") as png:
        assert png.mode.startswith("I")
        gray = np.asarray(to_grayscale_8bit(png))
    assert gray.max() == 255 and gray.min() == 0
    assert np.array_equal(gray, minmax_to_uint8(image))
    torch.testing.assert_close(load_cxr(tmp_path / "x16.png"), load_cxr(tmp_path / "x8.png"), rtol=0, atol=0)


def test_dicom_without_window_matches_the_16bit_png(tmp_path):
    image = _image12()
    write_dicom(tmp_path / "x.dcm", image)
    write_dicom(tmp_path / "x1.dcm", 4095 - image, "MONOCHROME1")
    assert np.array_equal(read_dicom_gray8(tmp_path / "x.dcm"), minmax_to_uint8(image))
    assert np.array_equal(read_dicom_gray8(tmp_path / "x1.dcm"), minmax_to_uint8(image))  # inverted back


def test_dicom_modality_lut_then_window(tmp_path):
    stored = np.array([[0, 1000, 1512, 1612, 1712, 4095]], dtype=np.uint16)
    # Modality units: stored * 2 - 1024 = [-1024, 976, 2000, 2200, 2400, 7166]; window 2000..2400.
    write_dicom(tmp_path / "w.dcm", stored, RescaleSlope=2, RescaleIntercept=-1024, RescaleType="US",
                WindowCenter=2200, WindowWidth=400)
    got = read_dicom_gray8(tmp_path / "w.dcm")
    hu = stored * 2.0 - 1024.0
    # DICOM PS3.3 C.11.2.1.2.1 linear window, scaled to 0..255.
    expected = np.clip((hu - (2200 - 0.5)) / (400 - 1) + 0.5, 0, 1) * 255
    assert np.abs(got.astype(float) - expected).max() <= 1.0
    assert got[0, 0] == 0 and got[0, 1] == 0 and got[0, -1] == 255 and 120 <= got[0, 3] <= 135
    # The window is the file's: a MONOCHROME1 copy gives the inverted picture.
    write_dicom(tmp_path / "w1.dcm", stored, "MONOCHROME1", RescaleSlope=2, RescaleIntercept=-1024,
                RescaleType="US", WindowCenter=2200, WindowWidth=400)
    assert np.array_equal(read_dicom_gray8(tmp_path / "w1.dcm"), 255 - got)


def test_dicom_voi_lut_sequence(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    item = pydicom.Dataset()
    item.LUTDescriptor = [4, 100, 8]  # 4 entries, first mapped value 100, 8-bit output
    item.add_new(0x00283006, "US", [0, 51, 204, 255])  # LUT Data, VR US (ambiguous US/OW otherwise)
    stored = np.array([[0, 100, 101, 102, 103, 4000]], dtype=np.uint16)
    write_dicom(tmp_path / "lut.dcm", stored, VOILUTSequence=pydicom.Sequence([item]))
    assert read_dicom_gray8(tmp_path / "lut.dcm").tolist() == [[0, 0, 51, 204, 255, 255]]


def test_dicom_errors_name_the_file(tmp_path):
    pytest.importorskip("pydicom")
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not a dicom file at all")
    with pytest.raises(ValueError, match="bad.dcm"):
        read_dicom_gray8(bad)
    with pytest.raises(FileNotFoundError, match="missing.dcm"):
        read_dicom_gray8(tmp_path / "missing.dcm")
