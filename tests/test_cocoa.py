"""COCOA readers: the real per-image format (five real samples) and the flat COCOA-cls."""

import collections
import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from amodal_files import cocoa_samples, edit_json, rle, truncate_file
from data_prep import cocoa
from data_prep.scene import DataError, load_scene


@pytest.fixture
def samples(tmp_path):
    return cocoa_samples(str(tmp_path))


def _scenes(annotation_set):
    warnings = collections.Counter()
    return [load_scene(s, len(annotation_set.classes), warnings)
            for s in annotation_set.sources], warnings


def test_real_samples_field_by_field(samples):
    path, images, raw = samples
    data = cocoa.read(path, images)
    assert data.classes == {1: "object"}
    assert [s.image_id for s in data.sources] == [e["image_id"] for e in raw]
    scenes, warnings = _scenes(data)
    for entry, source, scene in zip(raw, data.sources, scenes):
        width, height = Image.open(source.image_path).size
        assert (scene.height, scene.width) == (height, width)
        regions = entry["regions"]
        # `size` is not trusted: the region list is.
        assert scene.num_instances == len(regions)
        assert scene.ann_ids.tolist() == [entry["id"] * 1000 + i for i in range(len(regions))]
        assert (scene.classes == 1).all()
        assert scene.is_stuff.tolist() == [bool(r["isStuff"]) for r in regions]
        for i, region in enumerate(regions):
            polygon = mask_utils.frPyObjects([region["segmentation"]], height, width)
            amodal = mask_utils.decode(mask_utils.merge(polygon)).astype(bool)
            np.testing.assert_array_equal(scene.amodal[i], amodal)
            if "visible_mask" in region:
                visible = mask_utils.decode(
                    {"size": region["visible_mask"]["size"],
                     "counts": region["visible_mask"]["counts"].encode()}).astype(bool)
                np.testing.assert_array_equal(scene.visible[i], visible & amodal)
                # The rasterized polygon and the annotated RLE agree on the rate.
                assert scene.occlusion[i] == pytest.approx(region["occlude_rate"], abs=0.03)
            else:
                np.testing.assert_array_equal(scene.visible[i], amodal)
                assert scene.occlusion[i] == 0
            ys, xs = np.nonzero(amodal)
            np.testing.assert_array_equal(scene.boxes[i],
                                          [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])
        # The annotated orders (which skip numbers in sample 4) agree with the masks.
        orders = np.array([r["order"] for r in regions])
        np.testing.assert_array_equal(scene.order, np.argsort(np.argsort(orders)))
    assert warnings["order_contradicts_masks"] == 0
    assert sum(s.num_instances for s in scenes) == 2 + 11 + 19 + 10 + 6


def test_sample_4_orders_skip_numbers(samples):
    path, images, raw = samples
    assert 3 not in [r["order"] for r in raw[3]["regions"]]
    scene, = [load_scene(s, 1, collections.Counter())
              for s in cocoa.read(path, images).sources if s.image_id == raw[3]["image_id"]]
    assert scene.order.tolist() == list(range(10))


def test_extra_annotators_use_the_first(samples):
    path, images, raw = samples
    other = dict(raw[0], id=9999, regions=raw[0]["regions"][:1])
    edit_json(path, lambda d: d["annotations"].append(other))
    data = cocoa.read(path, images)
    assert data.warnings["extra_annotators_ignored"] == 1
    first = [s for s in data.sources if s.image_id == raw[0]["image_id"]][0]
    assert len(first.instances) == 2
    assert first.instances[0].ann_id == raw[0]["id"] * 1000


def test_depth_constraints_parse_and_conflict(samples):
    path, images, raw = samples
    assert cocoa.parse_depth_constraint("1-2, 2-5,", "x") == ((1, 2), (2, 5))
    assert cocoa.parse_depth_constraint("", "x") == ()
    assert cocoa.parse_depth_constraint(None, "x") == ()
    with pytest.raises(DataError, match="x: bad depth_constraint entry '1>2'"):
        cocoa.parse_depth_constraint("1-2,1>2", "x")

    # Sample 1: region order 2 is occluded by order 1; a constraint "2-1" contradicts it.
    def constrain(d):
        d["annotations"][0]["depth_constraint"] = "2-1"
    edit_json(path, constrain)
    source = cocoa.read(path, images).sources[0]
    assert source.depth_constraints == ((2, 1),)
    warnings = collections.Counter()
    scene = load_scene(source, 1, warnings)
    assert warnings["depth_constraint_conflict"] == 1
    # Fallback: the order from visibility, which here agrees with the annotated ranks.
    assert scene.order.tolist() == [0, 1]


def test_consistent_constraints_keep_annotated_order(samples):
    path, images, _ = samples
    edit_json(path, lambda d: d["annotations"][0].update(depth_constraint="1-2"))
    warnings = collections.Counter()
    scene = load_scene(cocoa.read(path, images).sources[0], 1, warnings)
    assert scene.order.tolist() == [0, 1]
    assert warnings["depth_constraint_conflict"] == 0
    assert warnings["order_from_visibility"] == 0


