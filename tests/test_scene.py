"""load_scene: decoding and the counted repairs shared by every reader."""

import collections

import numpy as np
import pytest
from hypothesis import given, settings

from amodal_files import rle
from data_prep.scene import (DataError, InstanceSource, SceneSource, decode_segmentation,
                             load_scene)
from scene_strategies import paint, scenes

H, W = 24, 32


def _box(y1, x1, y2, x2):
    mask = np.zeros((H, W), bool)
    mask[y1:y2, x1:x2] = True
    return mask


def _source(instances, constraints=()):
    return SceneSource(image_id=3, image_path="img.png", height=H, width=W,
                       instances=tuple(instances), annotation_file="ann.json",
                       depth_constraints=tuple(constraints))


def _two_overlapping(front_order=1, back_order=2):
    """Instance 1 (ann 10) in front of instance 2 (ann 20) on columns 8..12."""
    a, b = _box(4, 0, 12, 12), _box(4, 8, 12, 20)
    return [InstanceSource(10, 1, rle(a), visible=rle(a), order=front_order),
            InstanceSource(20, 1, rle(b), visible=rle(b & ~a), order=back_order)]


@settings(max_examples=30, deadline=None)
@given(scenes(max_instances=5))
def test_decoded_scene_equals_input(scene):
    n, h, w = scene["amodal"].shape
    instances = [InstanceSource(i + 1, 1, rle(scene["amodal"][i]),
                                visible=rle(scene["visible"][i]), order=int(scene["order"][i]))
                 for i in range(n)]
    source = SceneSource(1, "x.png", h, w, tuple(instances), "a.json")
    warnings = collections.Counter()
    out = load_scene(source, 1, warnings)
    keep = scene["amodal"].reshape(n, h * w).any(axis=1)
    np.testing.assert_array_equal(out.amodal, scene["amodal"][keep])
    np.testing.assert_array_equal(out.visible, scene["visible"][keep])
    assert warnings["empty_amodal_skipped"] == int((~keep).sum())
    # Painted masks never contradict their own order.
    assert warnings["order_contradicts_masks"] == 0
    np.testing.assert_array_equal(np.argsort(out.order), np.argsort(scene["order"][keep]))


def test_polygon_outside_image_is_clipped_and_counted():
    warnings = collections.Counter()
    mask = decode_segmentation([-5, -5, 10, -5, 10, 10, -5, 10], H, W, "w", warnings)
    assert warnings["polygon_clipped"] == 1
    assert mask[:10, :10].all() and mask.sum() == 100
    inside = decode_segmentation([1, 1, 5, 1, 5, 5], H, W, "w", warnings)
    assert warnings["polygon_clipped"] == 1 and inside.any()


def test_box_outside_image_is_counted():
    a = _box(0, 0, 5, 5)
    warnings = collections.Counter()
    load_scene(_source([InstanceSource(1, 1, rle(a), bbox=(-3.0, 0.0, 8.0, 5.0)),
                        InstanceSource(2, 1, rle(a), bbox=(0.0, 0.0, 5.0, 5.0))]), 1, warnings)
    assert warnings["box_clipped"] == 1


def test_rle_of_wrong_size():
    bad = rle(np.zeros((10, 10), bool))
    with pytest.raises(DataError, match=r"ann.json: image 3, annotation 7: RLE size \[10, 10\] "
                                        r"differs from the image size \[24, 32\]"):
        load_scene(_source([InstanceSource(7, 1, bad)]), 1, collections.Counter())


def test_visible_outside_amodal_is_intersected():
    a, v = _box(2, 2, 10, 10), _box(0, 0, 6, 6)
    warnings = collections.Counter()
    scene = load_scene(_source([InstanceSource(1, 1, rle(a), visible=rle(v))]), 1, warnings)
    assert warnings["visible_outside_amodal"] == 1
    np.testing.assert_array_equal(scene.visible[0], a & v)
    assert scene.occlusion[0] == pytest.approx(1 - 16 / 64)


def test_invisible_mask_only():
    a, hidden = _box(2, 2, 10, 10), _box(2, 2, 10, 4)
    scene = load_scene(_source([InstanceSource(1, 1, rle(a), invisible=rle(hidden))]), 1,
                       collections.Counter())
    np.testing.assert_array_equal(scene.visible[0], a & ~hidden)


def test_empty_amodal_is_skipped():
    warnings = collections.Counter()
    scene = load_scene(_source([InstanceSource(1, 1, rle(np.zeros((H, W), bool))),
                                InstanceSource(2, 1, rle(_box(1, 1, 3, 3)))]), 1, warnings)
    assert warnings["empty_amodal_skipped"] == 1
    assert scene.ann_ids.tolist() == [2]


def test_zero_instances_kept():
    warnings = collections.Counter()
    scene = load_scene(_source([]), 1, warnings)
    assert scene.num_instances == 0 and scene.amodal.shape == (0, H, W)
    assert scene.boxes.shape == (0, 4) and warnings["image_without_instances"] == 1


