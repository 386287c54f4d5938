"""RPN head output order and static-shape proposals."""

import jax
import jax.numpy as jnp
import numpy as np

from sln_jax.models.rpn import RPNHead, proposals
from sln_jax.ops.anchors import generate_anchors

STRIDES = (4, 8, 16, 32)
SIZES = (16, 32, 64, 128)
RATIOS = (0.5, 1.0, 2.0)


def _pyramid(size=64, channels=8, seed=0):
    keys = jax.random.split(jax.random.key(seed), len(STRIDES))
    return [jax.random.normal(k, (2, size // s, size // s, channels))
            for k, s in zip(keys, STRIDES)]


def test_head_shapes_and_anchor_order():
    pyramid = _pyramid()
    head = RPNHead(len(RATIOS), 8)
    variables = jax.jit(head.init)(jax.random.key(1), pyramid)
    logits, deltas = jax.jit(head.apply)(variables, pyramid)
    anchors, level_sizes = generate_anchors(64, STRIDES, SIZES, RATIOS)
    assert logits.shape == (2, anchors.shape[0]) and deltas.shape == (2, anchors.shape[0], 4)
    # Perturb one feature cell of P3 (row 5, col 2): the anchors whose logits change are that
    # cell's 3 ratios (and, through the 3x3 conv, its neighbours) at the anchor order's index.
    bumped = list(pyramid)
    bumped[1] = pyramid[1].at[0, 5, 2].add(100.0)
    changed, _ = jax.jit(head.apply)(variables, bumped)
    diff = np.abs(np.asarray(changed - logits))[0]
    index = level_sizes[0] + (5 * (64 // 8) + 2) * 3 + np.arange(3)
    assert (diff[index] > 0).all()
    changed_cells = (np.flatnonzero(diff) - level_sizes[0]) // 3
    rows, cols = changed_cells // 8, changed_cells % 8
    assert set(rows) == {4, 5, 6} and set(cols) == {1, 2, 3}  # the 3x3 neighbourhood
    assert np.flatnonzero(diff).max() < level_sizes[0] + level_sizes[1]  # P3 only
    centers = (anchors[index, :2] + anchors[index, 2:]) / 2
    np.testing.assert_allclose(centers, [[5.5 * 8, 2.5 * 8]] * 3)
    assert (np.abs(np.asarray(changed - logits))[1] == 0).all()  # image 1 untouched


def _greedy_nms(boxes, scores, threshold):
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    while order:
        i = order.pop(0)
        keep.append(i)
        rest = []
        for j in order:
            y1, x1 = np.maximum(boxes[i, :2], boxes[j, :2])
            y2, x2 = np.minimum(boxes[i, 2:], boxes[j, 2:])
            inter = max(y2 - y1, 0) * max(x2 - x1, 0)
            union = np.prod(boxes[i, 2:] - boxes[i, :2]) + np.prod(boxes[j, 2:] - boxes[j, :2])
            if inter / (union - inter) <= threshold:
                rest.append(j)
        order = rest
    return keep


def test_proposals_equal_topk_decode_and_nms_reference():
    anchors, _ = generate_anchors(64, STRIDES, SIZES, RATIOS)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=anchors.shape[0]).astype(np.float32)
    deltas = rng.normal(0, 0.5, anchors.shape).astype(np.float32)
    boxes, scores, valid = jax.jit(proposals, static_argnums=(3, 4, 5, 6))(
        logits, deltas, anchors, 64, 50, 20, 0.7)
    assert boxes.shape == (20, 4) and valid.dtype == bool
    # Reference: top 50, decode (weights 10, 10, 5, 5), clip, greedy NMS.
    top = np.argsort(-logits, kind="stable")[:50]
    a, d = anchors[top].astype(np.float64), deltas[top].astype(np.float64)
    ah, aw = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    cy = a[:, 0] + ah / 2 + d[:, 0] / 10 * ah
    cx = a[:, 1] + aw / 2 + d[:, 1] / 10 * aw
    h, w = ah * np.exp(d[:, 2] / 5), aw * np.exp(d[:, 3] / 5)
    ref = np.clip(np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], 1), 0, 64)
    keep = _greedy_nms(ref, logits[top], 0.7)[:20]
    count = len(keep)
    assert int(valid.sum()) == count and valid[:count].all()
    np.testing.assert_allclose(np.asarray(boxes)[:count], ref[keep], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np.asarray(scores)[:count], logits[top][keep], rtol=1e-6)
    assert np.all(np.asarray(boxes)[count:] == 0) and np.all(np.isneginf(scores[count:]))


def test_proposals_carry_no_gradient():
    anchors, _ = generate_anchors(64, STRIDES, SIZES, RATIOS)
    logits = jnp.linspace(-1, 1, anchors.shape[0])
    deltas = jnp.zeros(anchors.shape)

    def total(lg, dl):
        boxes, _, _ = proposals(lg, dl, anchors, 64, 30, 10, 0.7)
        return boxes.sum()

    g_logits, g_deltas = jax.grad(total, argnums=(0, 1))(logits, deltas)
    assert not np.asarray(g_logits).any() and not np.asarray(g_deltas).any()
