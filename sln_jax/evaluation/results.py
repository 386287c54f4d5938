"""Detections as the metrics read them: ``ImageDets`` per GT image, from a results JSON
(``load_results``, validated against the GT) or from in-process ``Detections``
(``from_detections``, no JSON round trip).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np
from pycocotools import mask as mask_utils

from sln_jax import depth_order
from sln_jax.detections import Detections
from sln_jax.evaluation.ground_truth import (ImageGT, check_compressed_rles,
                                             occlusion_from_areas, to_rle)

__all__ = ["ImageDets", "load_results", "from_detections"]


@dataclasses.dataclass
class ImageDets:
    """Detections of one image, in results-file order; arrays are per detection [D]."""
    scores: np.ndarray  # float64
    categories: np.ndarray  # int64
    amodal: list
    visible: list | None
    area: np.ndarray  # float64, amodal evaluation area (loadRes rule)
    visible_area: np.ndarray  # float64, modal evaluation area
    occlusion: np.ndarray  # float64, NaN when unknown
    depth_order: list  # dict | None per detection



def load_results(results: list, images: list[ImageGT], name: str) -> list[ImageDets]:
    """Per-image detections (same order as ``images``), validated against the GT."""
    if not isinstance(results, list):
        raise ValueError(f"{name}: results must be a JSON list of detections")
    index = {img.image_id: k for k, img in enumerate(images)}
    sizes = {img.image_id: [img.height, img.width] for img in images}
    per_image: list[list[int]] = [[] for _ in images]
    uses_bbox = bool(results) and isinstance(results[0], dict) and bool(results[0].get("bbox"))
    has_visible = all(isinstance(r, dict) and r.get("visible_mask") is not None
                      for r in results)
    labels = ("segmentation", "visible_mask") if has_visible else ("segmentation",)

    def where(k: int) -> str:
        r = results[k]
        return f"{name}: result #{k} (image_id {r.get('image_id')})"

    rles, owners, converted = [], [], []
    for k, r in enumerate(results):
        if not isinstance(r, dict):
            raise ValueError(f"{name}: result #{k} is not a JSON object")
        image_id = r.get("image_id")
        if image_id not in index:
            raise ValueError(f"{where(k)}: image_id not in the GT file")
        score = r.get("score")
        if (not isinstance(score, (int, float)) or isinstance(score, bool)
                or not math.isfinite(score) or score < 0):
            raise ValueError(f"{where(k)}: score {score!r} must be a finite number >= 0")
        if uses_bbox and (not isinstance(r.get("bbox"), (list, tuple)) or len(r["bbox"]) != 4):
            raise ValueError(f"{where(k)}: 'bbox' must be [x, y, w, h] (the first result has one)")
        entry = dict(r)
        for label in labels:
            segm = r.get(label)
            # Fast path: compressed RLE of the right size (checked in bulk below).
            if not (isinstance(segm, dict) and isinstance(segm.get("counts"), str)
                    and segm.get("size") == sizes[image_id]):
                if segm is None:
                    raise ValueError(f"{where(k)}: no '{label}'")
                h, w = sizes[image_id]
                segm = entry[label] = to_rle(segm, h, w, f"{where(k)} {label}")
            if isinstance(segm["counts"], (str, bytes)):
                rles.append(segm)
                owners.append((k, label))
        converted.append(entry)
        per_image[index[image_id]].append(k)
    check_compressed_rles(rles, lambda i: f"{where(owners[i][0])} {owners[i][1]}")
    out = []
    for members in per_image:
        rs = [converted[k] for k in members]
        amodal = [r["segmentation"] for r in rs]
        visible = [r["visible_mask"] for r in rs] if has_visible else None
        amodal_area = mask_utils.area(amodal).astype(np.float64) if rs else np.zeros(0)
        visible_area = (mask_utils.area(visible).astype(np.float64) if rs and has_visible
                        else np.zeros(len(rs)))
        if uses_bbox:
            box_area = np.array([float(r["bbox"][2]) * float(r["bbox"][3]) for r in rs],
                                np.float64)
        occlusion = np.array([r["occlude_rate"] if r.get("occlude_rate") is not None
                              else np.nan for r in rs], np.float64)
        if has_visible:
            occlusion = np.where(np.isnan(occlusion),
                                 occlusion_from_areas(visible_area, amodal_area), occlusion)
        out.append(ImageDets(
            scores=np.array([r["score"] for r in rs], np.float64),
            categories=np.array([r.get("category_id", 1) for r in rs], np.int64),
            amodal=amodal, visible=visible,
            area=box_area if uses_bbox else amodal_area,
            visible_area=box_area if uses_bbox else visible_area,
            occlusion=occlusion,
            depth_order=[r.get("depth_order") for r in rs]))
    return out


def from_detections(detections: Mapping[int, Detections], images: list[ImageGT]
                    ) -> list[ImageDets]:
    """Per-image detections (same order as ``images``) from in-process ``Detections``.

    Equal to ``load_results`` of their ``to_results`` entries: every detection has a
    ``bbox``, so its box area is its evaluation area (pycocotools' ``loadRes`` rule), and a
    visible mask and an occlusion rate.

    Args:
      detections: {image id: Detections}; images of the GT without an entry have none.
      images: the ground truth (``ground_truth.load``).
    """
    out = []
    for img in images:
        det = detections.get(img.image_id)
        n = 0 if det is None else len(det)
        if not n:
            out.append(ImageDets(
                scores=np.zeros(0), categories=np.zeros(0, np.int64), amodal=[], visible=[],
                area=np.zeros(0), visible_area=np.zeros(0), occlusion=np.zeros(0),
                depth_order=[]))
            continue
        size = [img.height, img.width]
        box_area = np.array([float(w) * float(h) for _, _, w, h in det.boxes], np.float64)
        out.append(ImageDets(
            scores=np.asarray(det.scores, np.float64),
            categories=np.asarray(det.classes, np.int64),
            amodal=[{"size": size, "counts": c} for c in det.amodal],
            visible=[{"size": size, "counts": c} for c in det.visible],
            area=box_area, visible_area=box_area,
            occlusion=np.asarray(det.occlusion, np.float64),
            depth_order=depth_order.to_relations(det.order)))
    return out
