"""KINS reader on the hand-made 2020-format fixture (tests/fixtures/kins) and its conversion."""

import collections
import json
import os
import shutil

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from amodal_files import assert_record_matches_scene, edit_json, rle, truncate_file
from data_prep import convert, kins
from sln_jax import records
from data_prep.scene import DataError, load_scene

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "kins")
IMAGES = os.path.join(FIXTURE, "images")
H, W = 48, 64


@pytest.fixture
def path(tmp_path):
    """A copy of the fixture's annotation file that tests may edit."""
    copy = str(tmp_path / "update_train_2020.json")
    shutil.copy(os.path.join(FIXTURE, "update_train_2020.json"), copy)
    return copy


def _raw(path):
    with open(path) as f:
        return {a["id"]: a for a in json.load(f)["annotations"]}


def _polygons(polygons):
    rles = mask_utils.frPyObjects(polygons, H, W)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def _scenes(path):
    data = kins.read(path, IMAGES)
    warnings = collections.Counter(data.warnings)
    return data, [load_scene(s, len(data.classes), warnings) for s in data.sources], warnings


def test_sources_field_by_field(path):
    raw = _raw(path)
    data = kins.read(path, IMAGES)
    assert data.classes == {1: "cyclist", 2: "pedestrian", 3: "car", 4: "tram", 5: "truck",
                            6: "van", 7: "misc"}
    assert data.category_ids == {1: 1, 2: 2, 3: 4, 4: 5, 5: 6, 6: 7, 7: 8}
    assert data.warnings == {"visible_missing": 1}
    assert [s.image_id for s in data.sources] == [1, 2, 3]
    assert [os.path.basename(s.image_path) for s in data.sources] == [
        "000001.png", "000002.png", "000003.png"]
    assert all((s.height, s.width) == (H, W) for s in data.sources)
    assert all(s.annotation_file == path and s.depth_constraints == () for s in data.sources)
    instances = [inst for s in data.sources for inst in s.instances]
    assert [inst.ann_id for inst in instances] == [1, 2, 3, 4, 5, 6, 7]
    # car 4 -> 3, pedestrian 2 -> 2, cyclist 1 -> 1, tram 5 -> 4, truck 6 -> 5, misc 8 -> 7
    assert [inst.class_id for inst in instances] == [3, 3, 2, 1, 4, 5, 7]
    # Per-image dense rank of (ico_id, oco_id): image 1 keys (1,1) (2,1) (1,2) (2,2);
    # image 2: the lone tram (ico_id 0) first, then truck (1,2) and misc (2,2).
    assert [inst.order for inst in instances] == [0, 2, 1, 3, 0, 1, 2]
    for inst in instances:
        ann = raw[inst.ann_id]
        assert inst.amodal == ann["a_segm"]
        assert inst.visible == ann.get("i_segm")
        assert inst.invisible is None and not inst.is_stuff and inst.label == ""
        assert inst.bbox == tuple(ann["a_bbox"])
    assert instances[4].visible is None  # the tram has no i_segm
    assert data.sources[2].instances == ()


def test_scenes_masks_and_orders(path):
    raw = _raw(path)
    data, scenes, warnings = _scenes(path)
    one, two, three = scenes
    for scene in (one, two):
        for i, ann_id in enumerate(scene.ann_ids):
            ann = raw[int(ann_id)]
            amodal = _polygons(ann["a_segm"])
            visible = _polygons(ann["i_segm"]) if "i_segm" in ann else amodal
            np.testing.assert_array_equal(scene.amodal[i], amodal)
            np.testing.assert_array_equal(scene.visible[i], visible)
            assert not (scene.visible[i] & ~scene.amodal[i]).any()
    # Each occludee's visible mask is its amodal mask minus its occluder's.
    for scene, front, back in ((one, 0, 1), (one, 2, 3), (two, 1, 2)):
        np.testing.assert_array_equal(scene.visible[back],
                                      scene.amodal[back] & ~scene.amodal[front])
    np.testing.assert_array_equal(one.order, [0, 2, 1, 3])
    np.testing.assert_array_equal(two.order, [0, 1, 2])
    np.testing.assert_allclose(one.occlusion, [0, 100 / 500, 0, 60 / 160])
    np.testing.assert_allclose(two.occlusion, [0, 0, 72 / 320])
    np.testing.assert_array_equal(one.boxes[0], [20, 20, 40, 40])
    np.testing.assert_array_equal(one.classes, [3, 3, 2, 1])
    assert three.num_instances == 0
    # The annotated orders are used as they are: none contradicts the masks or ties.
    for key in ("order_from_visibility", "order_contradicts_masks", "order_tie",
                "visibility_order_cycle", "visible_outside_amodal", "polygon_clipped"):
        assert warnings[key] == 0, key
    assert warnings["visible_missing"] == 1 and warnings["image_without_instances"] == 1


