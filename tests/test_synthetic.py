"""Tests of data_prep.synthetic: scene invariants, COCO JSON, determinism, CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from scipy import ndimage

from data_prep import synthetic
from sln_jax import layering

SMALL = synthetic.SceneConfig(image_size=64, min_objects=2, max_objects=6)


def _front_union_visible(amodal: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Reference: visible_i = amodal_i minus the union of amodal masks in front of i."""
    visible = np.zeros_like(amodal)
    for i in range(amodal.shape[0]):
        front = amodal[order < order[i]].any(axis=0)
        visible[i] = amodal[i] & ~front
    return visible


def _files(root: str) -> dict[str, bytes]:
    out = {}
    for base, _, names in os.walk(root):
        for name in names:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), index=st.integers(0, 10_000),
       size=st.sampled_from([32, 48, 64, 96]), max_objects=st.integers(0, 9))
def test_scene_masks_follow_the_painters_rule(seed, index, size, max_objects):
    config = synthetic.SceneConfig(image_size=size, min_objects=0, max_objects=max_objects)
    scene = synthetic.make_scene(seed, "train", index, config)
    n = scene.amodal.shape[0]
    assert scene.image.shape == (size, size, 3) and scene.image.dtype == np.uint8
    assert scene.amodal.shape == scene.visible.shape == (n, size, size)
    assert scene.amodal.dtype == scene.visible.dtype == bool
    assert n <= max_objects
    assert np.array_equal(np.sort(scene.order), np.arange(1, n + 1))
    assert set(scene.classes.tolist()) <= {c["id"] for c in synthetic.CATEGORIES}
    np.testing.assert_array_equal(scene.visible, _front_union_visible(scene.amodal, scene.order))
    # The same relation through the layering maps: visible = layer 0.
    layers = layering.instance_layers(scene.amodal, scene.order)
    np.testing.assert_array_equal(scene.visible, layers == 0)
    amodal_area = scene.amodal.sum(axis=(1, 2))
    hidden = amodal_area - scene.visible.sum(axis=(1, 2))
    assert np.all(amodal_area >= config.min_area * size * size)
    assert np.all(scene.visible.sum(axis=(1, 2)) >= config.min_visible_fraction * amodal_area)
    assert np.all((hidden == 0) | (hidden >= config.min_occluded_fraction * amodal_area))


def test_make_scene_is_deterministic_and_splits_differ():
    a = synthetic.make_scene(7, "train", 3, SMALL)
    b = synthetic.make_scene(7, "train", 3, SMALL)
    for field in ("image", "amodal", "visible", "classes", "order"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.image, synthetic.make_scene(7, "val", 3, SMALL).image)
    assert not np.array_equal(a.image, synthetic.make_scene(8, "train", 3, SMALL).image)
    with pytest.raises(ValueError, match="split"):
        synthetic.make_scene(7, "test", 0, SMALL)


def test_occluded_fraction_is_near_the_target():
    config = synthetic.SceneConfig(image_size=128)
    totals = {"instances": 0, "occluded": 0, "multi_occluded": 0}
    classes = set()
    for index in range(50):
        scene = synthetic.make_scene(0, "train", index, config)
        stats = synthetic.occlusion_stats(scene.amodal, scene.order)
        hidden = (scene.amodal & ~scene.visible).any(axis=(1, 2))
        assert stats["occluded"] == int(hidden.sum())
        for key in totals:
            totals[key] += stats[key]
        classes.update(scene.classes.tolist())
    occluded = totals["occluded"] / totals["instances"]
    multi = totals["multi_occluded"] / totals["instances"]
    assert 0.3 <= occluded <= 0.55, occluded
    assert 0.05 <= multi <= occluded, multi
    assert classes == {c["id"] for c in synthetic.CATEGORIES}


def test_occlusion_stats_counts_distinct_occluders():
    amodal = np.zeros((4, 8, 8), bool)
    amodal[0, 0:4, 0:4] = True   # front, overlaps 2
    amodal[1, 0:4, 4:8] = True   # overlaps 2
    amodal[2, 2:6, 2:6] = True   # behind 0 and 1
    amodal[3, 7:8, 7:8] = True   # alone
    stats = synthetic.occlusion_stats(amodal, np.array([1, 2, 3, 4]))
    assert stats == {"instances": 4, "occluded": 1, "multi_occluded": 1}


