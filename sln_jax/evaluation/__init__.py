"""Amodal instance segmentation metrics in NumPy (see ``metrics`` for what is measured).

* ``ground_truth``: GT files (COCO / D2SA-style, COCOA) -> checked per-image arrays;
* ``results``: results JSON (or in-process ``Detections``) -> per-image detections;
* ``metrics``: COCO matching (equal to pycocotools), occlusion and depth-order metrics,
  ``evaluate`` (files in, flat metrics out), ``format_table``, ``write_metrics``;
* ``evaluator``: ``Evaluator`` (``add(image_id, detections)``, ``gather()``,
  ``compute()``), used by training and inference.

The command line is ``python -m sln_jax.evaluate``.
"""

from sln_jax.evaluation.evaluator import Evaluator
from sln_jax.evaluation.ground_truth import load_json
from sln_jax.evaluation.metrics import (AREA_RANGES, IOU_THRESHOLDS, MAX_DETS, OCCLUDED_RATE,
                                        OCCLUSION_BINS, RECALL_THRESHOLDS, compute_metrics,
                                        evaluate, format_table, write_metrics)

__all__ = ["Evaluator", "evaluate", "compute_metrics", "format_table", "write_metrics",
           "load_json", "IOU_THRESHOLDS", "RECALL_THRESHOLDS", "MAX_DETS", "AREA_RANGES",
           "OCCLUSION_BINS", "OCCLUDED_RATE"]
