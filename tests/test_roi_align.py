"""ROIAlign against a loop-by-loop NumPy transcription of torchvision's aligned=True kernel."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from sln_jax.ops.roi_align import fpn_levels, multilevel_roi_align, roi_align


def _bilinear_reference(fmap, y, x):
    """torchvision's bilinear_interpolate for one sample: fmap [H, W, C] -> [C]."""
    h, w, _ = fmap.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(fmap.shape[-1])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= h - 1:
        y_high = y_low = h - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= w - 1:
        x_high = x_low = w - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (hy * hx * fmap[y_low, x_low] + hy * lx * fmap[y_low, x_high]
            + ly * hx * fmap[y_high, x_low] + ly * lx * fmap[y_high, x_high])


def roi_align_reference(fmap, boxes, out, scale, ratio):
    """torchvision roi_align(aligned=True) forward, boxes (y1, x1, y2, x2), NHWC, float64."""
    fmap = np.asarray(fmap, np.float64)
    result = np.zeros((len(boxes), out, out, fmap.shape[-1]))
    for n, (y1, x1, y2, x2) in enumerate(np.asarray(boxes, np.float64)):
        start_y, start_x = y1 * scale - 0.5, x1 * scale - 0.5
        bin_h = (y2 * scale - 0.5 - start_y) / out
        bin_w = (x2 * scale - 0.5 - start_x) / out
        for py in range(out):
            for px in range(out):
                acc = np.zeros(fmap.shape[-1])
                for iy in range(ratio):
                    y = start_y + py * bin_h + (iy + 0.5) * bin_h / ratio
                    for ix in range(ratio):
                        x = start_x + px * bin_w + (ix + 0.5) * bin_w / ratio
                        acc += _bilinear_reference(fmap, y, x)
                result[n, py, px] = acc / (ratio * ratio)
    return result


def _random_boxes(rng, n, size, margin=0.3):
    """Boxes that may extend past the image (to hit the zero and clamp branches)."""
    lo, hi = -margin * size, (1 + margin) * size
    a = rng.uniform(lo, hi, (n, 2, 2))
    a.sort(axis=1)
    boxes = np.stack([a[:, 0, 0], a[:, 0, 1], a[:, 1, 0], a[:, 1, 1]], axis=-1)
    return boxes.astype(np.float32)


_roi_align_jit = jax.jit(roi_align, static_argnums=(2, 3, 4))


# (H, W, output_size, sampling_ratio, stride): 1-cell maps, non-square maps, odd ratios.
SHAPES = [(1, 1, 2, 2, 1), (5, 9, 3, 1, 2), (8, 6, 4, 3, 4), (7, 7, 2, 2, 1)]


@pytest.mark.parametrize("h,w,out,ratio,stride", SHAPES)
@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_roi_align_matches_reference(h, w, out, ratio, stride, seed):
    rng = np.random.default_rng(seed)
    fmap = rng.normal(size=(h, w, 3)).astype(np.float32)
    boxes = _random_boxes(rng, 5, max(h, w) * stride)
    got = _roi_align_jit(jnp.asarray(fmap), jnp.asarray(boxes), out, 1.0 / stride, ratio)
    want = roi_align_reference(fmap, boxes, out, 1.0 / stride, ratio)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


def test_roi_align_exact_values_on_a_ramp():
    # f(y, x) = 10 y + x is linear, so away from borders each bin is the ramp at the bin centre.
    h, w = 8, 8
    fmap = (10.0 * np.arange(h)[:, None] + np.arange(w)[None, :])[..., None].astype(np.float32)
    boxes = np.array([[2.0, 1.0, 6.0, 5.0]], np.float32)  # input px, stride 1
    got = np.asarray(roi_align(jnp.asarray(fmap), jnp.asarray(boxes), 2, 1.0, 2))[0, ..., 0]
    # Bin centres in input px are y {3, 5}, x {2, 4}; minus the half-pixel offset in cells.
    want = 10.0 * np.array([2.5, 4.5])[:, None] + np.array([1.5, 3.5])[None, :]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_roi_align_zero_outside_and_degenerate_box():
    fmap = jnp.ones((4, 4, 2))
    boxes = jnp.array([[-20.0, -20.0, -10.0, -10.0], [1.0, 1.0, 1.0, 1.0]])
    got = np.asarray(roi_align(fmap, boxes, 3, 1.0, 2))
    np.testing.assert_array_equal(got[0], 0.0)  # every sample at y < -1
    np.testing.assert_allclose(got[1], 1.0)  # a point box samples one location


def test_roi_align_jit_grad_and_dtype():
    fmap = jax.random.normal(jax.random.PRNGKey(0), (6, 6, 4))
    boxes = jnp.array([[0.0, 0.0, 12.0, 12.0], [4.0, 2.0, 9.0, 11.0]])
    fn = jax.jit(roi_align, static_argnums=(2, 3, 4))
    np.testing.assert_allclose(fn(fmap, boxes, 3, 0.5, 2), roi_align(fmap, boxes, 3, 0.5, 2),
                               rtol=1e-5, atol=1e-6)
    grad = jax.grad(lambda f: roi_align(f, boxes, 3, 0.5, 2).sum())(fmap)
    # Each output bin is an average of convex combinations: total gradient mass = 2 * 9 bins.
    np.testing.assert_allclose(grad.sum(), 2 * 9 * 4, rtol=1e-5)
    assert roi_align(fmap.astype(jnp.bfloat16), boxes, 3, 0.5, 2).dtype == jnp.bfloat16


def test_roi_align_rejects_bad_arguments():
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align(jnp.ones((4, 4, 1)), jnp.zeros((1, 4)), 2, 1.0, 0)
    with pytest.raises(ValueError, match=r"\[H, W, C\]"):
        roi_align(jnp.ones((4, 4)), jnp.zeros((1, 4)), 2, 1.0, 2)


def test_fpn_levels_follow_the_fpn_rule():
    sides = np.array([8.0, 111.0, 112.0, 223.0, 224.0, 447.0, 448.0, 2000.0], np.float32)
    boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], -1)
    want = np.clip(np.floor(4 + np.log2(sides / 224.0 + 1e-8)), 2, 5).astype(np.int32)
    np.testing.assert_array_equal(np.asarray(fpn_levels(jnp.asarray(boxes))), want)
    np.testing.assert_array_equal(want, [2, 2, 3, 3, 4, 4, 5, 5])


_multilevel_jit = jax.jit(lambda feats, boxes: multilevel_roi_align(feats, boxes, 3, 2))


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_multilevel_equals_per_level_reference(seed):
    rng = np.random.default_rng(seed)
    size = 128
    feats = [rng.normal(size=(size // s, size // s, 3)).astype(np.float32)
             for s in (4, 8, 16, 32)]
    boxes = _random_boxes(rng, 12, size, margin=0.1)
    # Force a spread of sizes so every level is used.
    boxes[:4, 2:] = boxes[:4, :2] + np.array([[10.0], [60.0], [150.0], [300.0]], np.float32)
    got = np.asarray(_multilevel_jit([jnp.asarray(f) for f in feats], jnp.asarray(boxes)))
    levels = np.asarray(fpn_levels(jnp.asarray(boxes)))
    for i, level in enumerate(levels):
        want = roi_align_reference(feats[level - 2], boxes[i:i + 1], 3, 1.0 / 2 ** level, 2)
        np.testing.assert_allclose(got[i], want[0], rtol=1e-4, atol=1e-5)