def test_shapes_match_their_classes():
    """Rings have a hole, the other shapes do not (checked away from the border)."""
    config = synthetic.SceneConfig(image_size=128)
    seen = set()
    for index in range(40):
        scene = synthetic.make_scene(1, "train", index, config)
        for mask, cls in zip(scene.amodal, scene.classes):
            if mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any():
                continue
            holes = ndimage.binary_fill_holes(mask).sum() - mask.sum()
            assert (holes > 0) == (cls == 4), (index, cls, holes)
            assert ndimage.label(mask, np.ones((3, 3)))[1] == 1  # one piece (8-connected)
            seen.add(int(cls))
    assert 4 in seen and len(seen) >= 4


def test_scene_annotations_match_the_masks():
    scene = synthetic.make_scene(3, "val", 0, synthetic.SceneConfig(image_size=96))
    anns = synthetic.scene_annotations(scene, image_id=5, first_id=11)
    assert [a["id"] for a in anns] == list(range(11, 11 + len(anns)))
    for i, ann in enumerate(anns):
        assert ann["image_id"] == 5 and ann["iscrowd"] == 0
        for key in ("segmentation", "visible_mask", "invisible_mask"):
            assert isinstance(ann[key]["counts"], str) and ann[key]["size"] == [96, 96]
        amodal = mask_utils.decode({**ann["segmentation"],
                                    "counts": ann["segmentation"]["counts"].encode()})
        np.testing.assert_array_equal(amodal.astype(bool), scene.amodal[i])
        ys, xs = np.nonzero(scene.amodal[i])
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(),
                               ys.max() + 1 - ys.min()]
        assert ann["area"] == scene.amodal[i].sum()


def test_write_split_is_byte_identical_and_coco_loadable(tmp_path):
    config = synthetic.SceneConfig(image_size=64, max_objects=5)
    a, b = tmp_path / "a", tmp_path / "b"
    stats = synthetic.write_split(str(a), "train", 6, 42, config, progress=False)
    synthetic.write_split(str(b), "train", 6, 42, config, workers=2, progress=False)
    files_a, files_b = _files(str(a)), _files(str(b))
    assert sorted(files_a) == ["annotations/train.json"] + [
        f"images/train/{i:06d}.png" for i in range(1, 7)]
    assert files_a == files_b  # same bytes whatever the worker count

    path = str(a / "annotations" / "train.json")
    coco = COCO(path)
    assert sorted(coco.getImgIds()) == list(range(1, 7))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == [
        "ellipse", "triangle", "star", "ring", "photo_patch"]
    anns = coco.dataset["annotations"]
    assert [a["id"] for a in anns] == list(range(1, len(anns) + 1))
    assert stats["instances"] == len(anns)
    for image_id in coco.getImgIds():
        record = coco.loadImgs([image_id])[0]
        scene = synthetic.make_scene(42, "train", image_id - 1, config)
        png = np.asarray(Image.open(a / "images" / "train" / record["file_name"]))
        np.testing.assert_array_equal(png, scene.image)
        assert (record["height"], record["width"]) == (64, 64)
        image_anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        assert len(image_anns) == scene.amodal.shape[0]
        for i, ann in enumerate(image_anns):
            amodal = coco.annToMask(ann).astype(bool)
            visible = mask_utils.decode(coco.annToRLE({**ann,
                                                       "segmentation": ann["visible_mask"]}))
            invisible = mask_utils.decode(
                coco.annToRLE({**ann, "segmentation": ann["invisible_mask"]}))
            np.testing.assert_array_equal(amodal, scene.amodal[i])
            np.testing.assert_array_equal(visible.astype(bool), scene.visible[i])
            np.testing.assert_array_equal(invisible.astype(bool), amodal & ~scene.visible[i])
            assert ann["occlude_rate"] == pytest.approx(invisible.sum() / amodal.sum(),
                                                        abs=1e-12)
            assert ann["order"] == scene.order[i]
            assert ann["category_id"] == scene.classes[i]
        orders = sorted(a["order"] for a in image_anns)
        assert orders == list(range(1, len(image_anns) + 1))


