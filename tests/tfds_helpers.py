"""Helpers of the TFDS builder tests: a tiny synthetic config, and a check that a prepared
TFDS split holds exactly what ``data_prep.convert`` wrote for the same annotations."""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from pycocotools import mask as mask_utils

from sln_jax import records
from data_prep.tfds_builders import AmodalConfig, SyntheticConfig

K, P = 3, 14  # configs/tiny_test.py

TINY_SYNTHETIC = dict(name="tiny", num_layers=K, mask_target_size=P, image_size=64,
                      num_train=8, num_val=4, max_objects=4)


def tiny_synthetic_config() -> SyntheticConfig:
    return SyntheticConfig(**TINY_SYNTHETIC)


def tiny_config() -> AmodalConfig:
    return AmodalConfig(name=f"k{K}_p{P}", num_layers=K, mask_target_size=P)


def record_examples(records_dir: str, split: str) -> list[dict]:
    """``records.parse`` of every record of a converted split, in file order."""
    with open(os.path.join(records_dir, "metadata.json")) as f:
        metadata = json.load(f)
    files = [os.path.join(records_dir, name) for name in metadata["splits"][split]["files"]]
    p = int(metadata["mask_target_size"])
    return [records.parse(x, p) for x in tfds.as_numpy(tf.data.TFRecordDataset(files))]


def tfds_examples(builder, split: str) -> list[dict]:
    """A prepared split's examples in stored order, image and global map left encoded."""
    decoders = {"image": tfds.decode.SkipDecoding(),
                "global_layers": tfds.decode.SkipDecoding()}
    ds = builder.as_dataset(split=split, decoders=decoders, shuffle_files=False)
    return list(tfds.as_numpy(ds))


def _masks(counts, h: int, w: int) -> np.ndarray:
    if len(counts) == 0:
        return np.zeros((0, h, w), bool)
    decoded = mask_utils.decode([{"size": [h, w], "counts": c} for c in counts])
    return np.moveaxis(decoded, -1, 0).astype(bool)


def assert_same_as_records(builder, split: str, records_dir: str,
                           records_split: str | None = None) -> int:
    """The TFDS split holds the converted split's examples, in its order, field by field
    (image and global layering map byte for byte). Returns the number of examples."""
    expected = record_examples(records_dir, records_split or split)
    got = tfds_examples(builder, split)
    assert [e["image_id"] for e in got] == [r["image_id"] for r in expected]
    with open(os.path.join(records_dir, "metadata.json")) as f:
        metadata = json.load(f)
    for key in ("num_layers", "mask_target_size", "num_classes", "classes", "category_ids",
                "schema_version"):
        assert builder.info.metadata[key] == metadata[key], key
    # The same repairs counted (reader and per-image counts).
    assert (builder.info.metadata["warnings"][split]
            == metadata["splits"][records_split or split]["statistics"]["warnings"])
    for example, record in zip(got, expected):
        inst = example["instances"]
        assert example["image"] == record["image"]
        assert example["image_format"].decode() == record["format"]
        h, w = record["height"], record["width"]
        pairs = {
            "ann_id": "ann_ids", "box": "boxes", "label": "classes", "order": "order",
            "occlusion": "occlusion", "area": "area", "is_stuff": "is_stuff",
            "layers": "layer_crops", "semdist": "semdist_crops",
        }
        for key, record_key in pairs.items():
            np.testing.assert_array_equal(inst[key], record[record_key], err_msg=key)
            assert np.asarray(inst[key]).dtype.kind == np.asarray(record[record_key]).dtype.kind
        np.testing.assert_array_equal(_masks(inst["amodal_rle"], h, w), record["amodal"])
        np.testing.assert_array_equal(_masks(inst["visible_rle"], h, w), record["visible"])
        global_layers = records._decode_png(example["global_layers"])
        np.testing.assert_array_equal(global_layers, record["global_layers"])
    return len(got)


def leftovers(data_dir: str, name: str) -> list[str]:
    """Files under ``data_dir/name`` and version or temporary directories (a failed build
    must leave none; TFDS's ``.config`` notes of the builder configs do not count)."""
    found = []
    for root, dirs, files in os.walk(os.path.join(data_dir, name)):
        dirs[:] = [d for d in dirs if d != ".config"]
        found += [os.path.join(root, f) for f in files]
        found += [os.path.join(root, d) for d in dirs if "incomplete" in d or "." in d]
    return sorted(found)
