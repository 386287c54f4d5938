"""Anchors: count, order, centres, sizes and ratios."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from sln_jax.ops.anchors import feature_size, generate_anchors


def test_counts_and_level_sizes_at_256():
    anchors, level_sizes = generate_anchors(256)
    assert level_sizes == [64 * 64 * 3, 32 * 32 * 3, 16 * 16 * 3, 8 * 8 * 3, 4 * 4 * 3]
    assert anchors.shape == (sum(level_sizes), 4) and anchors.dtype == np.float32


def test_first_anchors_exact_values():
    anchors, _ = generate_anchors(64, strides=(4,), sizes=(32,), ratios=(0.5, 1.0, 2.0))
    r = np.sqrt(2.0)
    # Cell (0, 0) centred at (2, 2); ratio 0.5 = h / w: h = 32 / sqrt(2), w = 32 * sqrt(2).
    want = np.array([[2 - 8 * r, 2 - 16 * r, 2 + 8 * r, 2 + 16 * r],
                     [-14.0, -14.0, 18.0, 18.0],
                     [2 - 16 * r, 2 - 8 * r, 2 + 16 * r, 2 + 8 * r]])
    np.testing.assert_allclose(anchors[:3], want, rtol=1e-6)
    heights = anchors[:3, 2] - anchors[:3, 0]
    widths = anchors[:3, 3] - anchors[:3, 1]
    np.testing.assert_allclose(heights / widths, [0.5, 1.0, 2.0], rtol=1e-5)
    np.testing.assert_allclose(heights * widths, 32.0 ** 2, rtol=1e-5)
    # Next anchors: same ratios at cell (0, 1), centre x = 6.
    np.testing.assert_allclose(anchors[3:6] - anchors[0:3], [[0, 4, 0, 4]] * 3, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(image_size=st.integers(16, 300), ratios=st.lists(st.floats(0.25, 4.0), min_size=1,
                                                        max_size=3))
def test_order_centres_and_shapes(image_size, ratios):
    strides, sizes = (4, 8, 16), (16, 40, 100)
    anchors, level_sizes = generate_anchors(image_size, strides, sizes, ratios)
    start = 0
    for stride, size, count in zip(strides, sizes, level_sizes):
        cells = feature_size(image_size, stride)
        assert cells == int(np.ceil(image_size / stride)) and count == cells * cells * len(ratios)
        level = anchors[start:start + count].reshape(cells, cells, len(ratios), 4)
        start += count
        centers = (np.arange(cells) + 0.5) * stride
        cy = (level[..., 0] + level[..., 2]) / 2
        cx = (level[..., 1] + level[..., 3]) / 2
        np.testing.assert_allclose(cy, np.broadcast_to(centers[:, None, None], cy.shape),
                                   atol=1e-3)
        np.testing.assert_allclose(cx, np.broadcast_to(centers[None, :, None], cx.shape),
                                   atol=1e-3)
        h = level[..., 2] - level[..., 0]
        w = level[..., 3] - level[..., 1]
        np.testing.assert_allclose(h * w, size ** 2, rtol=1e-4)
        np.testing.assert_allclose(h / w, np.broadcast_to(ratios, h.shape), rtol=1e-4)
    assert start == len(anchors)


def test_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="one size per stride"):
        generate_anchors(64, strides=(4, 8), sizes=(32,))