def test_cli_tiny_run_with_previews(tmp_path, capsys):
    out = tmp_path / "data"
    code = synthetic.main(["--output", str(out), "--num_train", "3", "--num_val", "2",
                           "--image_size", "48", "--seed", "5", "--max_objects", "4",
                           "--preview", "2"])
    assert code == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "occluded" in printed and "previews: 2" in printed
    # Labelled as generation, not to be read as training's progress.
    assert "generated train: 3 images" in printed and "generate train:" in captured.err
    train = json.loads((out / "annotations" / "train.json").read_text())
    val = json.loads((out / "annotations" / "val.json").read_text())
    assert len(train["images"]) == 3 and len(val["images"]) == 2
    assert all(len(a["segmentation"]["counts"]) > 0 for a in train["annotations"])
    assert sorted(os.listdir(out / "images" / "val")) == ["000001.png", "000002.png"]
    previews = sorted(os.listdir(out / "previews"))
    assert previews == ["train_000001.png", "train_000002.png"]
    with Image.open(out / "previews" / previews[0]) as picture:
        assert picture.format == "PNG" and picture.width >= 800 and picture.height >= 300
    leftovers = [p for p in _files(str(out)) if os.path.basename(p).endswith(".tmp")]
    assert leftovers == []


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    code = synthetic.main(["--output", str(tmp_path), "--num_train", "1", "--num_val", "1",
                           "--min_objects", "5", "--max_objects", "2"])
    assert code == 2
    assert "min_objects" in capsys.readouterr().err
    with pytest.raises(ValueError, match="num_images"):
        synthetic.write_split(str(tmp_path), "train", -1, 0, SMALL, progress=False)


@pytest.mark.parametrize("flag,value", [("--num_train", "-3"), ("--num_val", "-1"),
                                        ("--workers", "0"), ("--preview", "-2")])
def test_cli_rejects_bad_counts_before_writing(tmp_path, capsys, flag, value):
    argv = {"--output": str(tmp_path / "out"), "--num_train": "1", "--num_val": "1"}
    argv[flag] = value
    code = synthetic.main([item for pair in argv.items() for item in pair])
    assert code == 2
    err = capsys.readouterr().err
    assert flag in err and value in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
def test_class_map_is_the_visible_class_at_each_pixel():
    scene = synthetic.make_scene(3, "train", 0, SMALL)
    ids = synthetic.class_map(scene)
    assert ids.dtype == np.uint8 and ids.shape == (64, 64)
    expected = np.zeros((64, 64), np.uint8)
    for i in np.argsort(-scene.order):  # back to front: the front-most object wins
        expected[scene.amodal[i]] = scene.classes[i]
    np.testing.assert_array_equal(ids, expected)
    assert set(np.unique(ids)) == {0} | set(scene.classes.tolist())
    assert synthetic.SEMANTIC_CHANNELS == len(synthetic.CATEGORIES) + 1


def test_cli_semantic_maps_are_written_and_read_back(tmp_path):
    from sln_jax import semantic

    out = tmp_path / "data"
    assert synthetic.main(["--output", str(out), "--num_train", "2", "--num_val", "1",
                           "--image_size", "48", "--seed", "5", "--semantic"]) == 0
    config = synthetic.SceneConfig(image_size=48)
    for split, count in (("train", 2), ("val", 1)):
        names = sorted(os.listdir(out / "semantic" / split))
        assert names == sorted(os.listdir(out / "images" / split))
        for index in range(count):
            path = semantic.map_path(out / "semantic" / split, f"{index + 1:06d}.png")
            ids = semantic.read_class_map(path, 48, 48, synthetic.SEMANTIC_CHANNELS)
            np.testing.assert_array_equal(
                ids, synthetic.class_map(synthetic.make_scene(5, split, index, config)))