def test_missing_image(samples, tmp_path):
    path, _, raw = samples
    with pytest.raises(DataError) as err:
        cocoa.read(path, str(tmp_path / "nowhere"))
    message = str(err.value)
    assert "\n" not in message
    assert f"image {raw[0]['image_id']}" in message and "1.jpg not found" in message


def test_truncated_json(samples):
    path, images, _ = samples
    truncate_file(path)
    with pytest.raises(DataError, match=f"{path}: invalid or truncated JSON"):
        cocoa.read(path, images)


def test_rle_of_wrong_size(samples):
    path, images, raw = samples

    def shrink(d):
        d["annotations"][0]["regions"][1]["visible_mask"]["size"] = [10, 10]
    edit_json(path, shrink)
    with pytest.raises(DataError) as err:
        cocoa.read(path, images)
    assert (f"image {raw[0]['image_id']}, annotation {raw[0]['id']}, region 1 "
            "(visible_mask): RLE size [10, 10] differs from the image size [480, 640]"
            in str(err.value))


def test_region_without_segmentation(samples):
    path, images, raw = samples
    edit_json(path, lambda d: d["annotations"][1]["regions"][3].pop("segmentation"))
    with pytest.raises(DataError, match=f"annotation {raw[1]['id']}, region 3: region "
                                        "without 'segmentation'"):
        cocoa.read(path, images)


def _flat_file(tmp_path, categories, annotations, size=(20, 30)):
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros(size + (3,), np.uint8)).save(image)
    path = tmp_path / "cocoa_cls_train.json"
    path.write_text(json.dumps({
        "images": [{"id": 5, "file_name": "a.png", "height": size[0], "width": size[1]}],
        "annotations": annotations, "categories": categories}))
    return str(path), str(tmp_path)


def test_cocoa_cls_non_contiguous_categories(tmp_path):
    amodal = np.zeros((20, 30), bool)
    amodal[2:10, 3:20] = True
    visible = amodal.copy()
    visible[2:10, 3:8] = False
    annotations = [
        {"id": 11, "image_id": 5, "category_id": 90, "iscrowd": 0,
         "segmentation": [[3, 2, 20, 2, 20, 10, 3, 10]], "visible_mask": rle(visible),
         "invisible_mask": rle(amodal & ~visible), "occlude_rate": 0.3, "bbox": [3, 2, 17, 8]},
        {"id": 12, "image_id": 5, "category_id": 3, "iscrowd": 0,
         "segmentation": [[0, 0, 8, 0, 8, 8, 0, 8], [25, 12, 29, 12, 29, 19]],
         "occlude_rate": 0, "bbox": [0, 0, 29, 19]},
    ]
    categories = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"},
                  {"id": 3, "name": "car"}]
    path, images = _flat_file(tmp_path, categories, annotations)
    data = cocoa.read_cls(path, images)
    assert data.classes == {1: "person", 2: "car", 3: "toothbrush"}
    assert data.category_ids == {1: 1, 2: 3, 3: 90}
    warnings = collections.Counter()
    scene = load_scene(data.sources[0], 3, warnings)
    assert scene.classes.tolist() == [3, 2]
    reference = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(
        annotations[1]["segmentation"], 20, 30))).astype(bool)
    np.testing.assert_array_equal(scene.amodal[1], reference)
    np.testing.assert_array_equal(scene.visible[0], visible & scene.amodal[0])
    # No order given: it comes from the visible masks.
    assert warnings["order_from_visibility"] == 1


def test_cocoa_cls_unknown_category(tmp_path):
    annotations = [{"id": 77, "image_id": 5, "category_id": 4, "iscrowd": 0,
                    "segmentation": [[0, 0, 8, 0, 8, 8]]}]
    path, images = _flat_file(tmp_path, [{"id": 1, "name": "person"}], annotations)
    with pytest.raises(DataError, match=f"{path}: image 5, annotation 77: unknown category "
                                        "id 4"):
        cocoa.read_cls(path, images)


def test_numbers_given_as_strings(samples):
    path, images, _ = samples

    def stringify(d):
        for region in d["annotations"][0]["regions"]:
            region["order"] = str(region["order"])
            region["isStuff"] = str(region["isStuff"])
    edit_json(path, stringify)
    source = cocoa.read(path, images).sources[0]
    assert [inst.order for inst in source.instances] == [1, 2]
    assert not any(inst.is_stuff for inst in source.instances)


def test_images_without_annotation_entry_are_kept(samples):
    path, images, raw = samples
    edit_json(path, lambda d: d["annotations"].pop(0))
    data = cocoa.read(path, images)
    empty = [s for s in data.sources if s.image_id == raw[0]["image_id"]][0]
    assert empty.instances == ()
    warnings = collections.Counter()
    assert load_scene(empty, 1, warnings).num_instances == 0
    assert warnings["image_without_instances"] == 1
    assert os.path.basename(empty.image_path) == "1.jpg"
