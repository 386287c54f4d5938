"""``Detections``: one image's detections as arrays, from post-processing to the JSON edge.

Training and inference turn the model's fixed-size outputs into instances
(``sln_jax.postprocess.to_instances``: full-size masks for pictures and layer maps), keep
them as ``Detections`` (compressed RLE masks, an int8 [N, N] depth order) for the
evaluator (``sln_jax.evaluation.Evaluator``), and write them as COCO results entries only
at the edge (``to_results``: ``results.json``, ``results_val.json``, the multi-host gather).

Ground floor: NumPy only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from sln_jax import depth_order, rle

__all__ = ["Detections"]


@dataclasses.dataclass(frozen=True)
class Detections:
    """N detections of one image of size (height, width), in detection order.

    Attributes:
      height, width: the image's size in pixels.
      boxes: float64 [N, 4] (x, y, w, h) in the image's pixels (the results' ``bbox``).
      scores: float64 [N].
      classes: int64 [N] category ids.
      amodal: [N] compressed COCO RLE counts (bytes) of the amodal masks.
      visible: [N] the same for the visible masks.
      occlusion: float64 [N] occlusion rates 1 - visible / amodal area.
      order: int8 [N, N] depth order (``sln_jax.depth_order``): +1 where i is in front of j.
    """

    height: int
    width: int
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    amodal: list[bytes]
    visible: list[bytes]
    occlusion: np.ndarray
    order: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def from_instances(cls, instances: Sequence[Mapping[str, Any]], height: int,
                       width: int) -> "Detections":
        """From ``postprocess.to_instances`` dicts (``box``, ``score``, ``category_id``,
        ``amodal`` / ``visible`` bool [H, W], ``occlude_rate``, ``depth_order``)."""
        n = len(instances)
        return cls(
            height=int(height), width=int(width),
            boxes=np.array([[float(v) for v in d["box"]] for d in instances],
                           np.float64).reshape(n, 4),
            scores=np.array([float(d["score"]) for d in instances], np.float64),
            classes=np.array([int(d["category_id"]) for d in instances], np.int64),
            amodal=[rle.encode(np.asarray(d["amodal"], bool)) for d in instances],
            visible=[rle.encode(np.asarray(d["visible"], bool)) for d in instances],
            occlusion=np.array([float(d["occlude_rate"]) for d in instances], np.float64),
            order=depth_order.from_relations([d.get("depth_order") for d in instances], n))

    def to_results(self, image_id: int) -> list[dict]:
        """COCO results entries (ARCHITECTURE.md's "Results JSON"), one per detection.

        ``image_id``, ``category_id``, ``score``, ``bbox`` [x, y, w, h], ``segmentation``
        (amodal, RLE), ``visible_mask`` (RLE), ``occlude_rate`` and ``depth_order``
        {detection index in the image: +1 / -1}.
        """
        size = [self.height, self.width]
        relations = depth_order.to_relations(self.order)
        return [{
            "image_id": int(image_id),
            "category_id": int(self.classes[i]),
            "score": float(self.scores[i]),
            "bbox": [float(v) for v in self.boxes[i]],
            "segmentation": {"size": list(size), "counts": self.amodal[i].decode("ascii")},
            "visible_mask": {"size": list(size), "counts": self.visible[i].decode("ascii")},
            "occlude_rate": float(self.occlusion[i]),
            "depth_order": relations[i],
        } for i in range(len(self))]

    @classmethod
    def from_results(cls, entries: Sequence[Mapping[str, Any]], height: int,
                     width: int) -> "Detections":
        """The inverse of ``to_results`` (entries of one image, e.g. after a gather)."""
        n = len(entries)

        def counts(segmentation) -> bytes:
            value = segmentation["counts"]
            return value.encode("ascii") if isinstance(value, str) else bytes(value)

        return cls(
            height=int(height), width=int(width),
            boxes=np.array([[float(v) for v in e["bbox"]] for e in entries],
                           np.float64).reshape(n, 4),
            scores=np.array([float(e["score"]) for e in entries], np.float64),
            classes=np.array([int(e["category_id"]) for e in entries], np.int64),
            amodal=[counts(e["segmentation"]) for e in entries],
            visible=[counts(e["visible_mask"]) for e in entries],
            occlusion=np.array([float(e["occlude_rate"]) for e in entries], np.float64),
            order=depth_order.from_relations([e.get("depth_order") for e in entries], n))
