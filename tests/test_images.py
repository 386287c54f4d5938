"""read_image: original bytes kept for 8-bit RGB JPEG/PNG, everything else made RGB PNG."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from data_prep.images import read_image
from data_prep.scene import DataError
from sln_jax import images as sln_images
from sln_jax import records, tfrecord

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

def _random_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------- sln_jax.images: the one reader and policy


def test_load_rgb_png_round_trip(tmp_path):
    pixels = _random_rgb(13, 17)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    np.testing.assert_array_equal(sln_images.load_image(tmp_path / "a.png"), pixels)


def test_load_grayscale_repeats_channels(tmp_path):
    gray = _random_rgb(9, 11)[:, :, 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    out = sln_images.load_image(tmp_path / "g.png")
    assert out.shape == (9, 11, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


def test_load_rgba_composites_over_white(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = (200, 40, 10)
    rgba[0, :, 3] = 255   # opaque: the colour
    rgba[1, :, 3] = 0     # transparent: white
    rgba[1, 2, 3] = 128   # half: the blend
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "t.png")
    out = sln_images.load_image(tmp_path / "t.png").astype(int)
    np.testing.assert_array_equal(out[0], [[200, 40, 10]] * 3)
    np.testing.assert_array_equal(out[1, :2], [[255, 255, 255]] * 2)
    expected = np.round(np.array([200, 40, 10]) * 128 / 255 + 255 * 127 / 255)
    assert np.abs(out[1, 2] - expected).max() <= 1


def test_load_palette_with_transparency(tmp_path):
    index = np.array([[0, 1], [1, 0]], np.uint8)
    image = Image.fromarray(index, mode="P")
    image.putpalette([10, 20, 30, 250, 0, 0] + [0] * 762)
    image.info["transparency"] = 0
    image.save(tmp_path / "p.png", transparency=0)
    out = sln_images.load_image(tmp_path / "p.png")
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 1], [250, 0, 0])


def test_load_16bit_grayscale_scales_to_8bit(tmp_path):
    values = np.array([[0, 257, 65535], [32896, 1000, 60000]], np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    out = sln_images.load_image(tmp_path / "d.png")
    np.testing.assert_array_equal(out[:, :, 1], np.round(values / 257.0).astype(np.uint8))


def test_load_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (8, 6), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    out = sln_images.load_image(tmp_path / "c.jpg")
    assert out.shape == (6, 8, 3)
    assert np.abs(out.astype(int) - [255, 0, 0]).max() <= 8  # JPEG rounding


def test_load_keeps_the_stored_pixel_grid_despite_exif_orientation(tmp_path):
    # Annotations and TensorFlow's decoder use the stored grid: EXIF is not applied anywhere.
    pixels = _random_rgb(4, 7)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(pixels).save(tmp_path / "o.png", exif=exif)
    np.testing.assert_array_equal(sln_images.load_image(tmp_path / "o.png"), pixels)


@pytest.mark.parametrize("content", [b"", b"not an image at all", "truncated"])
def test_unreadable_files_raise_naming_the_file(tmp_path, content):
    path = tmp_path / "bad.png"
    if content == "truncated":
        buffer = io.BytesIO()
        Image.fromarray(_random_rgb(64, 64)).save(buffer, format="PNG")
        content = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    path.write_bytes(content)
    with pytest.raises(sln_images.UnreadableImageError, match="bad.png"):
        sln_images.load_image(path)


def _odd_files(directory) -> list:
    """Files of every mode the policy names: alpha, palette transparency, 16-bit, CMYK, EXIF."""
    rgb = _random_rgb(6, 8, seed=3)
    paths = []

    def save(name, image, **kwargs):
        path = directory / name
        image.save(path, **kwargs)
        paths.append(path)

    rgba = np.dstack([rgb, np.linspace(0, 255, 48).reshape(6, 8).astype(np.uint8)])
    save("rgba.png", Image.fromarray(rgba, mode="RGBA"))
    save("la.png", Image.fromarray(rgba[:, :, [0, 3]], mode="LA"))
    palette = Image.fromarray(rgb).convert("P")
    save("p.png", palette, transparency=0)
    save("gray16.png", Image.fromarray((rgb[:, :, 0].astype(np.uint16) * 250)))
    cv2.imwrite(str(directory / "rgb16.png"), rgb.astype(np.uint16) * 257 + 100)
    paths.append(directory / "rgb16.png")
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6
    save("exif.jpg", Image.fromarray(rgb), exif=exif, quality=95)
    save("plain.png", Image.fromarray(rgb))
    return paths


def _example(image_data: bytes) -> bytes:
    """A record holding only what ``records.parse_tf`` needs to decode an image."""
    ints, strings = tfrecord.Int64Feature, tfrecord.BytesFeature
    return tfrecord.example({
        "schema_version": ints([records.SCHEMA_VERSION]), "image/encoded": strings([image_data]),
        "image/id": ints([1]), "image/height": ints([6]), "image/width": ints([8]),
        "targets/global_layers": strings([cv2.imencode(".png", np.zeros((6, 8), np.uint8))[1]
                                          .tobytes()]), "targets/layers": strings([b""]),
        "targets/semdist": strings([b""])})


def test_conversion_training_and_inference_see_the_same_pixels(tmp_path):
    """One file, three readers: the converter's record bytes decoded by TensorFlow (training),
    the same bytes decoded by the NumPy reader, and ``load_image`` (inference)."""
    import tensorflow as tf

    for path in _odd_files(tmp_path):
        stored = read_image(str(path), 1, 6, 8)
        inference = sln_images.load_image(path)
        features = records.parse_tf(tf.constant(_example(stored.data)), 4)
        training = features["image"].numpy()
        np.testing.assert_array_equal(training, inference, err_msg=path.name)
        np.testing.assert_array_equal(sln_images.decode(stored.data), inference,
                                      err_msg=path.name)
