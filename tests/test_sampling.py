"""Samplers: labels against a NumPy matcher, budgets and ratios, padding never positive,
per-ROI targets against NumPy / SciPy references."""
import jax
import numpy as np
from hypothesis import given, settings, strategies as st
from scipy import ndimage

from sln_jax.ops import boxes as B
from sln_jax.ops.anchors import generate_anchors
from sln_jax.ops.sampling import (roi_layer_targets, roi_semdist_targets, rpn_targets,
                                  sample_rois)

IMAGE = 128
ANCHORS, _ = generate_anchors(IMAGE)
M = 4  # GT slots; the last ones are padding in most examples
P = 40  # proposals

_rpn_jit = jax.jit(rpn_targets)
_rois_jit = jax.jit(sample_rois, static_argnames=("num_rois", "positive_fraction", "append_gt"))
_layers_jit = jax.jit(roi_layer_targets, static_argnums=3)
_semdist_jit = jax.jit(roi_semdist_targets, static_argnums=3)


def random_boxes(rng, n, lo=4.0, hi=90.0):
    start = rng.uniform(0, IMAGE - lo, (n, 2))
    size = rng.uniform(lo, hi, (n, 2))
    return np.concatenate([start, np.minimum(start + size, IMAGE)], 1).astype(np.float32)


def gt_case(seed, num_valid):
    rng = np.random.default_rng(seed)
    gt = random_boxes(rng, M, lo=10.0)
    valid = np.arange(M) < num_valid
    gt[~valid] = rng.uniform(0, 50, (int((~valid).sum()), 4))  # junk in the padding slots
    return rng, gt, valid


def rpn_reference_sets(anchors, gt, valid):
    """NumPy Detectron matcher: positive / negative anchor sets and best GT per anchor."""
    overlaps = np.where(valid[None, :], B.iou(anchors, gt), -1.0)
    best = overlaps.max(1)
    positive = best >= 0.7
    for j in np.flatnonzero(valid):
        top = overlaps[:, j].max()
        if top > 0:
            positive |= overlaps[:, j] == top
    negative = ~positive & (best < 0.3)
    return positive, negative, overlaps.argmax(1)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), num_valid=st.integers(0, M))
def test_rpn_targets_match_reference_and_budget(seed, num_valid):
    _, gt, valid = gt_case(seed, num_valid)
    out = _rpn_jit(ANCHORS, gt, valid, jax.random.PRNGKey(seed))
    labels = np.asarray(out["labels"])
    positive, negative, matched = rpn_reference_sets(ANCHORS, gt, valid)
    picked_pos, picked_neg = labels == 1, labels == 0
    assert not np.any(picked_pos & ~positive) and not np.any(picked_neg & ~negative)
    assert picked_pos.sum() == min(positive.sum(), 128)
    assert picked_neg.sum() == min(negative.sum(), 256 - picked_pos.sum())
    if num_valid == 0:
        assert picked_pos.sum() == 0 and picked_neg.sum() == 256
    if positive.sum() <= 128:
        # Every valid GT's best anchor is among the positives (low-quality matches).
        overlaps = np.asarray(B.iou(ANCHORS, gt))
        for j in np.flatnonzero(valid):
            assert labels[np.argmax(overlaps[:, j])] == 1
    targets = np.asarray(out["box_targets"])
    want = np.asarray(B.encode(gt[matched[picked_pos]], ANCHORS[picked_pos]))
    np.testing.assert_allclose(targets[picked_pos], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(targets[~picked_pos], 0.0)


def test_rpn_targets_cap_positives_and_vary_with_key():
    # A big GT box many anchors overlap with IoU >= 0.7: positives exceed half the budget.
    gt = np.array([[0.0, 0.0, 128.0, 128.0], [0.0, 0.0, 64.0, 64.0]], np.float32)
    gt = np.concatenate([gt, np.zeros((2, 4), np.float32)])
    valid = np.array([True, True, False, False])
    anchors, _ = generate_anchors(IMAGE, sizes=(128, 128, 128, 128, 128))
    first = np.asarray(rpn_targets(anchors, gt, valid, jax.random.PRNGKey(0),
                                   batch_per_image=32)["labels"])
    second = np.asarray(rpn_targets(anchors, gt, valid, jax.random.PRNGKey(1),
                                    batch_per_image=32)["labels"])
    positive, _, _ = rpn_reference_sets(anchors, gt, valid)
    assert positive.sum() > 16
    assert (first == 1).sum() == 16 and (first == 0).sum() == 16
    assert not np.array_equal(first == 1, second == 1)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), num_valid=st.integers(0, M),
       num_proposals=st.integers(0, P), append_gt=st.booleans())
