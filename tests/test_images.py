"""read_image: original bytes kept for 8-bit RGB JPEG/PNG, everything else made RGB PNG."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from data_prep.images import read_image
from data_prep.scene import DataError

RGB = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_rgb_png_and_jpeg_keep_their_bytes(tmp_path):
    for fmt in ("PNG", "JPEG"):
        path = tmp_path / f"a.{fmt.lower()}"
        Image.fromarray(RGB).save(path, format=fmt)
        image = read_image(str(path), 1, 6, 8)
        assert image.data == path.read_bytes()
        assert image.format == fmt.lower() and image.converted_from is None


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "1", "CMYK"])
def test_other_modes_become_rgb_png(tmp_path, mode):
    source = Image.fromarray(RGB).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    path = tmp_path / "a.img"
    source.save(path, format=fmt)
    image = read_image(str(path), 1, 6, 8)
    assert image.format == "png" and image.converted_from == f"{mode}/{fmt}"
    want = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(_decode(image.data), want)


def test_16_bit_gray_is_scaled(tmp_path):
    gray = np.array([[0, 257 * 10, 65535]], np.uint16)
    path = tmp_path / "g16.png"
    cv2.imwrite(str(path), gray)
    image = read_image(str(path), 1, 1, 3)
    np.testing.assert_array_equal(_decode(image.data)[0, :, 0], [0, 10, 255])
    assert _decode(image.data).shape == (1, 3, 3)


def test_16_bit_rgb_is_scaled(tmp_path):
    bgr16 = np.zeros((1, 2, 3), np.uint16)
    bgr16[0, 0] = (65535, 0, 257 * 100)  # B, G, R
    path = tmp_path / "c16.png"
    cv2.imwrite(str(path), bgr16)
    image = read_image(str(path), 1, 1, 2)
    assert image.converted_from is not None
    np.testing.assert_array_equal(_decode(image.data)[0, 0], [100, 0, 255])


def test_missing_image():
    with pytest.raises(DataError, match=r"nope.png \(image 4\): image file not found"):
        read_image("nope.png", 4, 1, 1)


def test_truncated_image(tmp_path):
    path = tmp_path / "t.jpg"
    big = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(big).save(path, format="JPEG")
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match=r"t.jpg \(image 9\): unreadable or truncated image"):
        read_image(str(path), 9, 64, 64)


def test_not_an_image(tmp_path):
    path = tmp_path / "x.png"
    path.write_text("hello")
    with pytest.raises(DataError, match="unreadable or truncated image"):
        read_image(str(path), 2, 1, 1)


def test_size_mismatch(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(RGB).save(path)
    with pytest.raises(DataError, match="image is 6x8 but the annotations say 8x6"):
        read_image(str(path), 1, 8, 6)


def test_truncated_png(tmp_path):
    path = tmp_path / "t.png"
    big = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(big).save(path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(DataError, match=r"t.png \(image 5\): unreadable or truncated image"):
        read_image(str(path), 5, 64, 64)


def test_corrupt_png_data_is_caught_without_decoding(tmp_path):
    path = tmp_path / "c.png"
    big = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(big).save(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the pixel data: the chunk CRC no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="unreadable or truncated image"):
        read_image(str(path), 6, 64, 64)


def test_corrupt_jpeg_scan(tmp_path):
    path = tmp_path / "c.jpg"
    big = np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(big).save(path, format="JPEG")
    data = path.read_bytes()
    eoi = data.rindex(b"\xff\xd9")
    path.write_bytes(data[:eoi // 2])  # scan cut in the middle, no end marker
    with pytest.raises(DataError, match="unreadable or truncated image"):
        read_image(str(path), 7, 64, 64)
