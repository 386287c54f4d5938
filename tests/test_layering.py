"""Tests for sln_jax.layering."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from scene_strategies import paint, scenes
from sln_jax import layering


def brute_layers(amodal, order):
    n = len(order)
    out = np.full(amodal.shape, -1, np.int32)
    for i in range(n):
        count = np.zeros(amodal.shape[1:], np.int32)
        for j in range(n):
            if order[j] < order[i]:
                count += amodal[j]
        out[i][amodal[i]] = count[amodal[i]]
    return out


@settings(max_examples=60, deadline=None)
@given(scenes())
def test_instance_layers_match_brute_force_and_painter(scene):
    layers = layering.instance_layers(scene["amodal"], scene["order"])
    assert layers.dtype == np.int32
    np.testing.assert_array_equal(layers, brute_layers(scene["amodal"], scene["order"]))
    # Layer 0 is exactly what the painter leaves visible; -1 exactly off the amodal mask.
    np.testing.assert_array_equal(layering.visible_from_layers(layers), scene["visible"])
    np.testing.assert_array_equal(layers >= 0, scene["amodal"])


@settings(max_examples=60, deadline=None)
@given(scenes(), st.integers(2, 5))
def test_global_layers_counts_and_clips(scene, k):
    g = layering.global_layers(scene["amodal"], k)
    counts = scene["amodal"].sum(0)
    np.testing.assert_array_equal(g, np.minimum(counts, k - 1))
    assert g.dtype == np.int32 and g.shape == scene["amodal"].shape[1:]


@settings(max_examples=60, deadline=None)
@given(scenes())
def test_order_from_visibility_consistent_with_painter(scene):
    amodal, visible, order = scene["amodal"], scene["visible"], scene["order"]
    rank = layering.order_from_visibility(amodal, visible)
    assert sorted(rank.tolist()) == list(range(len(order)))
    # Wherever the masks say who is in front (one is seen where the other is hidden),
    # the recovered rank agrees with the painter's order.
    for i, j in itertools.permutations(range(len(order)), 2):
        if (visible[i] & amodal[j] & ~visible[j]).any():
            assert order[i] < order[j]
            assert rank[i] < rank[j]
    # Rebuilding layers from the recovered order reproduces the visible masks exactly.
    layers = layering.instance_layers(amodal, rank)
    np.testing.assert_array_equal(layers == 0, visible)


def test_order_from_visibility_rejects_cycle():
    amodal = np.zeros((3, 4, 6), bool)
    amodal[0, :, 0:4] = True
    amodal[1, :, 2:6] = True
    amodal[2, :, :] = False
    amodal[2, 0, 0] = True
    visible = amodal.copy()
    # 0 is seen where 1 is hidden and 1 is seen where 0 is hidden: a 2-cycle.
    visible[1, :2, 2:4] = False
    visible[0, 2:, 2:4] = False
    visible[2] = False  # 2 hidden under 0: not part of the cycle
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        layering.order_from_visibility(amodal, visible)


def test_edge_cases_zero_one_hidden_border():
    empty = np.zeros((0, 5, 7), bool)
    assert layering.instance_layers(empty, np.zeros(0, int)).shape == (0, 5, 7)
    np.testing.assert_array_equal(layering.global_layers(empty, 4), np.zeros((5, 7)))
    assert layering.order_from_visibility(empty, empty).shape == (0,)

    one = np.zeros((1, 5, 7), bool)
    one[0, :, :3] = True  # touches three borders
    layers = layering.instance_layers(one, np.array([3]))
    np.testing.assert_array_equal(layers[0], np.where(one[0], 0, -1))

    # Instance 1 lies entirely under instance 0: visible area 0, layer 1 everywhere.
    amodal = np.zeros((2, 6, 6), bool)
    amodal[0, 1:5, 1:5] = True
    amodal[1, 2:4, 2:4] = True
    layers = layering.instance_layers(amodal, np.array([0, 1]))
    assert not (layers[1] == 0).any()
    np.testing.assert_array_equal(layers[1][amodal[1]], 1)


def test_deep_stack_clipped_in_global_layers():
    amodal = np.ones((5, 3, 3), bool)
    layers = layering.instance_layers(amodal, np.arange(5))
    np.testing.assert_array_equal(layers[:, 0, 0], np.arange(5))
    np.testing.assert_array_equal(layering.global_layers(amodal, 3), np.full((3, 3), 2))


def test_overlapping_ties_rejected_nonoverlapping_ties_allowed():
    amodal = np.zeros((2, 4, 4), bool)
    amodal[0, :2] = True
    amodal[1, 2:] = True
    layers = layering.instance_layers(amodal, np.array([1, 1]))
    np.testing.assert_array_equal(layers == 0, amodal)
    amodal[1, 1] = True
    with pytest.raises(ValueError, match="share depth rank"):
        layering.instance_layers(amodal, np.array([1, 1]))


def test_masks_to_boxes():
    m = np.zeros((2, 10, 12), bool)
    m[0, 2:5, 3:9] = True
    np.testing.assert_array_equal(layering.masks_to_boxes(m), [[2, 3, 5, 9], [0, 0, 0, 0]])


@settings(max_examples=40, deadline=None)
@given(scenes(max_instances=4, min_size=6))
def test_crop_nearest_of_box_at_native_size_is_exact(scene):
    layers = layering.instance_layers(scene["amodal"], scene["order"])
    boxes = layering.masks_to_boxes(scene["amodal"])
    for i, (y1, x1, y2, x2) in enumerate(boxes.astype(int)):
        if y2 - y1 == x2 - x1 and y2 > y1:
            crop = layering.crop_to_boxes(layers[i:i + 1], boxes[i:i + 1], y2 - y1)
            np.testing.assert_array_equal(crop[0], layers[i, y1:y2, x1:x2])


def test_crop_outside_image_filled_and_flip_equivariant():
    maps = np.arange(36, dtype=np.int32).reshape(1, 6, 6)
    crop = layering.crop_to_boxes(maps, np.array([[-3, 0, 3, 6]]), 2)
    np.testing.assert_array_equal(crop, [[[-1, -1], [7, 10]]])
    box = np.array([[1.3, 0.7, 5.3, 4.7]])  # cell centers off pixel edges
    flipped_box = np.array([[1.3, 6 - 4.7, 5.3, 6 - 0.7]])
    for method in ("nearest", "bilinear"):
        a = layering.crop_to_boxes(maps.astype(np.float32), box, 4, method)
        b = layering.crop_to_boxes(maps[:, :, ::-1].astype(np.float32), flipped_box, 4, method)
        np.testing.assert_allclose(a, b[:, :, ::-1])


def test_paste_inverts_crop_for_box_aligned_masks():
    mask = np.zeros((1, 40, 50), np.float32)
    mask[0, 10:30, 5:45] = 1
    mask[0, 15:25, 20:30] = 0
    box = np.array([[10.0, 5.0, 30.0, 45.0]])
    crop = layering.crop_to_boxes(mask, box, 40, "bilinear")
    pasted = layering.paste(crop, box, (40, 50))
    agree = (pasted > 0.5) == (mask > 0.5)
    assert agree.mean() > 0.99
    assert not pasted[0, :10].any() and not pasted[0, :, 45:].any()
    multi = layering.paste(np.stack([crop, 1 - crop], -1), box, (40, 50))
    assert multi.shape == (1, 40, 50, 2)
    np.testing.assert_allclose(multi[..., 0], pasted)


def test_paste_window_equals_paste_inside_and_handles_outside_boxes():
    rng = np.random.default_rng(3)
    maps = rng.random((6, 5, 5, 2)).astype(np.float32)
    boxes = np.array([[2.3, 1.7, 9.1, 12.9], [-4, -3, 5, 6], [8, 10, 30, 40],
                      [3, 3, 3, 8], [20, 20, 25, 25], [0, 0, 12, 16]], np.float64)
    full = layering.paste(maps, boxes, (12, 16))
    for i in range(6):
        top, left, vals = layering.paste_window(maps[i], boxes[i], (12, 16))
        window = np.zeros_like(full[i])
        window[top:top + vals.shape[0], left:left + vals.shape[1]] = vals
        np.testing.assert_array_equal(window, full[i])
        assert vals.dtype == np.float32 and vals.shape[2:] == (2,)
    assert layering.paste_window(maps[4], boxes[4], (12, 16))[2].size == 0
    assert layering.paste_window(maps[3], boxes[3], (12, 16))[2].size == 0
    with pytest.raises(ValueError, match=r"roi_map must be \[R, R\(, C\)\]"):
        layering.paste_window(np.zeros((3, 4)), boxes[0], (12, 16))


# ------------------------------------------------------- sln_jax.depth_order (one builder)


def test_depth_order_relations_round_trip_and_lenient_keys():
    from sln_jax import depth_order

    order = np.array([[0, 1, -1], [-1, 0, 0], [1, 0, 0]], np.int8)
    relations = depth_order.to_relations(order)
    assert relations == [{1: 1, 2: -1}, {0: -1}, {0: 1}]
    np.testing.assert_array_equal(depth_order.from_relations(relations), order)
    # JSON keys are strings; unknown keys, self-references and missing dicts say nothing.
    loose = [{"1": 3, "2": -0.5, "x": 1, "0": 1, "7": 1}, {0: -1}, {"0": 2}]
    assert not depth_order.from_relations([None, {0: 1}])[0].any()
    np.testing.assert_array_equal(depth_order.from_relations(loose), order)


def test_depth_order_from_masks_agrees_with_the_rank():
    from sln_jax import depth_order

    amodal = np.zeros((3, 8, 8), bool)
    amodal[0, :5, :5] = amodal[1, 2:7, 2:7] = amodal[2, 5:, 5:] = True
    rank = np.array([1, 0, 2])
    layers = layering.instance_layers(amodal, rank)
    visible = layers == 0
    np.testing.assert_array_equal(depth_order.from_masks(amodal, visible),
                                  depth_order.from_rank(amodal, rank))
