"""Image reading: every odd-but-valid file becomes 8-bit RGB; every bad file a clear error."""

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from facekit.errors import ImageReadError
from facekit.imageio import read_image, to_rgb_uint8, write_image


def _gradient(h=40, w=50):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 5 % 256, y * 6 % 256, (x + y) * 3 % 256], -1).astype(np.uint8)


def _png_header_only(path, w, h):
    """A PNG whose header claims w x h pixels, with no real pixel data (cheap 'huge image')."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))


def test_rgb_png_roundtrip(tmp_path):
    img = _gradient()
    write_image(tmp_path / "a.png", img)
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (40, 50, 3)
    np.testing.assert_array_equal(out, img)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    g = _gradient()[:, :, 0]
    Image.fromarray(g, "L").save(tmp_path / "g.pgm")
    out = read_image(tmp_path / "g.pgm")
    assert out.shape == (40, 50, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], g)


def test_rgba_is_composited_over_white(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:5, :, 3] = 255  # top half opaque red-ish, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert tuple(out[0, 0]) == (200, 0, 0)
    assert tuple(out[9, 9]) == (255, 255, 255)


def test_16bit_png_scaled_to_8bit(tmp_path):
    g16 = (np.arange(100, dtype=np.uint16).reshape(10, 10) * 600).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), g16)
    rgb16 = np.stack([g16, g16 // 2, g16 // 3], -1)
    cv2.imwrite(str(tmp_path / "c16.png"), rgb16[:, :, ::-1])
    out = read_image(tmp_path / "g16.png")
    np.testing.assert_allclose(out[:, :, 0].astype(float), g16 / 257.0, atol=1.0)
    out = read_image(tmp_path / "c16.png")
    np.testing.assert_allclose(out[:, :, 1].astype(float), (g16 // 2) / 257.0, atol=1.0)


def test_cmyk_jpeg_converted(tmp_path):
    Image.fromarray(_gradient(), "RGB").convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    out = read_image(tmp_path / "c.jpg")
    assert out.shape == (40, 50, 3)
    assert np.abs(out.astype(int) - _gradient().astype(int)).mean() < 12


def test_exif_orientation_honoured(tmp_path):
    img = Image.fromarray(_gradient(40, 60), "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    img.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    out = read_image(tmp_path / "r.jpg")
    assert out.shape == (60, 40, 3)


@pytest.mark.parametrize("maker, problem", [
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_text("this is not an image\n"), "text file"),
    (lambda p: p.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 3), "corrupt"),
])
def test_bad_files_name_file_and_problem(tmp_path, maker, problem):
    path = tmp_path / "bad.jpg"
    maker(path)
    with pytest.raises(ImageReadError) as exc:
        read_image(path)
    assert "bad.jpg" in str(exc.value)
    assert problem in str(exc.value)


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "t.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageReadError, match="t.jpg: image data is truncated"):
        read_image(tmp_path / "t.jpg")


def test_huge_image_refused_from_header(tmp_path):
    _png_header_only(tmp_path / "huge.png", 20000, 20000)
    with pytest.raises(ImageReadError, match=r"huge.png: image is too large \(400 Mpx\)"):
        read_image(tmp_path / "huge.png")


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(tmp_path / "nope.png")


def test_to_rgb_uint8_float_and_nan():
    out = to_rgb_uint8(np.full((4, 4), 0.5, np.float32))
    assert out.shape == (4, 4, 3) and int(out[0, 0, 0]) == 128
    bad = np.full((4, 4, 3), np.nan, np.float32)
    with pytest.raises(ImageReadError, match="NaN"):
        to_rgb_uint8(bad, source="frame 3")
