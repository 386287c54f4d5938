"""Tests of sln_jax.infer: image loading, canvases, writers, and inference end to end."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from sln_jax import infer

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


def _random_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------- image loading


def test_load_rgb_png_round_trip(tmp_path):
    pixels = _random_rgb(13, 17)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    np.testing.assert_array_equal(infer.load_image(tmp_path / "a.png"), pixels)


def test_load_grayscale_repeats_channels(tmp_path):
    gray = _random_rgb(9, 11)[:, :, 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    out = infer.load_image(tmp_path / "g.png")
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
    out = infer.load_image(tmp_path / "t.png").astype(int)
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
    out = infer.load_image(tmp_path / "p.png")
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 1], [250, 0, 0])


def test_load_16bit_grayscale_scales_to_8bit(tmp_path):
    values = np.array([[0, 257, 65535], [32896, 1000, 60000]], np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    out = infer.load_image(tmp_path / "d.png")
    np.testing.assert_array_equal(out[:, :, 1], np.round(values / 257.0).astype(np.uint8))


def test_load_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (8, 6), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    out = infer.load_image(tmp_path / "c.jpg")
    assert out.shape == (6, 8, 3)
    assert np.abs(out.astype(int) - [255, 0, 0]).max() <= 8  # JPEG rounding


def test_load_applies_exif_orientation(tmp_path):
    pixels = _random_rgb(4, 7)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(pixels).save(tmp_path / "o.png", exif=exif)
    out = infer.load_image(tmp_path / "o.png")
    np.testing.assert_array_equal(out, np.rot90(pixels, k=-1))


@pytest.mark.parametrize("content", [b"", b"not an image at all", "truncated"])
def test_unreadable_files_raise_naming_the_file(tmp_path, content):
    path = tmp_path / "bad.png"
    if content == "truncated":
        buffer = io.BytesIO()
        Image.fromarray(_random_rgb(64, 64)).save(buffer, format="PNG")
        content = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    path.write_bytes(content)
    with pytest.raises(infer.UnreadableImageError, match="bad.png"):
        infer.load_image(path)


def test_find_images_directory_glob_and_file(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.png", "a.JPG", "sub/c.webp", "notes.txt", "sub/d.bin"):
        (tmp_path / name).write_bytes(b"x")
    found = infer.find_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.JPG", "b.png", "sub/c.webp"]
    # A glob takes whatever it matches, so a bad file given on purpose is reported, not ignored.
    globbed = infer.find_images(str(tmp_path / "sub" / "*"))
    assert [p.name for p in globbed] == ["c.webp", "d.bin"]
    assert infer.find_images(tmp_path / "b.png") == [tmp_path / "b.png"]
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        infer.find_images(str(tmp_path / "nothing_here*.png"))


# --------------------------------------------------------------------------- canvases


def test_default_canvas_sizes_are_multiples_of_64():
    assert infer.default_canvas_sizes(512) == (512, 768, 1024)
    assert infer.default_canvas_sizes(192) == (192, 320, 384)


@given(h=st.integers(1, 3000), w=st.integers(1, 3000))
def test_choose_canvas_smallest_that_holds(h, w):
    sizes = (256, 384, 512)
    side = infer.choose_canvas(h, w, sizes)
    assert side in sizes
    if max(h, w) <= 512:
        assert max(h, w) <= side
        assert all(s < max(h, w) for s in sizes if s < side)
    else:
        assert side == 512


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 300), w=st.integers(1, 300), canvas=st.sampled_from([64, 128, 192]))
def test_fit_to_canvas_keeps_aspect_and_pads_with_zero(h, w, canvas):
    image = _random_rgb(h, w, seed=h * 1000 + w)
    out, (nh, nw) = infer.fit_to_canvas(image, canvas, MEAN, STD)
    assert out.shape == (canvas, canvas, 3) and out.dtype == np.float32
    assert max(nh, nw) == canvas
    scale = canvas / max(h, w)
    assert abs(nh - h * scale) <= 0.5 + 1e-9 or nh == 1
    assert abs(nw - w * scale) <= 0.5 + 1e-9 or nw == 1
    assert not out[nh:].any() and not out[:, nw:].any()
    # The content is the normalized resized image.
    pixels = out[:nh, :nw] * np.float32(STD) + np.float32(MEAN)
    assert pixels.min() >= -0.01 and pixels.max() <= 255.01


def test_fit_to_canvas_resizes_as_the_input_pipeline():
    import tensorflow as tf
    from sln_jax import input_pipeline
    mean = tuple(255 * m for m in input_pipeline.IMAGENET_MEAN)
    std = tuple(255 * s for s in input_pipeline.IMAGENET_STD)
    for h, w, canvas in ((300, 200, 128), (50, 70, 128)):
        image = _random_rgb(h, w)
        out, (nh, nw) = infer.fit_to_canvas(image, canvas, mean, std)
        resized = tf.image.resize(image, [nh, nw], method="bilinear", antialias=True).numpy()
        expected = (resized / 255.0 - np.float32(input_pipeline.IMAGENET_MEAN)) / \
            np.float32(input_pipeline.IMAGENET_STD)
        # Pillow rounds to uint8: at most one grey level apart.
        assert np.abs(out[:nh, :nw] - expected).max() <= 1.0 / 255 / min(
            input_pipeline.IMAGENET_STD) + 1e-5


def test_fit_to_canvas_identity_size_is_exact():
    image = _random_rgb(64, 40)
    out, size = infer.fit_to_canvas(image, 64, MEAN, STD)
    assert size == (64, 40)
    np.testing.assert_allclose(out[:, :40] * np.float32(STD) + np.float32(MEAN), image,
                               atol=1e-3)


# --------------------------------------------------------------------------- writers


def test_write_json_atomic_handles_numpy_and_leaves_no_temp(tmp_path):
    payload = {"a": np.int64(3), "b": np.float32(0.5), "c": np.arange(3), "d": b"rle"}
    infer.write_json_atomic(tmp_path / "out" / "r.json", payload)
    assert json.loads((tmp_path / "out" / "r.json").read_text()) == {
        "a": 3, "b": 0.5, "c": [0, 1, 2], "d": "rle"}
    assert os.listdir(tmp_path / "out") == ["r.json"]


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "r.json"
    infer.write_json_atomic(target, [1])
    with pytest.raises(TypeError):
        infer.write_json_atomic(target, [object()])
    assert json.loads(target.read_text()) == [1]
    assert os.listdir(tmp_path) == ["r.json"]


def test_write_png_atomic_round_trip(tmp_path):
    pixels = _random_rgb(5, 6)
    infer.write_png_atomic(tmp_path / "p.png", pixels)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "p.png")), pixels)
    with pytest.raises(ValueError, match="q.png"):
        infer.write_png_atomic(tmp_path / "q.png", pixels.astype(np.float32))


def test_image_ids_from_annotations(tmp_path):
    gt = {"images": [{"id": 7, "file_name": "val/x.png"}, {"id": 9, "file_name": "a/y.png"},
                     {"id": 11, "file_name": "b/y.png"}], "annotations": []}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    ids = infer.image_ids_from_annotations(tmp_path / "gt.json")
    assert ids["val/x.png"] == 7 and ids["x.png"] == 7
    assert ids["a/y.png"] == 9 and ids["b/y.png"] == 11
    assert "y.png" not in ids  # ambiguous base name
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ValueError, match="bad.json"):
        infer.image_ids_from_annotations(tmp_path / "bad.json")
