"""Record schema: serialize -> parse round trips, in NumPy and inside tf.data."""

import collections
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from amodal_files import layered_scene, write_d2sa
from data_prep import d2sa
from data_prep import records as writer
from sln_jax import records
from data_prep.images import read_image
from data_prep.scene import load_scene
from data_prep.targets import build_targets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

K, P = 4, 12


@pytest.fixture
def example(tmp_path):
    path, images = write_d2sa(str(tmp_path), [layered_scene(seed=3, count=5),
                                              layered_scene(seed=4, count=0)])
    data = d2sa.read(path, images)
    out = []
    for source in data.sources:
        scene = load_scene(source, len(data.classes), collections.Counter())
        image = read_image(source.image_path, source.image_id, source.height, source.width)
        targets = build_targets(scene, K, P, collections.Counter())
        out.append((scene, image, targets, writer.serialize(scene, image, targets)))
    return out


def test_round_trip(example):
    for scene, image, targets, serialized in example:
        parsed = records.parse(serialized, P)
        assert parsed["schema_version"] == records.SCHEMA_VERSION
        assert parsed["image"] == image.data and parsed["format"] == "png"
        assert (parsed["image_id"], parsed["height"], parsed["width"]) == (
            scene.image_id, scene.height, scene.width)
        np.testing.assert_array_equal(parsed["ann_ids"], scene.ann_ids)
        np.testing.assert_array_equal(parsed["boxes"], scene.boxes)
        np.testing.assert_array_equal(parsed["classes"], scene.classes)
        np.testing.assert_array_equal(parsed["order"], scene.order)
        np.testing.assert_array_equal(parsed["occlusion"], scene.occlusion)
        np.testing.assert_array_equal(parsed["area"], scene.amodal.sum(axis=(1, 2)))
        np.testing.assert_array_equal(parsed["is_stuff"], scene.is_stuff)
        np.testing.assert_array_equal(parsed["amodal"], scene.amodal)
        np.testing.assert_array_equal(parsed["visible"], scene.visible)
        np.testing.assert_array_equal(parsed["global_layers"], targets.global_layers)
        np.testing.assert_array_equal(parsed["layer_crops"], targets.layer_crops)
        np.testing.assert_array_equal(parsed["semdist_crops"], targets.semdist_crops)
    assert example[0][0].num_instances == 5 and example[1][0].num_instances == 0


def test_parse_tf_matches_parse(example):
    import tensorflow as tf

    for scene, image, targets, serialized in example:
        parsed = records.parse(serialized, P)
        t = {k: v.numpy() for k, v in records.parse_tf(tf.constant(serialized), P).items()}
        np.testing.assert_array_equal(t["image"], np.asarray(Image.open(io.BytesIO(image.data))))
        assert t["image_id"] == scene.image_id
        assert t["orig_size"].tolist() == [scene.height, scene.width]
        for key in ("boxes", "classes", "order", "occlusion"):
            np.testing.assert_array_equal(t[key], parsed[key])
            assert t[key].dtype == parsed[key].dtype
        np.testing.assert_array_equal(t["area"], parsed["area"].astype(np.float32))
        for key in ("global_layers", "layer_crops", "semdist_crops"):
            np.testing.assert_array_equal(t[key], parsed[key])
        assert t["layer_crops"].shape == (scene.num_instances, P, P)


def test_records_are_compact(example):
    scene, image, _, serialized = example[0]
    masks = scene.amodal.size * 2 + scene.height * scene.width
    # Targets and masks (RLE + PNG) take far less than raw bytes would.
    assert len(serialized) - len(image.data) < masks / 4


def test_scene_without_kept_rle_serializes_identically(example):
    """A Scene built without the annotation RLE / areas (e.g. by hand) re-encodes its masks:
    the record is byte-identical to the one from the kept RLE."""
    import dataclasses

    for scene, image, targets, serialized in example:
        bare = dataclasses.replace(scene, amodal_rle=None, visible_rle=None, area=None)
        assert writer.serialize(bare, image, targets) == serialized


def test_parse_needs_no_tensorflow_and_rejects_other_bytes():
    # Parsing records (tests, inspection) runs in a process without TensorFlow.
    script = (
        "import sys\n"
        "from sln_jax import records, tfrecord\n"
        "import pytest\n"
        "with pytest.raises(ValueError, match='not a tf.train.Example'):\n"
        "    records.parse(b'\\x0a\\x05ab', 8)\n"
        "with pytest.raises(ValueError, match='lacks the features'):\n"
        "    records.parse(tfrecord.example({'image/id': tfrecord.Int64Feature([1])}), 8)\n"
        "assert 'tensorflow' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT)


def test_semantic_map_round_trip_numpy_and_tf(example):
    """The optional semantic map: absent -> None; written -> the same class ids back, in
    NumPy and in tf.data; the other features are unchanged by it."""
    import tensorflow as tf

    for scene, image, targets, serialized in example:
        assert records.parse(serialized, P)["semantic"] is None
        ids = np.random.default_rng(scene.image_id).integers(
            0, 7, (scene.height, scene.width)).astype(np.uint8)
        with_map = writer.serialize(scene, image, targets, ids)
        parsed, plain = records.parse(with_map, P), records.parse(serialized, P)
        np.testing.assert_array_equal(parsed["semantic"], ids)
        assert parsed["semantic"].dtype == np.uint8
        for key in ("global_layers", "layer_crops", "amodal", "boxes"):
            np.testing.assert_array_equal(parsed[key], plain[key])
        t = records.parse_tf(tf.constant(with_map), P, semantic=True)
        np.testing.assert_array_equal(t["semantic"].numpy(), ids)
        assert "semantic" not in records.parse_tf(tf.constant(with_map), P)


def _metadata_dir(tmp_path, semantic_channels=None):
    import json

    metadata = {"schema_version": records.SCHEMA_VERSION, "num_layers": K,
                "mask_target_size": P, "num_classes": 3, "splits": {}}
    if semantic_channels is not None:
        metadata["semantic_channels"] = semantic_channels
    (tmp_path / records.METADATA).write_text(json.dumps(metadata))
    return str(tmp_path)


@pytest.mark.parametrize("have", [None, 0])
def test_read_metadata_refuses_a_semantic_config_without_maps(tmp_path, have):
    import ml_collections

    directory = _metadata_dir(tmp_path, have)
    config = ml_collections.ConfigDict(dict(num_layers=K, mask_target_size=P, num_classes=3,
                                            semantic_channels=6))
    with pytest.raises(ValueError, match="hold no semantic maps but the config says "
                                         "semantic_channels = 6; convert the data with "
                                         "--semantic_dir DIR --semantic_channels 6"):
        records.read_metadata(directory, config)
    config.semantic_channels = 0  # the records' maps are simply not read
    assert records.semantic_channels(records.read_metadata(directory, config)) == 0


def test_read_metadata_checks_the_semantic_class_count(tmp_path):
    import ml_collections

    directory = _metadata_dir(tmp_path, 6)
    config = ml_collections.ConfigDict(dict(num_layers=K, mask_target_size=P, num_classes=3,
                                            semantic_channels=5))
    with pytest.raises(ValueError, match="records have semantic_channels = 6 but the config "
                                         "says 5"):
        records.read_metadata(directory, config)
    for channels in (6, 0):
        config.semantic_channels = channels
        assert records.semantic_channels(records.read_metadata(directory, config)) == 6
    # Configs from before the field: no semantic input.
    old = ml_collections.ConfigDict(dict(num_layers=K, mask_target_size=P, num_classes=3))
    records.read_metadata(directory, old)
