"""Box ops: IoU and coder against NumPy, NMS against a plain greedy NumPy reference."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from sln_jax.ops import boxes as B

N = 12  # fixed NMS input size so every hypothesis example reuses one compiled function


def iou_reference(a, b):
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(np.asarray(a, np.float64)):
        for j, q in enumerate(np.asarray(b, np.float64)):
            area_p = max(p[2] - p[0], 0) * max(p[3] - p[1], 0)
            area_q = max(q[2] - q[0], 0) * max(q[3] - q[1], 0)
            if area_p <= 0 or area_q <= 0:
                continue
            ih = max(min(p[2], q[2]) - max(p[0], q[0]), 0)
            iw = max(min(p[3], q[3]) - max(p[1], q[1]), 0)
            out[i, j] = ih * iw / (area_p + area_q - ih * iw)
    return out


def nms_reference(boxes, scores, threshold, max_output):
    """Greedy NMS: stable descending score order, drop IoU > threshold, skip -inf/NaN."""
    scores = np.asarray(scores, np.float64)
    order = [i for i in np.argsort(-scores, kind="stable")
             if not np.isnan(scores[i]) and scores[i] > -np.inf]
    overlaps = iou_reference(boxes, boxes)
    keep, removed = [], set()
    for i in order:
        if i in removed:
            continue
        keep.append(int(i))
        if len(keep) == max_output:
            break
        removed.update(int(j) for j in np.flatnonzero(overlaps[i] > threshold))
    return keep


def int_boxes(draw_size=N, max_coord=20):
    """Integer-valued boxes (exact float arithmetic, so IoU ties are real ties)."""
    corner = st.tuples(st.integers(0, max_coord), st.integers(0, max_coord),
                       st.integers(0, 8), st.integers(0, 8))
    return st.lists(corner, min_size=draw_size, max_size=draw_size).map(
        lambda c: np.array([[y, x, y + h, x + w] for y, x, h, w in c], np.float32))


scores_strategy = st.lists(
    st.sampled_from([0.1, 0.5, 0.5, 0.9, 2.0, -np.inf, -np.inf]), min_size=N, max_size=N).map(
        lambda s: np.array(s, np.float32))


def test_area_and_degenerate_boxes():
    boxes = jnp.array([[0.0, 0.0, 10.0, 4.0], [5.0, 5.0, 5.0, 9.0], [3.0, 3.0, 1.0, 9.0]])
    np.testing.assert_array_equal(B.area(boxes), [40.0, 0.0, 0.0])
    np.testing.assert_array_equal(B.area(boxes.reshape(1, 3, 4)).shape, (1, 3))


@settings(max_examples=30, deadline=None)
@given(a=int_boxes(5), b=int_boxes(7))
def test_iou_matches_reference(a, b):
    got = np.asarray(B.iou(jnp.asarray(a), jnp.asarray(b)))
    np.testing.assert_allclose(got, iou_reference(a, b), rtol=1e-6, atol=1e-7)


def test_iou_known_values():
    a = jnp.array([[0.0, 0.0, 10.0, 10.0]])
    b = jnp.array([[0.0, 5.0, 10.0, 15.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0],
                   [2.0, 2.0, 2.0, 2.0]])
    np.testing.assert_allclose(B.iou(a, b), [[50.0 / 150.0, 1.0, 0.0, 0.0]], rtol=1e-6)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_encode_decode_round_trip(seed):
    rng = np.random.default_rng(seed)
    anchors = np.concatenate([rng.uniform(0, 100, (20, 2)), np.zeros((20, 2))], 1)
    anchors[:, 2:] = anchors[:, :2] + rng.uniform(4, 200, (20, 2))
    boxes = np.concatenate([rng.uniform(0, 100, (20, 2)), np.zeros((20, 2))], 1)
    boxes[:, 2:] = boxes[:, :2] + rng.uniform(4, 200, (20, 2))
    deltas = B.encode(jnp.asarray(boxes, jnp.float32), jnp.asarray(anchors, jnp.float32))
    back = B.decode(deltas, jnp.asarray(anchors, jnp.float32))
    np.testing.assert_allclose(np.asarray(back), boxes, rtol=1e-4, atol=1e-3)


def test_encode_known_values_and_weights():
    anchor = jnp.array([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), size (10, 20)
    box = jnp.array([[2.0, 4.0, 22.0, 14.0]])  # centre (12, 9), size (20, 10)
    want = [10 * 7 / 10, 10 * -1 / 20, 5 * math.log(2.0), 5 * math.log(0.5)]
    np.testing.assert_allclose(B.encode(box, anchor)[0], want, rtol=1e-6)
    np.testing.assert_allclose(B.encode(box, anchor, (1.0, 1.0, 1.0, 1.0))[0],
                               [0.7, -0.05, math.log(2.0), math.log(0.5)], rtol=1e-6)


def test_decode_clamps_size_and_clips():
    anchor = jnp.array([[0.0, 0.0, 16.0, 16.0]])
    huge = jnp.array([[0.0, 0.0, 1e4, 1e4]])
    out = np.asarray(B.decode(huge, anchor))[0]
    np.testing.assert_allclose(out[2] - out[0], 1000.0, rtol=1e-5)  # 16 * exp(log(1000/16))
    clipped = np.asarray(B.decode(huge, anchor, clip_to=(30, 40)))[0]
    np.testing.assert_allclose(clipped, [0.0, 0.0, 30.0, 40.0])
    traced = jax.jit(lambda d, a, s: B.decode(d, a, clip_to=s))(huge, anchor,
                                                               jnp.array([30, 40]))
    np.testing.assert_allclose(traced[0], clipped)


def test_clip():
    boxes = jnp.array([[-5.0, 3.0, 50.0, 70.0]])
    np.testing.assert_array_equal(B.clip(boxes, (40, 60)), [[0.0, 3.0, 40.0, 60.0]])


_traces = []


@jax.jit
def _nms_jit(boxes, scores, threshold):
    _traces.append(1)
    return B.nms(boxes, scores, threshold, N)


@settings(max_examples=150, deadline=None)
@given(boxes=int_boxes(), scores=scores_strategy,
       threshold=st.sampled_from([0.0, 0.3, 0.5, 1.0 / 3.0, 0.7]))
def test_nms_matches_greedy_reference(boxes, scores, threshold):
    indices, count = _nms_jit(jnp.asarray(boxes), jnp.asarray(scores), threshold)
    want = nms_reference(boxes, scores, threshold, N)
    indices = np.asarray(indices)
    assert int(count) == len(want)
    np.testing.assert_array_equal(indices[:len(want)], want)
    np.testing.assert_array_equal(indices[len(want):], -1)
    assert all(np.isfinite(scores[i]) for i in want)
    assert len(_traces) == 1  # compiled once for every example


_nms_static = jax.jit(B.nms, static_argnums=(3,))
_batched_nms_jit = jax.jit(lambda b, s, c: B.batched_nms(b, s, c, 0.5, N))


@settings(max_examples=40, deadline=None)
@given(boxes=int_boxes(), scores=scores_strategy, max_output=st.integers(1, 4))
def test_nms_truncates_to_max_output(boxes, scores, max_output):
    indices, count = _nms_static(jnp.asarray(boxes), jnp.asarray(scores), 0.5, max_output)
    want = nms_reference(boxes, scores, 0.5, max_output)
    assert indices.shape == (max_output,) and indices.dtype == jnp.int32
    assert int(count) == len(want)
    np.testing.assert_array_equal(np.asarray(indices)[:len(want)], want)


def test_nms_ties_invalid_and_nan():
    boxes = jnp.array([[0.0, 0.0, 10.0, 10.0]] * 3 + [[50.0, 50.0, 60.0, 60.0]] * 2)
    scores = jnp.array([0.5, 0.5, 0.9, jnp.nan, -jnp.inf])
    indices, count = B.nms(boxes, scores, 0.5, 5)
    np.testing.assert_array_equal(indices, [2, -1, -1, -1, -1])
    assert int(count) == 1
    indices, count = B.nms(boxes, jnp.full((5,), -jnp.inf), 0.5, 3)
    np.testing.assert_array_equal(indices, [-1, -1, -1])
    assert int(count) == 0


def test_nms_under_vmap():
    boxes = jnp.array([[[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0]],
                       [[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]])
    scores = jnp.array([[0.2, 0.9], [0.2, 0.9]])
    indices, count = jax.vmap(lambda b, s: B.nms(b, s, 0.5, 2))(boxes, scores)
    np.testing.assert_array_equal(indices, [[1, -1], [1, 0]])
    np.testing.assert_array_equal(count, [1, 2])


def test_nms_rejects_bad_shapes():
    with pytest.raises(ValueError, match="boxes"):
        B.nms(jnp.zeros((3, 4)), jnp.zeros((2,)), 0.5, 2)


@settings(max_examples=60, deadline=None)
@given(boxes=int_boxes(), scores=scores_strategy,
       classes=st.lists(st.integers(0, 3), min_size=N, max_size=N))
def test_batched_nms_is_nms_per_class(boxes, scores, classes):
    classes = np.array(classes, np.int32)
    indices, count = _batched_nms_jit(jnp.asarray(boxes), jnp.asarray(scores),
                                      jnp.asarray(classes))
    kept = set()
    for c in np.unique(classes):
        members = np.flatnonzero(classes == c)
        kept.update(members[nms_reference(boxes[members], scores[members], 0.5, N)].tolist())
    indices = np.asarray(indices)[:int(count)]
    assert set(indices.tolist()) == kept
    # Selection order is by descending score across classes.
    assert np.all(np.diff(scores[indices]) <= 0)
