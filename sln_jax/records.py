"""The TFRecord schema and its readers: records and ``metadata.json``, on the training side.

The writer is ``data_prep.records.serialize`` (it builds these features from a Scene);
everything that reads converted data (the input pipeline, training, inference, the previews)
reads it through this module, so the schema version is checked in one place.

One Example per image (schema version ``SCHEMA_VERSION``):

| key                      | type          | content                                         |
|--------------------------|---------------|-------------------------------------------------|
| ``schema_version``       | int64         | ``SCHEMA_VERSION``                              |
| ``image/encoded``        | bytes         | original JPEG / PNG, or PNG after conversion    |
| ``image/format``         | bytes         | b"jpeg" or b"png"                               |
| ``image/id``             | int64         | image id in the annotation file                 |
| ``image/height, width``  | int64         | original size H, W                              |
| ``instance/ann_id``      | int64 [N]     | annotation ids                                  |
| ``instance/boxes``       | float [4N]    | amodal boxes (y1, x1, y2, x2), original pixels  |
| ``instance/classes``     | int64 [N]     | contiguous class ids 1..C                       |
| ``instance/order``       | int64 [N]     | strict depth rank 0..N-1, 0 = front             |
| ``instance/occlusion``   | float [N]     | occlusion rate 1 - visible / amodal area        |
| ``instance/area``        | int64 [N]     | amodal mask area in pixels                      |
| ``instance/is_stuff``    | int64 [N]     | 1 for COCOA stuff regions                       |
| ``instance/amodal_rle``  | bytes [N]     | COCO compressed RLE counts of the amodal masks  |
| ``instance/visible_rle`` | bytes [N]     | same for the visible masks                      |
| ``targets/global_layers``| bytes         | PNG uint8 [H, W] global layering map 0..K-1     |
| ``targets/layers``       | bytes         | PNG uint8 [N * P, P]: layer + 1, 0 outside      |
| ``targets/semdist``      | bytes         | PNG uint8 [N * P, P]: round(M / (K + 1) * 255)  |
| ``semantic/encoded``     | bytes         | optional: PNG uint8 [H, W] class ids 0..S_sem-1 |

Choice recorded here: per-instance targets are precomputed (not rebuilt in the pipeline) as
box-relative P x P crops (see ``data_prep.targets``), and the N crops of an image are stacked
vertically into ONE PNG so the pipeline decodes two small PNGs per image instead of 2N.
With N = 0 the two target strings are empty. K and P are in ``metadata.json``.

The semantic map (``sln_jax.semantic``: a segmentation model's class ids, the optional input
of the layering head) is an optional feature, present in every record of a directory whose
``metadata.json`` has ``semantic_channels`` = S_sem > 0 and in none otherwise (records made
before it existed read as S_sem = 0, so adding it did not change ``SCHEMA_VERSION``). It is
stored as class ids, one uint8 PNG at the image's resolution (as the global layering map),
not as S_sem float maps: the pipeline turns it into class fractions
(``sln_jax.canvas.class_fractions_tf``).
"""

from __future__ import annotations

import json
import os
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from sln_jax import tfrecord

__all__ = ["SCHEMA_VERSION", "METADATA", "KEYS", "SEMANTIC_KEY", "read_metadata",
           "semantic_channels", "split_files", "parse", "parse_tf"]

SCHEMA_VERSION = 1
# The conversion's summary beside the shards: classes, K, P, schema version, splits.
METADATA = "metadata.json"

KEYS = frozenset({
    "schema_version", "image/encoded", "image/format", "image/id", "image/height",
    "image/width", "instance/ann_id", "instance/boxes", "instance/classes", "instance/order",
    "instance/occlusion", "instance/area", "instance/is_stuff", "instance/amodal_rle",
    "instance/visible_rle", "targets/global_layers", "targets/layers", "targets/semdist",
})
# The optional feature: the semantic map's class ids (module docstring).
SEMANTIC_KEY = "semantic/encoded"


