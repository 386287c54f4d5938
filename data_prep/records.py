"""The TFRecord writer: one tf.train.Example per scene, in the schema of ``sln_jax.records``.

The schema, its version and the readers live in ``sln_jax.records`` (the training side);
this module builds the features from a converted Scene, its image and its targets.
"""

from __future__ import annotations

import cv2
import numpy as np

from data_prep.images import EncodedImage
from data_prep.scene import Scene
from data_prep.targets import Targets
from sln_jax import tfrecord
from sln_jax.records import SCHEMA_VERSION, SEMANTIC_KEY

__all__ = ["encode_png", "serialize"]

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


def serialize(scene: Scene, image: EncodedImage, targets: Targets,
              semantic: np.ndarray | None = None) -> bytes:
    """A serialized tf.train.Example for one scene (schema in ``sln_jax.records``).

    Written by ``sln_jax.tfrecord`` (no TensorFlow import), byte-identical to
    TensorFlow's deterministic serialization, so reruns and any worker count write
    identical shards.

    Args:
      scene: decoded scene (N instances).
      image: the image bytes to store.
      targets: its layering targets (crops P x P).
      semantic: optional uint8 [H, W] class ids of its semantic map (``sln_jax.semantic``).

    Returns:
      bytes of a tf.train.Example.
    """
    n = scene.num_instances
    p = targets.layer_crops.shape[-1]
    ints, floats, strings = tfrecord.Int64Feature, tfrecord.FloatFeature, tfrecord.BytesFeature
    features = {
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
    }
    if semantic is not None:
        features[SEMANTIC_KEY] = strings([encode_png(semantic)])
    return tfrecord.example(features)
