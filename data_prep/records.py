"""The TFRecord schema: the one place that writes and parses tf.train.Example features.

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

Choice recorded here: per-instance targets are precomputed (not rebuilt in the pipeline) as
box-relative P x P crops (see ``data_prep.targets``), and the N crops of an image are stacked
vertically into ONE PNG so the pipeline decodes two small PNGs per image instead of 2N.
With N = 0 the two target strings are empty. K and P are in ``metadata.json``.
"""

from __future__ import annotations

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from data_prep import tfrecord
from data_prep.images import EncodedImage
from data_prep.scene import Scene
from data_prep.targets import Targets

__all__ = ["SCHEMA_VERSION", "encode_png", "serialize", "parse", "parse_tf"]

SCHEMA_VERSION = 1

_KEYS = frozenset({
    "schema_version", "image/encoded", "image/format", "image/id", "image/height",
    "image/width", "instance/ann_id", "instance/boxes", "instance/classes", "instance/order",
    "instance/occlusion", "instance/area", "instance/is_stuff", "instance/amodal_rle",
    "instance/visible_rle", "targets/global_layers", "targets/layers", "targets/semdist",
})

# Level 1, no row filter, run-length deflate: layer maps are runs of a few values, and
# this is 4x faster than OpenCV's default filtering with smaller files (0.8 vs 3.3 ms and
# 4.5 vs 7.9 KB for a 512 x 512 global layering map).
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE,
               cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 [H, W] array (H, W >= 1)."""
    ok, data = cv2.imencode(".png", np.ascontiguousarray(array, np.uint8), _PNG_PARAMS)
    if not ok:
        raise ValueError(f"PNG encoding failed for an array of shape {array.shape}")
    return data.tobytes()


def _decode_png(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def serialize(scene: Scene, image: EncodedImage, targets: Targets) -> bytes:
    """A serialized tf.train.Example for one scene (schema in the module docstring).

    Written by ``data_prep.tfrecord`` (no TensorFlow import), byte-identical to
    TensorFlow's deterministic serialization, so reruns and any worker count write
    identical shards.

    Args:
      scene: decoded scene (N instances).
      image: the image bytes to store.
      targets: its layering targets (crops P x P).

    Returns:
      bytes of a tf.train.Example.
    """
    n = scene.num_instances
    p = targets.layer_crops.shape[-1]
    ints, floats, strings = tfrecord.Int64Feature, tfrecord.FloatFeature, tfrecord.BytesFeature
    return tfrecord.example({
        "schema_version": ints([SCHEMA_VERSION]),
        "image/encoded": strings([image.data]),
        "image/format": strings([image.format.encode()]),
        "image/id": ints([scene.image_id]),
        "image/height": ints([scene.height]),
        "image/width": ints([scene.width]),
        "instance/ann_id": ints(scene.ann_ids.tolist()),
        "instance/boxes": floats(scene.boxes.reshape(-1).tolist()),
        "instance/classes": ints(scene.classes.tolist()),
        "instance/order": ints(scene.order.tolist()),
        "instance/occlusion": floats(scene.occlusion.tolist()),
        "instance/area": ints(scene.areas().tolist()),
        "instance/is_stuff": ints(scene.is_stuff.astype(np.int64).tolist()),
        "instance/amodal_rle": strings(scene.amodal_rle_counts()),
        "instance/visible_rle": strings(scene.visible_rle_counts()),
        "targets/global_layers": strings([encode_png(targets.global_layers)]),
        "targets/layers": strings([encode_png(targets.layer_crops.reshape(n * p, p))
                                   if n else b""]),
        "targets/semdist": strings([encode_png(targets.semdist_crops.reshape(n * p, p))
                                    if n else b""]),
    })


def parse(serialized: bytes, mask_target_size: int) -> dict[str, np.ndarray]:
    """Parse a record back to NumPy (for tests, evaluation and inspection; no TensorFlow).

    Returns:
      dict: ``schema_version`` int, ``image`` bytes, ``format`` str, ``image_id`` int,
      ``height`` / ``width`` int, ``ann_ids`` int64 [N], ``boxes`` float32 [N, 4],
      ``classes`` / ``order`` int32 [N], ``occlusion`` float32 [N], ``area`` int64 [N],
      ``is_stuff`` bool [N], ``amodal`` / ``visible`` bool [N, H, W],
      ``global_layers`` uint8 [H, W], ``layer_crops`` / ``semdist_crops`` uint8 [N, P, P].

    Raises:
      ValueError: when the bytes are not an Example or lack a feature of the schema.
    """
    try:
        f = tfrecord.parse_example(serialized)
    except ValueError as err:
        raise ValueError(f"not a tf.train.Example: {err}") from None
    missing = sorted(_KEYS - f.keys())
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
    }


def parse_tf(serialized, mask_target_size: int) -> dict:
    """Parse and decode a record inside tf.data (what the input pipeline needs).

    Args:
      serialized: tf.string scalar.
      mask_target_size: P.

    Returns:
      dict of tf tensors: ``image`` uint8 [H, W, 3], ``image_id`` int64 [],
      ``orig_size`` int32 [2], ``boxes`` float32 [N, 4] (y1, x1, y2, x2) original pixels,
      ``classes`` / ``order`` int32 [N], ``occlusion`` float32 [N], ``area`` float32 [N],
      ``global_layers`` uint8 [H, W], ``layer_crops`` / ``semdist_crops`` uint8 [N, P, P],
      ``schema_version`` int64 [].
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

    image = tf.io.decode_image(f["image/encoded"], channels=3, expand_animations=False)
    return {
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