def test_bad_class_id():
    with pytest.raises(DataError, match="annotation 4: class id 3 outside 1..2"):
        load_scene(_source([InstanceSource(4, 3, rle(_box(1, 1, 3, 3)))]), 2,
                   collections.Counter())


def test_consistent_order_is_kept():
    warnings = collections.Counter()
    scene = load_scene(_source(_two_overlapping(5, 9)), 1, warnings)
    assert scene.order.tolist() == [0, 1] and sum(warnings.values()) == 0


def test_order_contradicting_masks_falls_back_to_visibility():
    warnings = collections.Counter()
    scene = load_scene(_source(_two_overlapping(front_order=2, back_order=1)), 1, warnings)
    assert warnings["order_contradicts_masks"] == 1
    assert scene.order.tolist() == [0, 1]


def test_tied_order_of_overlapping_instances_falls_back():
    warnings = collections.Counter()
    scene = load_scene(_source(_two_overlapping(1, 1)), 1, warnings)
    assert warnings["order_tie"] == 1 and scene.order.tolist() == [0, 1]


def test_constraint_cycle_falls_back():
    warnings = collections.Counter()
    scene = load_scene(_source(_two_overlapping(), constraints=[(1, 2), (2, 1)]), 1, warnings)
    assert warnings["depth_constraint_conflict"] == 1
    assert scene.order.tolist() == [0, 1]


def test_visibility_cycle_keeps_annotated_order():
    # Each instance is seen where the other is hidden: the masks form a cycle.
    a, b = _box(0, 0, 20, 20), _box(0, 10, 20, 30)
    va, vb = a & ~_box(10, 10, 20, 20), b & ~_box(0, 10, 10, 20)
    instances = [InstanceSource(1, 1, rle(a), visible=rle(va), order=2),
                 InstanceSource(2, 1, rle(b), visible=rle(vb), order=1)]
    warnings = collections.Counter()
    scene = load_scene(_source(instances), 1, warnings)
    assert warnings["order_contradicts_masks"] == 1
    assert warnings["visibility_order_cycle"] == 1
    assert scene.order.tolist() == [1, 0]


def test_missing_orders_come_from_visibility():
    a, b, c = _box(0, 0, 10, 10), _box(5, 5, 15, 15), _box(10, 10, 20, 20)
    amodal = np.stack([a, b, c])
    visible = paint(amodal, np.array([2, 1, 0]))
    instances = [InstanceSource(i, 1, rle(amodal[i]), visible=rle(visible[i]))
                 for i in range(3)]
    warnings = collections.Counter()
    scene = load_scene(_source(instances), 1, warnings)
    assert warnings["order_from_visibility"] == 1
    assert scene.order.tolist() == [2, 1, 0]


@pytest.mark.parametrize("field", ["amodal", "visible"])
def test_corrupt_counts_name_their_annotation(field):
    # Every mask of an image is parsed in one batch; the error still names the bad one.
    good = rle(_box(1, 1, 6, 6))
    corrupt = {"counts": good["counts"][:-1] + "P", "size": [H, W]}  # ends inside a number
    instances = [InstanceSource(1, 1, good, visible=rle(_box(1, 1, 6, 3))),
                 InstanceSource(2, 1, corrupt if field == "amodal" else good,
                                visible=corrupt if field == "visible" else rle(_box(1, 1, 3, 3))),
                 InstanceSource(3, 1, good)]
    with pytest.raises(DataError, match=r"ann.json: image 3, annotation 2: RLE counts end "
                                        r"inside a number"):
        load_scene(_source(instances), 1, collections.Counter())


def test_mixed_visible_sources_in_one_scene():
    # Each instance keeps its own visible source after the masks are parsed together:
    # the amodal RLE again, a visible mask, an invisible mask, an empty (skipped) amodal.
    a0, a1, a2 = _box(0, 0, 8, 8), _box(4, 4, 14, 14), _box(10, 20, 20, 30)
    v1, hidden2 = _box(8, 8, 14, 14), _box(10, 20, 12, 30)
    warnings = collections.Counter()
    scene = load_scene(_source([
        InstanceSource(1, 1, rle(a0), visible=rle(a0)),
        InstanceSource(2, 1, rle(np.zeros((H, W), bool)), visible=rle(v1)),
        InstanceSource(3, 1, rle(a1), visible=rle(v1)),
        InstanceSource(4, 1, rle(a2), invisible=rle(hidden2)),
    ]), 1, warnings)
    assert scene.ann_ids.tolist() == [1, 3, 4] and warnings["empty_amodal_skipped"] == 1
    for i, (a, v) in enumerate([(a0, a0), (a1, v1), (a2, a2 & ~hidden2)]):
        np.testing.assert_array_equal(scene.amodal[i], a)
        np.testing.assert_array_equal(scene.visible[i], v)
        assert scene.visible_rle_counts()[i] == rle(v)["counts"].encode()
    np.testing.assert_array_equal(scene.boxes, [[0, 0, 8, 8], [4, 4, 14, 14], [10, 20, 20, 30]])