def read_metadata(directory: str | os.PathLike, data_config: Any = None) -> dict:
    """The one reader of ``DIRECTORY/metadata.json``: loads it and checks the schema version.

    Args:
      directory: the conversion's output directory.
      data_config: optional config with ``num_layers``, ``mask_target_size`` and
        ``num_classes``; each must equal the dataset's. Its ``semantic_channels`` (absent =
        0) too, when > 0: the records must hold semantic maps of that many classes (with
        0 the records' maps, if any, are not read).

    Returns:
      the metadata dict (written by ``data_prep.convert``).

    Raises:
      FileNotFoundError: no metadata.json (the data was not converted).
      ValueError: one line naming the file and the mismatching field or schema version.
    """
    path = os.path.join(os.fspath(directory), METADATA)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: convert the dataset first with "
                                "python -m data_prep.convert")
    with open(path) as f:
        try:
            metadata = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: invalid JSON ({err})") from None
    if metadata.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema version {metadata.get('schema_version')} but this "
                         f"code reads version {SCHEMA_VERSION}; convert the data again")
    if data_config is not None:
        for field in ("num_layers", "mask_target_size", "num_classes"):
            want, have = int(getattr(data_config, field)), int(metadata[field])
            if want != have:
                raise ValueError(f"{path}: the records have {field} = {have} but the config "
                                 f"says {want}; run with --config.data.{field}={have}, or "
                                 f"convert the data again with that {field}")
        want = int(getattr(data_config, "semantic_channels", 0) or 0)
        have = semantic_channels(metadata)
        if want and not have:
            raise ValueError(f"{path}: the records hold no semantic maps but the config says "
                             f"semantic_channels = {want}; convert the data with "
                             f"--semantic_dir DIR --semantic_channels {want}, or run with "
                             "--config.data.semantic_channels=0")
        if want and want != have:
            raise ValueError(f"{path}: the records have semantic_channels = {have} but the "
                             f"config says {want}; run with "
                             f"--config.data.semantic_channels={have}, or convert the data "
                             f"again with --semantic_channels {want}")
    return metadata


def semantic_channels(metadata: dict) -> int:
    """S_sem of converted records (their ``metadata.json``): 0 when they hold no semantic map."""
    return int(metadata.get("semantic_channels", 0) or 0)


def split_files(metadata: dict, directory: str | os.PathLike, split: str
                ) -> tuple[list[str], list[int]]:
    """(shard paths, example counts) of ``split``, in the metadata's order.

    Raises:
      ValueError: naming the file when the split was not converted.
    """
    splits = metadata.get("splits", {})
    if split not in splits:
        raise ValueError(f"{os.path.join(os.fspath(directory), METADATA)}: no split {split!r} "
                         f"(have {sorted(splits)})")
    files = [os.path.join(os.fspath(directory), name) for name in splits[split]["files"]]
    return files, list(splits[split]["examples_per_file"])


