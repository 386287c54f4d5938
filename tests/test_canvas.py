"""sln_jax.canvas: fitting images into square model inputs, in NumPy and TensorFlow."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sln_jax import canvas

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


def _random_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_default_canvas_sizes_are_multiples_of_64():
    assert canvas.default_canvas_sizes(512) == (512, 768, 1024)
    assert canvas.default_canvas_sizes(192) == (192, 320, 384)


@given(h=st.integers(1, 3000), w=st.integers(1, 3000))
def test_choose_canvas_smallest_that_holds(h, w):
    sizes = (256, 384, 512)
    side = canvas.choose_canvas(h, w, sizes)
    assert side in sizes
    if max(h, w) <= 512:
        assert max(h, w) <= side
        assert all(s < max(h, w) for s in sizes if s < side)
    else:
        assert side == 512


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 300), w=st.integers(1, 300), side=st.sampled_from([64, 128, 192]))
def test_fit_to_canvas_keeps_aspect_and_pads_with_zero(h, w, side):
    image = _random_rgb(h, w, seed=h * 1000 + w)
    out, (nh, nw) = canvas.fit_to_canvas(image, side)
    assert out.shape == (side, side, 3) and out.dtype == np.float32
    assert max(nh, nw) == side
    scale = side / max(h, w)
    assert abs(nh - h * scale) <= 0.5 + 1e-9 or nh == 1
    assert abs(nw - w * scale) <= 0.5 + 1e-9 or nw == 1
    assert not out[nh:].any() and not out[:, nw:].any()
    # The content is the normalized resized image.
    pixels = out[:nh, :nw] * np.float32(STD) + np.float32(MEAN)
    assert pixels.min() >= -0.01 and pixels.max() <= 255.01


def test_fit_to_canvas_resizes_as_the_input_pipeline():
    import tensorflow as tf
    for h, w, side in ((300, 200, 128), (50, 70, 128)):
        image = _random_rgb(h, w)
        out, (nh, nw) = canvas.fit_to_canvas(image, side)
        resized = tf.image.resize(image, [nh, nw], method="bilinear", antialias=True).numpy()
        expected = (resized / 255.0 - np.float32(canvas.IMAGENET_MEAN)) / \
            np.float32(canvas.IMAGENET_STD)
        # Pillow rounds to uint8: at most one grey level apart.
        assert np.abs(out[:nh, :nw] - expected).max() <= 1.0 / 255 / min(
            canvas.IMAGENET_STD) + 1e-5


def test_fit_to_canvas_identity_size_is_exact():
    image = _random_rgb(64, 40)
    out, size = canvas.fit_to_canvas(image, 64)
    assert size == (64, 40)
    np.testing.assert_allclose(out[:, :40] * np.float32(STD) + np.float32(MEAN), image,
                               atol=1e-3)




@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 2000), w=st.integers(1, 2000), side=st.sampled_from([64, 128, 512, 768]))
def test_content_size_numpy_equals_tensorflow(h, w, side):
    """The input pipeline (TensorFlow) and inference (NumPy) fit an image to the same size."""
    import tensorflow as tf
    _, new_h, new_w = canvas.content_size_tf(tf.constant(h), tf.constant(w), side)
    assert canvas.content_size(h, w, side) == (int(new_h), int(new_w))


def test_boxes_to_original_inverts_the_canvas_scale():
    boxes = np.array([[0, 0, 64, 32], [10, 5, 70, 40]], np.float32)
    out = canvas.boxes_to_original(boxes, (64, 32), (128, 64))
    np.testing.assert_allclose(out, [[0, 0, 128, 64], [20, 10, 128, 64]])


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 200), w=st.integers(1, 200), nh=st.integers(1, 200),
       nw=st.integers(1, 200))
def test_resize_nearest_equals_the_input_pipelines_resize(h, w, nh, nw):
    import tensorflow as tf
    ids = np.random.default_rng(h * 7 + w).integers(0, 255, (h, w)).astype(np.uint8)
    expected = tf.image.resize(ids[:, :, None], [nh, nw], method="nearest").numpy()[:, :, 0]
    np.testing.assert_array_equal(canvas.resize_nearest(ids, nh, nw), expected)


def test_class_fractions_numpy_equals_tensorflow_and_counts_cells():
    import tensorflow as tf
    ids = np.full((64, 64), -1, np.int64)
    ids[:37, :50] = np.random.default_rng(0).integers(0, 6, (37, 50))
    ids[:4, :4] = 2  # one cell of a single class
    ids[4:8, :4] = [[0, 1, 1, -1]] * 4  # a cell of mixed classes and padding
    out = canvas.class_fractions(ids, 6)
    assert out.shape == (16, 16, 6) and out.dtype == np.float32
    np.testing.assert_array_equal(out, canvas.class_fractions_tf(tf.constant(ids), 6).numpy())
    np.testing.assert_array_equal(out[0, 0], [0, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(out[1, 0], [0.25, 0.5, 0, 0, 0, 0])
    sums = np.zeros((16, 16), np.float32)
    sums[:9, :12] = 1.0  # cells inside the content (rows < 36, columns < 48)
    sums[9, :12] = 0.25  # row 36 only
    sums[:9, 12] = 0.5  # columns 48 and 49 only
    sums[9, 12] = 0.125
    sums[1, 0] = 0.75
    np.testing.assert_array_equal(out.sum(-1), sums)
    assert not out[10:].any() and not out[:, 13:].any()


def test_semantic_canvas_fits_the_map_as_the_image():
    ids = np.zeros((30, 60), np.uint8)
    ids[:, 30:] = 3  # right half class 3
    out = canvas.semantic_canvas(ids, 64, 4)
    _, (nh, nw) = canvas.fit_to_canvas(np.zeros((30, 60, 3), np.uint8), 64)
    assert (nh, nw) == (32, 64) and out.shape == (16, 16, 4)
    np.testing.assert_array_equal(out[:8, :8, 0], 1.0)
    np.testing.assert_array_equal(out[:8, 8:, 3], 1.0)
    assert not out[8:].any()  # the canvas padding holds no class