def test_sample_rois_counts_matches_and_padding(seed, num_valid, num_proposals, append_gt):
    rng, gt, valid = gt_case(seed, num_valid)
    classes = np.where(valid, rng.integers(1, 6, M), 0).astype(np.int32)
    proposals = random_boxes(rng, P)
    # A third of the proposals are perturbed GTs so positives exist.
    near = rng.integers(0, M, P // 3)
    proposals[:P // 3] = gt[near] + rng.normal(0, 2, (P // 3, 4)).astype(np.float32)
    proposal_valid = np.arange(P) < num_proposals
    num_rois, fraction = 16, 0.25
    out = _rois_jit(proposals, proposal_valid, gt, classes, valid, jax.random.PRNGKey(seed),
                    num_rois=num_rois, positive_fraction=fraction, append_gt=append_gt)
    out = {k: np.asarray(v) for k, v in out.items()}

    cands = np.concatenate([proposals, gt]) if append_gt else proposals
    cand_valid = np.concatenate([proposal_valid, valid]) if append_gt else proposal_valid
    overlaps = np.where(valid[None, :], B.iou(cands, gt), -1.0)
    fg = cand_valid & (overlaps.max(1) >= 0.5)
    bg = cand_valid & ~fg
    n_pos = out["is_positive"].sum()
    assert n_pos == min(fg.sum(), int(num_rois * fraction))
    assert out["valid"].sum() == n_pos + min(bg.sum(), num_rois - n_pos)
    if append_gt and num_valid:
        assert n_pos >= 1
    # Layout: positives, then backgrounds, then padding.
    order = np.where(out["is_positive"], 0, np.where(out["valid"], 1, 2))
    assert np.all(np.diff(order) >= 0)
    assert not np.any(out["is_positive"] & ~out["valid"])
    # Each valid ROI is one of the valid candidates; positives really overlap their GT.
    for roi, ok, pos, gt_index, cls in zip(out["rois"], out["valid"], out["is_positive"],
                                           out["matched_gt"], out["classes"]):
        if not ok:
            assert cls == 0
            continue
        hits = np.flatnonzero(np.all(cands == roi, axis=1) & cand_valid)
        assert hits.size, "a sampled ROI is not a valid candidate"
        if pos:
            assert valid[gt_index] and cls == classes[gt_index] >= 1
            assert B.iou(roi[None], gt[gt_index][None])[0, 0] >= 0.5
        else:
            assert cls == 0
    pos = out["is_positive"]
    back = np.asarray(B.decode(out["box_targets"][pos], out["rois"][pos]))
    np.testing.assert_allclose(back, gt[out["matched_gt"][pos]], rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(out["box_targets"][~pos], 0.0)


def test_sample_rois_respects_ratio_with_many_positives():
    gt = np.array([[10.0, 10.0, 90.0, 90.0], [0, 0, 0, 0]], np.float32)
    valid = np.array([True, False])
    rng = np.random.default_rng(0)
    near = gt[0] + rng.normal(0, 1.0, (60, 4)).astype(np.float32)
    far = random_boxes(rng, 60, lo=4.0, hi=8.0) + np.float32(100.0)
    proposals = np.concatenate([near, far])
    out = _rois_jit(proposals, np.ones(120, bool), gt, np.array([3, 0], np.int32), valid,
                    jax.random.PRNGKey(3), num_rois=32, positive_fraction=0.25)
    assert int(out["is_positive"].sum()) == 8 and bool(out["valid"].all())
    np.testing.assert_array_equal(np.asarray(out["classes"]), [3] * 8 + [0] * 24)


def layer_targets_reference(rois, gt_boxes, crops, size):
    n, p = crops.shape[:2]
    out = np.full((n, size, size), -1, np.int32)
    for k in range(n):
        ry1, rx1, ry2, rx2 = rois[k].astype(np.float64)
        gy1, gx1, gy2, gx2 = gt_boxes[k].astype(np.float64)
        for i in range(size):
            t = (ry1 + (i + 0.5) * (ry2 - ry1) / size - gy1) / (gy2 - gy1) * p
            for j in range(size):
                s = (rx1 + (j + 0.5) * (rx2 - rx1) / size - gx1) / (gx2 - gx1) * p
                if 0 <= t < p and 0 <= s < p:
                    out[k, i, j] = crops[k, int(np.floor(t)), int(np.floor(s))]
    return out


def semdist_targets_reference(rois, gt_boxes, crops, size):
    n, p = crops.shape[:2]
    out = np.zeros((n, size, size), np.float64)
    frac = (np.arange(size) + 0.5) / size
    for k in range(n):
        ry1, rx1, ry2, rx2 = rois[k].astype(np.float64)
        gy1, gx1, gy2, gx2 = gt_boxes[k].astype(np.float64)
        t = (ry1 + frac * (ry2 - ry1) - gy1) / (gy2 - gy1) * p
        s = (rx1 + frac * (rx2 - rx1) - gx1) / (gx2 - gx1) * p
        tt, ss = np.meshgrid(t, s, indexing="ij")
        values = ndimage.map_coordinates(crops[k].astype(np.float64), [tt - 0.5, ss - 0.5],
                                         order=1, mode="nearest")
        inside = (tt >= 0) & (tt < p) & (ss >= 0) & (ss < p)
        out[k] = np.where(inside, values, 0.0)
    return out


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), size=st.sampled_from([4, 7, 14]))
def test_roi_targets_match_references(seed, size):
    rng = np.random.default_rng(seed)
    n, p = 6, 8
    gt_boxes = random_boxes(rng, n, lo=10.0)
    rois = gt_boxes + rng.normal(0, 6, (n, 4)).astype(np.float32)
    rois[:, 2:] = np.maximum(rois[:, 2:], rois[:, :2] + 1)
    layers = rng.integers(-1, 3, (n, p, p)).astype(np.int8)
    semdist = rng.uniform(0, 4, (n, p, p)).astype(np.float32)
    got_layers = np.asarray(_layers_jit(rois, gt_boxes, layers, size))
    assert got_layers.dtype == np.int32 and got_layers.shape == (n, size, size)
    np.testing.assert_array_equal(got_layers,
                                  layer_targets_reference(rois, gt_boxes, layers, size))
    got_semdist = np.asarray(_semdist_jit(rois, gt_boxes, semdist, size))
    np.testing.assert_allclose(got_semdist,
                               semdist_targets_reference(rois, gt_boxes, semdist, size),
                               rtol=1e-4, atol=1e-4)


def test_roi_targets_identity_and_outside():
    rng = np.random.default_rng(1)
    p = 6
    gt_boxes = np.array([[3.0, 5.0, 27.0, 41.0], [0.0, 0.0, 12.0, 12.0]], np.float32)
    layers = rng.integers(-1, 3, (2, p, p)).astype(np.int8)
    semdist = rng.uniform(0, 4, (2, p, p)).astype(np.float32)
    # ROI == GT box and output size == crop size: the crop itself.
    np.testing.assert_array_equal(_layers_jit(gt_boxes, gt_boxes, layers, p), layers)
    np.testing.assert_allclose(_semdist_jit(gt_boxes, gt_boxes, semdist, p), semdist,
                               rtol=1e-5, atol=1e-5)
    # An ROI twice as wide to the right: its right half is outside the GT box.
    wide = gt_boxes.copy()
    wide[:, 3] = gt_boxes[:, 1] + 2 * (gt_boxes[:, 3] - gt_boxes[:, 1])
    got = np.asarray(_layers_jit(wide, gt_boxes, layers, 2 * p))
    np.testing.assert_array_equal(got[:, :, p:], -1)
    np.testing.assert_array_equal(got[:, ::2, :p], layers[:, :, :])
    assert np.all(np.asarray(_semdist_jit(wide, gt_boxes, semdist, 2 * p))[:, :, p:] == 0)
    # A degenerate (padding) GT box gives nothing.
    empty = np.zeros((2, 4), np.float32)
    np.testing.assert_array_equal(_layers_jit(gt_boxes, empty, layers, 3), -1)
    np.testing.assert_array_equal(_semdist_jit(gt_boxes, empty, semdist, 3), 0.0)
