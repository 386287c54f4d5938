"""D2SA reader (and the synthetic dataset through it) on fixtures with exact masks."""

import collections

import numpy as np
import pytest

from amodal_files import edit_json, layered_scene, write_d2sa
from data_prep import d2sa, synthetic
from data_prep.scene import DataError, load_scene


def _load(path, images):
    data = d2sa.read(path, images)
    warnings = collections.Counter(data.warnings)
    scenes = [load_scene(s, len(data.classes), warnings) for s in data.sources]
    return data, scenes, warnings


def test_fields_round_trip(tmp_path):
    truth = [layered_scene(seed=s) for s in range(3)]
    path, images = write_d2sa(str(tmp_path), truth)
    data, scenes, warnings = _load(path, images)
    assert data.classes == {1: "apple", 2: "pear", 3: "plum"}
    assert data.category_ids == {1: 1, 2: 7, 3: 42}
    for index, (want, scene) in enumerate(zip(truth, scenes)):
        assert scene.image_id == index + 1
        np.testing.assert_array_equal(scene.amodal, want["amodal"])
        np.testing.assert_array_equal(scene.visible, want["visible"])
        np.testing.assert_array_equal(scene.order, want["order"])
        np.testing.assert_array_equal(scene.classes, want["classes"])
        hidden = (want["amodal"] & ~want["visible"]).sum(axis=(1, 2))
        np.testing.assert_allclose(scene.occlusion,
                                   hidden / want["amodal"].sum(axis=(1, 2)), rtol=1e-6)
        assert not scene.is_stuff.any()
    first = 1 + sum(s["amodal"].shape[0] for s in truth[:1])
    assert scenes[1].ann_ids.tolist() == list(range(first, first + truth[1]["amodal"].shape[0]))
    assert sum(warnings.values()) == 0


def test_crowd_given_as_json_boolean_is_skipped(tmp_path):
    path, images = write_d2sa(str(tmp_path), [layered_scene()])
    edit_json(path, lambda d: d["annotations"][1].update(iscrowd=True))
    data, scenes, warnings = _load(path, images)
    assert warnings["crowd_skipped"] == 1
    assert scenes[0].ann_ids.tolist() == [1, 3, 4]


def test_uncompressed_rle_and_top_level_order(tmp_path):
    truth = layered_scene(seed=5)
    path, images = write_d2sa(str(tmp_path), [truth])

    def uncompress(d):
        for i, ann in enumerate(d["annotations"]):
            mask = truth["amodal"][i]
            flat = mask.T.ravel().astype(np.int8)  # COCO RLE runs are column-major
            edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
            counts = np.diff(np.concatenate([[0], edges])).tolist()
            ann["segmentation"] = {"size": [48, 64], "counts": counts}
            ann["order"] = ann.pop("amodal_region")["order"]
    edit_json(path, uncompress)
    _, scenes, _ = _load(path, images)
    np.testing.assert_array_equal(scenes[0].amodal, truth["amodal"])
    np.testing.assert_array_equal(scenes[0].order, truth["order"])


def test_unknown_image_id(tmp_path):
    path, images = write_d2sa(str(tmp_path), [layered_scene()])
    edit_json(path, lambda d: d["annotations"][2].update(image_id=99))
    with pytest.raises(DataError, match=f"{path}: annotation 3: unknown image id 99"):
        d2sa.read(path, images)


def test_missing_field(tmp_path):
    path, images = write_d2sa(str(tmp_path), [layered_scene()])
    edit_json(path, lambda d: d["annotations"][0].pop("segmentation"))
    with pytest.raises(DataError, match="image 1, annotation 1: missing field 'segmentation'"):
        d2sa.read(path, images)


def test_synthetic_dataset_through_the_reader(tmp_path):
    config = synthetic.SceneConfig(image_size=64)
    synthetic.write_split(str(tmp_path), "val", 3, seed=1, config=config, progress=False)
    data, scenes, warnings = _load(str(tmp_path / "annotations" / "val.json"),
                                   str(tmp_path / "images" / "val"))
    assert data.classes == {c["id"]: c["name"] for c in synthetic.CATEGORIES}
    for index, scene in enumerate(scenes):
        want = synthetic.make_scene(1, "val", index, config)
        np.testing.assert_array_equal(scene.amodal, want.amodal)
        np.testing.assert_array_equal(scene.visible, want.visible)
        np.testing.assert_array_equal(np.argsort(scene.order), np.argsort(want.order))
        np.testing.assert_array_equal(scene.classes, want.classes)
    assert warnings["order_contradicts_masks"] == 0
    assert warnings["visible_layer_conflict"] == 0


def test_class_agnostic_copy_reads_as_one_class(tmp_path, capsys):
    import json

    from data_prep import class_agnostic

    truth = [layered_scene(seed=s) for s in range(2)]
    path, images = write_d2sa(str(tmp_path), truth)
    out = str(tmp_path / "agnostic.json")
    assert class_agnostic.main(["--input", path, "--output", out]) == 0
    data, scenes, warnings = _load(out, images)
    assert data.classes == {1: "object"}
    for want, scene in zip(truth, scenes):
        assert (scene.classes == 1).all()
        np.testing.assert_array_equal(scene.amodal, want["amodal"])
        np.testing.assert_array_equal(scene.order, want["order"])
    with open(path) as f:
        original = json.load(f)
    with open(out) as f:
        copy = json.load(f)
    assert [dict(a, category_id=1) for a in original["annotations"]] == copy["annotations"]
    assert class_agnostic.main(["--input", str(tmp_path / "missing.json"),
                                "--output", out]) == 1
    assert "missing.json" in capsys.readouterr().err
