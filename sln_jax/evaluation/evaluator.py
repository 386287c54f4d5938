"""The in-process evaluator: fed one image's ``Detections`` at a time, then ``compute()``.

Training's val pass and inference on an annotated split use it (detectron2's
``DatasetEvaluator`` / scenic's ``add_example`` / ``compute_metrics``):

    evaluator = Evaluator(gt_json, fmt="coco")
    for image_id, detections in ...:
        evaluator.add(image_id, detections)
    evaluator.gather()          # several hosts: every process ends with all detections
    metrics = evaluator.compute()
    atomic.write_json(path, evaluator.results())   # the results-JSON edge

The ground truth is loaded once; detections stay typed arrays (no JSON round trip);
``compute()`` gives exactly ``evaluate(gt_json, evaluator.results())``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from sln_jax.detections import Detections
from sln_jax.evaluation import ground_truth, metrics, results

__all__ = ["Evaluator", "gather_json"]


def gather_json(obj) -> list:
    """Every process's JSON-serialisable ``obj``, in process order (one entry per process)."""
    import jax
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return [obj]
    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([data.size], np.int64)))
    sizes = sizes.reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: data.size] = data
    gathered = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(bytes(gathered[i, : sizes[i]])) for i in range(len(sizes))]


class Evaluator:
    """Every amodal metric of a set of images' detections against a GT file.

    Attributes:
      fmt: 'coco' or 'cocoa' (``evaluation.evaluate``).
      iou_types: the mask types evaluated.
      images: the loaded ground truth, one ``ImageGT`` per GT image.
      categories: the evaluated category ids.
    """

    def __init__(self, gt: str | os.PathLike | dict, fmt: str = "coco",
                 iou_types: Sequence[str] = ("amodal", "modal")):
        unknown = set(iou_types) - {"amodal", "modal"}
        if unknown:
            raise ValueError(f"iou_types must be 'amodal' / 'modal', got {sorted(unknown)}")
        self.fmt = fmt
        self.iou_types = tuple(iou_types)
        self.images, self.categories = ground_truth.load(gt, fmt)
        self._sizes = {img.image_id: (img.height, img.width) for img in self.images}
        self._name = ground_truth.source_name(gt)
        self.reset()

    def reset(self) -> None:
        """Forgets every added detection (the ground truth stays loaded)."""
        self._detections: dict[int, Detections] = {}

    def add(self, image_id: int, detections: Detections) -> None:
        """Records the detections of one image.

        Raises:
          ValueError: naming the image when the GT has no such image, when its size differs
            from the GT's, or when it was added already.
        """
        image_id = int(image_id)
        size = self._sizes.get(image_id)
        if size is None:
            raise ValueError(f"image_id {image_id} is not in the GT file {self._name}")
        if (detections.height, detections.width) != size:
            raise ValueError(f"image_id {image_id}: detections of a {detections.height} x "
                             f"{detections.width} image, the GT says {size[0]} x {size[1]}")
        if image_id in self._detections:
            raise ValueError(f"image_id {image_id}: detections added twice")
        self._detections[image_id] = detections

    def gather(self) -> None:
        """Gives every process the detections of all processes (no-op on one process)."""
        local = {str(i): d.to_results(i) for i, d in self._detections.items()}
        merged: dict[int, Detections] = {}
        for per_process in gather_json(local):
            for image_id, entries in per_process.items():
                image_id = int(image_id)
                if image_id in self._detections:
                    merged[image_id] = self._detections[image_id]
                else:
                    merged[image_id] = Detections.from_results(entries, *self._sizes[image_id])
        self._detections = merged

    def results(self) -> list[dict]:
        """The COCO results entries of every added image, in the order they were added."""
        return [entry for image_id, d in self._detections.items()
                for entry in d.to_results(image_id)]

    def compute(self) -> dict[str, float]:
        """Flat metrics (``evaluation.evaluate``'s names) of the detections added so far."""
        dets = results.from_detections(self._detections, self.images)
        values = metrics.compute_metrics(self.images, self.categories, dets, self.fmt,
                                         self.iou_types)
        return {k: float(v) for k, v in values.items()}