def test_reversed_ico_contradicts_the_masks(path):
    # If smaller ico_id meant farther, the fixture's masks would contradict every order.
    def reverse(d):
        for ann in d["annotations"]:
            if ann["ico_id"]:
                ann["ico_id"] = 3 - ann["ico_id"]
    edit_json(path, reverse)
    _, scenes, warnings = _scenes(path)
    assert warnings["order_contradicts_masks"] == 2
    np.testing.assert_array_equal(scenes[0].order, [0, 1, 2, 3])  # visibility order


def test_touching_clusters_do_not_tie(path):
    # Pedestrian 3 (cluster 2, ico_id 1) now overlaps car 1 (cluster 1, ico_id 1) on a strip
    # both annotate as visible: equal ico_id would tie them; the per-image rank does not.
    def touch(d):
        ann = d["annotations"][2]
        ann["a_segm"] = ann["i_segm"] = [[2.0, 25.0, 22.0, 25.0, 22.0, 45.0, 2.0, 45.0]]
        d["annotations"][0]["i_segm"] = [[20.0, 20.0, 40.0, 20.0, 40.0, 40.0, 20.0, 40.0]]
    edit_json(path, touch)
    _, scenes, warnings = _scenes(path)
    assert (scenes[0].amodal[0] & scenes[0].amodal[2]).any()
    assert warnings["order_tie"] == 0 and warnings["order_from_visibility"] == 0
    np.testing.assert_array_equal(scenes[0].order, [0, 2, 1, 3])


def test_tie_inside_a_cluster_falls_back_to_visibility(path):
    edit_json(path, lambda d: d["annotations"][1].update(ico_id=1))  # car 2 ties car 1
    data, scenes, warnings = _scenes(path)
    assert [inst.order for inst in data.sources[0].instances] == [0, 0, 1, 2]
    assert warnings["order_tie"] == 1
    np.testing.assert_array_equal(scenes[0].order, [0, 1, 2, 3])


def test_cluster_ranks():
    assert kins.cluster_ranks([]) == []
    assert kins.cluster_ranks([(7, 2), (7, 1), (3, 1), (3, 2), (3, 3)]) == [3, 1, 0, 2, 4]
    # Equal ico_id in one cluster ties; ico_id 0 never does, even within a cluster.
    assert kins.cluster_ranks([(1, 1), (1, 1), (1, 0), (1, 0), (2, 1)]) == [2, 2, 0, 1, 3]
    assert kins.cluster_ranks([(1, 2), None, (1, 1)]) == [1, None, 0]


def test_missing_ico_id_orders_from_visibility(path):
    edit_json(path, lambda d: d["annotations"][3].pop("ico_id"))
    data, scenes, warnings = _scenes(path)
    assert [inst.order for inst in data.sources[0].instances] == [0, 2, 1, None]
    assert warnings["order_from_visibility"] == 1
    np.testing.assert_array_equal(scenes[0].order, [0, 1, 2, 3])


def test_unknown_category(path):
    edit_json(path, lambda d: d["annotations"][4].update(category_id=3))  # rider: unused
    with pytest.raises(DataError) as err:
        kins.read(path, IMAGES)
    message = str(err.value)
    assert message == (f"{path}: image 2, annotation 5: unknown category id 3 "
                       "(KINS uses 1, 2, 4, 5, 6, 7, 8)")


@pytest.mark.parametrize("value", [-1, 1.5, "x"])
def test_bad_ico_id(path, value):
    edit_json(path, lambda d: d["annotations"][0].update(ico_id=value))
    with pytest.raises(DataError, match=f"{path}: image 1, annotation 1: "):
        kins.read(path, IMAGES)