def _decode_png(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def parse(serialized: bytes, mask_target_size: int) -> dict[str, np.ndarray]:
    """Parse a record back to NumPy (for tests, evaluation and inspection; no TensorFlow).

    Returns:
      dict: ``schema_version`` int, ``image`` bytes, ``format`` str, ``image_id`` int,
      ``height`` / ``width`` int, ``ann_ids`` int64 [N], ``boxes`` float32 [N, 4],
      ``classes`` / ``order`` int32 [N], ``occlusion`` float32 [N], ``area`` int64 [N],
      ``is_stuff`` bool [N], ``amodal`` / ``visible`` bool [N, H, W],
      ``global_layers`` uint8 [H, W], ``layer_crops`` / ``semdist_crops`` uint8 [N, P, P],
      ``semantic`` uint8 [H, W] class ids, or None when the record holds no semantic map.

    Raises:
      ValueError: when the bytes are not an Example or lack a feature of the schema.
    """
    try:
        f = tfrecord.parse_example(serialized)
    except ValueError as err:
        raise ValueError(f"not a tf.train.Example: {err}") from None
    missing = sorted(KEYS - f.keys())
    if missing:
        raise ValueError(f"record lacks the features {missing} (schema version "
                         f"{SCHEMA_VERSION} expected)")

    def ints(key):
        return np.asarray(f[key], np.int64)

    def one(key):
        return f[key][0]

    h, w = int(ints("image/height")[0]), int(ints("image/width")[0])
    n = len(f["instance/ann_id"])
    p = mask_target_size

    def masks(key):
        counts = list(f[key])
        if not counts:
            return np.zeros((0, h, w), bool)
        decoded = mask_utils.decode([{"size": [h, w], "counts": c} for c in counts])
        return np.moveaxis(decoded, -1, 0).astype(bool)

    def crops(key):
        data = one(key)
        return (_decode_png(data).reshape(n, p, p) if data else np.zeros((0, p, p), np.uint8))

    return {
        "schema_version": int(ints("schema_version")[0]),
        "image": one("image/encoded"),
        "format": one("image/format").decode(),
        "image_id": int(ints("image/id")[0]),
        "height": h,
        "width": w,
        "ann_ids": ints("instance/ann_id"),
        "boxes": np.asarray(f["instance/boxes"], np.float32).reshape(n, 4),
        "classes": ints("instance/classes").astype(np.int32),
        "order": ints("instance/order").astype(np.int32),
        "occlusion": np.asarray(f["instance/occlusion"], np.float32),
        "area": ints("instance/area"),
        "is_stuff": ints("instance/is_stuff").astype(bool),
        "amodal": masks("instance/amodal_rle"),
        "visible": masks("instance/visible_rle"),
        "global_layers": _decode_png(one("targets/global_layers")),
        "layer_crops": crops("targets/layers"),
        "semdist_crops": crops("targets/semdist"),
        "semantic": _decode_png(one(SEMANTIC_KEY)) if SEMANTIC_KEY in f else None,
    }


def parse_tf(serialized, mask_target_size: int, semantic: bool = False) -> dict:
    """Parse and decode a record inside tf.data (what the input pipeline needs).

    Args:
      serialized: tf.string scalar.
      mask_target_size: P.
      semantic: also decode the semantic map (records whose metadata has
        ``semantic_channels`` > 0; a record without it fails to parse).

    Returns:
      dict of tf tensors: ``image`` uint8 [H, W, 3], ``image_id`` int64 [],
      ``orig_size`` int32 [2], ``boxes`` float32 [N, 4] (y1, x1, y2, x2) original pixels,
      ``classes`` / ``order`` int32 [N], ``occlusion`` float32 [N], ``area`` float32 [N],
      ``global_layers`` uint8 [H, W], ``layer_crops`` / ``semdist_crops`` uint8 [N, P, P],
      ``schema_version`` int64 [], and with ``semantic`` the class ids ``semantic``
      uint8 [H, W].
    """
    import tensorflow as tf

    p = mask_target_size
    spec = {
        "schema_version": tf.io.FixedLenFeature([], tf.int64),
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/id": tf.io.FixedLenFeature([], tf.int64),
        "image/height": tf.io.FixedLenFeature([], tf.int64),
        "image/width": tf.io.FixedLenFeature([], tf.int64),
        "instance/boxes": tf.io.VarLenFeature(tf.float32),
        "instance/classes": tf.io.VarLenFeature(tf.int64),
        "instance/order": tf.io.VarLenFeature(tf.int64),
        "instance/occlusion": tf.io.VarLenFeature(tf.float32),
        "instance/area": tf.io.VarLenFeature(tf.int64),
        "targets/global_layers": tf.io.FixedLenFeature([], tf.string),
        "targets/layers": tf.io.FixedLenFeature([], tf.string),
        "targets/semdist": tf.io.FixedLenFeature([], tf.string),
    }
    if semantic:
        spec[SEMANTIC_KEY] = tf.io.FixedLenFeature([], tf.string)
    f = tf.io.parse_single_example(serialized, spec)

    def dense(key):
        return tf.sparse.to_dense(f[key])

    classes = tf.cast(dense("instance/classes"), tf.int32)
    n = tf.shape(classes)[0]

    def crops(key):
        data = f[key]
        return tf.cond(
            tf.strings.length(data) > 0,
            lambda: tf.reshape(tf.io.decode_png(data, channels=1), [n, p, p]),
            lambda: tf.zeros([0, p, p], tf.uint8))

    # JPEG with the accurate integer DCT: TensorFlow's default (fast) DCT gives other pixels
    # than the reader of inference (``sln_jax.images``, libjpeg's accurate DCT).
    data = f["image/encoded"]
    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False))
    parsed = {
        "schema_version": f["schema_version"],
        "image": image,
        "image_id": f["image/id"],
        "orig_size": tf.cast(tf.stack([f["image/height"], f["image/width"]]), tf.int32),
        "boxes": tf.reshape(dense("instance/boxes"), [n, 4]),
        "classes": classes,
        "order": tf.cast(dense("instance/order"), tf.int32),
        "occlusion": dense("instance/occlusion"),
        "area": tf.cast(dense("instance/area"), tf.float32),
        "global_layers": tf.io.decode_png(f["targets/global_layers"], channels=1)[:, :, 0],
        "layer_crops": crops("targets/layers"),
        "semdist_crops": crops("targets/semdist"),
    }
    if semantic:
        parsed["semantic"] = tf.io.decode_png(f[SEMANTIC_KEY], channels=1)[:, :, 0]
    return parsed