def test_missing_amodal(path):
    edit_json(path, lambda d: d["annotations"][5].pop("a_segm"))
    with pytest.raises(DataError, match="image 2, annotation 6: missing field 'a_segm'"):
        kins.read(path, IMAGES)


def test_truncated_json(path):
    truncate_file(path)
    with pytest.raises(DataError, match=f"{path}: invalid or truncated JSON"):
        kins.read(path, IMAGES)


def test_missing_image_file(path, tmp_path):
    with pytest.raises(DataError) as err:
        kins.read(path, str(tmp_path / "nowhere"))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: image 1: image file ")
    assert message.endswith("000001.png not found")


def test_unknown_image_id(path):
    edit_json(path, lambda d: d["annotations"][6].update(image_id=9))
    with pytest.raises(DataError, match=f"{path}: annotation 7: unknown image id 9"):
        kins.read(path, IMAGES)


def test_crowd_is_skipped_and_counted(path):
    edit_json(path, lambda d: d["annotations"][1].update(iscrowd=1))
    data = kins.read(path, IMAGES)
    assert data.warnings["crowd_skipped"] == 1
    assert [inst.ann_id for inst in data.sources[0].instances] == [1, 3, 4]
    assert [inst.order for inst in data.sources[0].instances] == [0, 1, 2]


def test_2019_release_fields(path):
    # instances_{train,val}.json: segmentation / inmodal_seg (RLE) / bbox, no order.
    raw = _raw(path)

    def old(d):
        for ann in d["annotations"]:
            ann["segmentation"] = ann.pop("a_segm")
            ann["bbox"] = ann.pop("a_bbox")
            ann["area"] = ann.pop("a_area")
            if "i_segm" in ann:
                ann["inmodal_seg"] = rle(_polygons(ann.pop("i_segm")))
                ann["inmodal_bbox"] = ann.pop("i_bbox")
                del ann["i_area"]
            del ann["oco_id"], ann["ico_id"]
            ann["iscrowd"] = 0
    edit_json(path, old)
    data, scenes, warnings = _scenes(path)
    assert all(inst.order is None for s in data.sources for inst in s.instances)
    assert warnings["order_from_visibility"] == 2
    np.testing.assert_array_equal(scenes[0].order, [0, 1, 2, 3])
    np.testing.assert_array_equal(scenes[0].visible[1], _polygons(raw[2]["i_segm"]))
    np.testing.assert_array_equal(scenes[1].amodal[0], _polygons(raw[5]["a_segm"]))

    edit_json(path, lambda d: d["annotations"][0]["inmodal_seg"].update(size=[10, 10]))
    with pytest.raises(DataError, match="image 1, annotation 1 \\(inmodal_seg\\): RLE size"):
        kins.read(path, IMAGES)


def test_conversion_round_trip(path, tmp_path):
    import tensorflow as tf

    assert convert._parse_args(["--dataset", "kins", "--annotations", path, "--images", IMAGES,
                                "--output", "x"]).dataset == "kins"
    output = str(tmp_path / "out")
    meta = convert.convert("kins", path, IMAGES, output, split="train", num_shards=2,
                           num_layers=3, mask_target_size=8, progress=False)
    assert meta["classes"] == {str(k): v for k, v in kins.read(path, IMAGES).classes.items()}
    assert meta["category_ids"]["3"] == 4 and meta["num_classes"] == 7
    stats = meta["splits"]["train"]["statistics"]
    assert (stats["images"], stats["instances"], stats["occluded_instances"]) == (3, 7, 3)
    assert stats["warnings"]["visible_missing"] == 1
    assert stats["conflicts"] == {"order": 0, "visible_layer": 0}
    files = [os.path.join(output, name) for name in meta["splits"]["train"]["files"]]
    parsed = [records.parse(r.numpy(), 8) for r in tf.data.TFRecordDataset(files)]
    _, scenes, _ = _scenes(path)
    assert [p["image_id"] for p in parsed] == [1, 2, 3]
    for rec, scene in zip(parsed, scenes):
        assert_record_matches_scene(rec, scene, scene.image_path)
    np.testing.assert_array_equal(parsed[0]["order"], [0, 2, 1, 3])
    # Layer crops: the hidden corner of car 2 is layer 1 (value 2), the rest layer 0.
    assert set(np.unique(parsed[0]["layer_crops"][1])) == {1, 2}
    assert set(np.unique(parsed[0]["layer_crops"][0])) == {1}
