"""Amodal instance segmentation metrics in NumPy.

What is measured (see ``docs/SLN.md`` section 5):

* COCO-style mask AP / AR, amodal (result ``segmentation`` vs GT ``segmentation``) and
  modal (result ``visible_mask`` vs GT ``visible_mask``). The numbers equal pycocotools'
  ``COCOeval(iouType='segm')`` on the same input: the same greedy matching (detections by
  score, stable sort; a detection takes the highest-IoU free GT, last one on ties, regular
  GT before ignored GT; crowd GT stay free and use the detection area as the union), the
  same area ranges on the GT ``area`` field, maxDets 1/10/100 and 101-point interpolated
  precision, -1 where a setting has no GT. IoUs come from ``pycocotools.mask.iou`` (C),
  computed once per image and category and shared by every area range / occlusion bin;
  the matching runs vectorized over all images, settings and IoU thresholds at once.
* Occlusion-rate bins none [0, 1e-5], partial [1e-5, 0.25], heavy [0.25, 1] (ends
  inclusive; GT outside the bin is ignored, unmatched detections stay false positives),
  and for ``fmt='cocoa'`` the class-agnostic amodalAPI protocol with things / stuff filters.
* Occlusion classification and depth order on the pairs matched at IoU 0.5; order
  accuracy both over every matched pair (unordered ones wrong) and over the ordered ones.

Deliberate differences from pycocotools, both where pycocotools is wrong or silent:
a GT annotation with id 0 counts as matched (pycocotools treats it as unmatched), and
empty results give zeros instead of an exception. Like pycocotools' ``loadRes``, the
detection area used for the area ranges is ``bbox`` width x height when the first result
has a ``bbox`` (else the mask area).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence

import numpy as np
from pycocotools import mask as mask_utils

from sln_jax import atomic, depth_order
from sln_jax.evaluation import ground_truth
from sln_jax.evaluation.ground_truth import ImageGT
from sln_jax.evaluation.results import ImageDets, load_results

__all__ = [
    "IOU_THRESHOLDS",
    "RECALL_THRESHOLDS",
    "MAX_DETS",
    "AREA_RANGES",
    "OCCLUSION_BINS",
    "OCCLUDED_RATE",
    "evaluate",
    "compute_metrics",
    "format_table",
    "write_metrics",
]

# Exactly as pycocotools builds them (np.arange would drift in the last digit).
IOU_THRESHOLDS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)
MAX_DETS = (1, 10, 100)
AREA_RANGES = {
    "all": (0.0 ** 2, 1e5 ** 2),
    "small": (0.0 ** 2, 32.0 ** 2),
    "medium": (32.0 ** 2, 96.0 ** 2),
    "large": (96.0 ** 2, 1e5 ** 2),
}
OCCLUSION_BINS = {
    "all": (-math.inf, math.inf),
    "none": (0.0, 1e-5),
    "partial": (1e-5, 0.25),
    "heavy": (0.25, 1.0),
}
# An instance is "occluded" above the upper edge of the "none" bin.
OCCLUDED_RATE = OCCLUSION_BINS["none"][1]
STUFF_FILTERS = ("both", "things", "stuff")
# The summary stats of COCOeval (segm), in its order: (name, is_ap, iou, area, maxDets).
_COCO_STATS = (
    ("AP", True, None, "all", 100),
    ("AP50", True, .5, "all", 100),
    ("AP75", True, .75, "all", 100),
    ("APs", True, None, "small", 100),
    ("APm", True, None, "medium", 100),
    ("APl", True, None, "large", 100),
    ("AR1", False, None, "all", 1),
    ("AR10", False, None, "all", 10),
    ("AR100", False, None, "all", 100),
    ("ARs", False, None, "small", 100),
    ("ARm", False, None, "medium", 100),
    ("ARl", False, None, "large", 100),
)
# The stats of an occlusion bin / stuff filter row (amodalAPI's main row).
_BIN_STATS = ("AP", "AP50", "AP75", "AR1", "AR10", "AR100")
# Keep one matching chunk's [groups, settings, thresholds, GT] arrays near this size.
_CHUNK_ELEMENTS = 1 << 22


# ---------------------------------------------------------------------------- matching

@dataclasses.dataclass
class _Setting:
    """One evaluation setting: which GT count (others ignored) and which detection areas."""
    area: tuple[float, float]
    occlusion: tuple[float, float]
    stuff: str  # one of STUFF_FILTERS


@dataclasses.dataclass
class _Group:
    """One (category, image) pair with its detections sorted by score, top maxDets[-1]."""
    category_index: int
    image_index: int
    gt_index: np.ndarray  # int64 [G] indices into the image's GT
    det_index: np.ndarray  # int64 [D] indices into the image's detections, sorted
    ious: np.ndarray  # float64 [D, G]
    gt_ignore: np.ndarray  # bool [S, G]
    det_outside: np.ndarray  # bool [S, D] detection area outside the setting's range
    matched: np.ndarray | None = None  # int64 [S, T, D] GT position in the group or -1
    ignored: np.ndarray | None = None  # bool [S, T, D] COCOeval's dtIgnore


def _greedy_match(ious: np.ndarray, crowd: np.ndarray, gt_ignore: np.ndarray,
                  det_outside: np.ndarray, num_dets: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval's greedy matching for many groups, settings and IoU thresholds at once.

    A detection (in score order) takes, among the GT it overlaps by at least the
    threshold and that are still free (crowds always are), the highest-IoU regular GT,
    else the highest-IoU ignored GT, the last one in GT order on ties.

    Args:
      ious: float64 [N, D, G], detections sorted by score; padding rows / columns 0.
      crowd: bool [N, G] crowd GT (can absorb several detections).
      gt_ignore: bool [N, S, G] GT ignored in each setting.
      det_outside: bool [N, S, D] detection area outside the setting's area range.
      num_dets: int [N] real detections per group (the rest is padding).

    Returns:
      matched: int64 [N, S, T, D], the GT position each detection matches, or -1.
      ignored: bool [N, S, T, D], COCOeval's dtIgnore (matched an ignored GT, or
        unmatched with its area outside the range).
    """
    n, d_max, g_max = ious.shape
    s = gt_ignore.shape[1]
    t = len(IOU_THRESHOLDS)
    if g_max == 0:
        ignored = np.broadcast_to(det_outside[:, :, None, :], (n, s, t, d_max)).copy()
        return np.full((n, s, t, d_max), -1, np.int64), ignored
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[None, None, :, None]
    # GT axis reversed so that argmax (first maximum) finds the last GT on ties.
    ious = np.ascontiguousarray(ious[:, :, ::-1])
    reusable = crowd[:, None, None, ::-1]
    gt_ignore = np.ascontiguousarray(gt_ignore[:, :, ::-1])
    # Ignored GT rank below every regular one: IoUs >= 0.5 scaled by 1/4 (exact in
    # binary floating point) fall in [0.125, 0.25]; non-candidates are -1.
    scale = np.where(gt_ignore, 0.25, 1.0)[:, :, None, :]
    free = np.ones((n, s, t, g_max), bool)
    matched = np.full((n, s, t, d_max), -1, np.int64)
    ignored = np.broadcast_to(det_outside[:, :, None, :], (n, s, t, d_max)).copy()
    positions = np.arange(g_max)
    # Groups sorted by detection count, most first: step d only touches those with > d.
    order = np.argsort(-num_dets, kind="stable")
    ious, reusable, gt_ignore, scale = ious[order], reusable[order], gt_ignore[order], scale[order]
    active = (num_dets[:, None] > np.arange(d_max)).sum(axis=0)
    for d in range(d_max):
        a = int(active[d])
        iou = ious[:a, None, None, d, :]
        key = np.where((iou >= thresholds) & (free[:a] | reusable[:a]), iou * scale[:a], -1.0)
        pick = np.argmax(key, axis=-1)
        found = np.take_along_axis(key, pick[..., None], -1)[..., 0] >= 0
        pick = np.where(found, pick, -1)
        free[:a] &= positions != pick[..., None]
        rows = order[:a]
        matched[rows, :, :, d] = np.where(found, g_max - 1 - pick, -1)
        ignored[rows, :, :, d] = np.where(
            found, np.take_along_axis(gt_ignore[:a], np.maximum(pick, 0), axis=-1),
            ignored[rows, :, :, d])
    return matched, ignored


def _match_groups(groups: list[_Group], images: list[ImageGT]) -> None:
    """Fill ``matched`` and ``ignored`` of every group, in padded chunks of similar size."""
    if not groups:
        return
    num_settings = groups[0].gt_ignore.shape[0]
    by_size = sorted(range(len(groups)),
                     key=lambda k: (groups[k].ious.shape[1], groups[k].ious.shape[0]))
    start = 0
    while start < len(by_size):
        stop = start + 1
        d_max = groups[by_size[start]].ious.shape[0]
        while stop < len(by_size):
            d_max = max(d_max, groups[by_size[stop]].ious.shape[0])
            g_max = groups[by_size[stop]].ious.shape[1]
            per_group = num_settings * len(IOU_THRESHOLDS) * (max(g_max, 1) + d_max)
            if (stop + 1 - start) * per_group > _CHUNK_ELEMENTS:
                break
            stop += 1
        chunk = [groups[k] for k in by_size[start:stop]]
        n = len(chunk)
        d_max = max(g.ious.shape[0] for g in chunk)
        g_max = max(g.ious.shape[1] for g in chunk)
        ious = np.zeros((n, d_max, g_max))
        crowd = np.zeros((n, g_max), bool)
        gt_ignore = np.zeros((n, num_settings, g_max), bool)
        det_outside = np.zeros((n, num_settings, d_max), bool)
        for i, g in enumerate(chunk):
            d, gg = g.ious.shape
            ious[i, :d, :gg] = g.ious
            crowd[i, :gg] = images[g.image_index].crowd[g.gt_index]
            gt_ignore[i, :, :gg] = g.gt_ignore
            det_outside[i, :, :d] = g.det_outside
        # Padding never matches: its IoU 0 is below every threshold.
        matched, ignored = _greedy_match(ious, crowd, gt_ignore, det_outside,
                                         np.array([g.ious.shape[0] for g in chunk]))
        for i, g in enumerate(chunk):
            d = g.ious.shape[0]
            g.matched = matched[i, :, :, :d]
            g.ignored = ignored[i, :, :, :d]
        start = stop


# -------------------------------------------------------------------------- accumulate

def _accumulate(groups: list[_Group], dets: list[ImageDets], num_categories: int,
                num_settings: int) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval.accumulate: precision float64 [T, R, K, S, M] and recall [T, K, S, M]."""
    t_n, r_n, m_n = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(MAX_DETS)
    precision = -np.ones((t_n, r_n, num_categories, num_settings, m_n))
    recall = -np.ones((t_n, num_categories, num_settings, m_n))
    for k in range(num_categories):
        members = [g for g in groups if g.category_index == k]
        if not members:
            continue
        scores = np.concatenate([dets[g.image_index].scores[g.det_index] for g in members])
        rank = np.concatenate([np.arange(len(g.det_index)) for g in members])
        matched = np.concatenate([g.matched for g in members], axis=-1) >= 0
        ignore = np.concatenate([g.ignored for g in members], axis=-1)
        num_positive = sum((~g.gt_ignore).sum(axis=1) for g in members)
        tps = matched & ~ignore
        fps = ~matched & ~ignore
        for m, max_det in enumerate(MAX_DETS):
            keep = rank < max_det
            order = np.argsort(-scores[keep], kind="mergesort")
            tp_sum = np.cumsum(tps[..., keep][..., order], axis=-1).astype(float)
            fp_sum = np.cumsum(fps[..., keep][..., order], axis=-1).astype(float)
            nd = tp_sum.shape[-1]
            for s in range(num_settings):
                if num_positive[s] == 0:
                    continue
                rc = tp_sum[s] / num_positive[s]
                pr = tp_sum[s] / (fp_sum[s] + tp_sum[s] + np.spacing(1))
                recall[:, k, s, m] = rc[:, -1] if nd else 0
                envelope = np.maximum.accumulate(pr[:, ::-1], axis=-1)[:, ::-1]
                for t in range(t_n):
                    inds = np.searchsorted(rc[t], RECALL_THRESHOLDS, side="left")
                    inside = inds < nd
                    q = np.zeros(r_n)
                    q[inside] = envelope[t, inds[inside]]
                    precision[t, :, k, s, m] = q
    return precision, recall


def _summarize(precision: np.ndarray, recall: np.ndarray, is_ap: bool, iou: float | None,
               setting: int, max_det: int) -> float:
    """COCOeval._summarize: the mean over valid (> -1) entries, -1 when there are none."""
    m = MAX_DETS.index(max_det)
    if is_ap:
        s = precision[..., setting, m]
    else:
        s = recall[..., setting, m]
    if iou is not None:
        s = s[np.flatnonzero(np.isclose(IOU_THRESHOLDS, iou))]
    valid = s[s > -1]
    return float(np.mean(valid)) if valid.size else -1.0


# -------------------------------------------------------------------------- one variant

@dataclasses.dataclass
class _VariantResult:
    precision: np.ndarray
    recall: np.ndarray
    groups: list[_Group]
    settings: list[_Setting]


def _settings(fmt: str, variant: str) -> list[_Setting]:
    """Setting 0 is the main one (all areas, all occlusion, things and stuff)."""
    out = [_Setting(AREA_RANGES[a], OCCLUSION_BINS["all"], "both") for a in AREA_RANGES]
    if variant == "amodal":
        filters = STUFF_FILTERS if fmt == "cocoa" else ("both",)
        for f in filters:
            for b in OCCLUSION_BINS:
                if f == "both" and b == "all":
                    continue
                out.append(_Setting(AREA_RANGES["all"], OCCLUSION_BINS[b], f))
    return out


def _evaluate_variant(images: list[ImageGT], dets: list[ImageDets], categories: list[int],
                      variant: str, fmt: str) -> _VariantResult:
    """Match and accumulate one mask type (``'amodal'`` or ``'modal'``)."""
    settings = _settings(fmt, variant)
    area_lo = np.array([s.area[0] for s in settings])[:, None]
    area_hi = np.array([s.area[1] for s in settings])[:, None]
    occ_lo = np.array([s.occlusion[0] for s in settings])[:, None]
    occ_hi = np.array([s.occlusion[1] for s in settings])[:, None]
    wants_stuff = np.array([s.stuff == "stuff" for s in settings])[:, None]
    filtered = np.array([s.stuff != "both" for s in settings])[:, None]
    # Ignore flags for every GT and detection at once, then split per image.
    modal = variant == "modal"
    gt_area = np.concatenate([img.visible_area if modal else img.area for img in images])
    occ = np.concatenate([img.occlusion for img in images])
    stuff = np.concatenate([img.stuff for img in images])
    crowd = np.concatenate([img.crowd for img in images])
    gt_split = np.cumsum([len(img.ann_ids) for img in images])[:-1]
    gt_ignore_all = np.split(
        crowd[None, :] | (gt_area < area_lo) | (gt_area > area_hi) | (occ < occ_lo)
        | (occ > occ_hi) | (filtered & (stuff[None, :] != wants_stuff)), gt_split, axis=1)
    det_area = np.concatenate([d.visible_area if modal else d.area for d in dets])
    det_split = np.cumsum([len(d.scores) for d in dets])[:-1]
    det_outside_all = np.split((det_area < area_lo) | (det_area > area_hi), det_split, axis=1)
    category_index = {c: k for k, c in enumerate(categories)}
    groups = []
    for i, (img, det) in enumerate(zip(images, dets)):
        gt_masks = img.visible if modal else img.amodal
        det_masks = det.visible if modal else det.amodal
        if fmt == "cocoa":  # class-agnostic
            members = [(0, np.arange(len(img.ann_ids)), np.arange(len(det.scores)))]
        else:
            present = sorted(set(img.categories.tolist()) | set(det.categories.tolist()))
            members = [(category_index[c], np.flatnonzero(img.categories == c),
                        np.flatnonzero(det.categories == c))
                       for c in present if c in category_index]
        for k, gt_index, det_index in members:
            if not len(gt_index) and not len(det_index):
                continue
            det_index = det_index[np.argsort(-det.scores[det_index], kind="mergesort")]
            det_index = det_index[:MAX_DETS[-1]]
            if len(gt_index) and len(det_index):
                ious = np.asarray(mask_utils.iou(
                    [det_masks[j] for j in det_index], [gt_masks[j] for j in gt_index],
                    img.crowd[gt_index].astype(np.uint8).tolist()), np.float64)
            else:
                ious = np.zeros((len(det_index), len(gt_index)))
            groups.append(_Group(k, i, gt_index, det_index, ious,
                                 gt_ignore_all[i][:, gt_index],
                                 det_outside_all[i][:, det_index]))
    _match_groups(groups, images)
    precision, recall = _accumulate(groups, dets, len(categories), len(settings))
    return _VariantResult(precision, recall, groups, settings)


def _variant_metrics(result: _VariantResult, variant: str, fmt: str) -> dict[str, float]:
    """Flat ``variant/stat`` names for every setting of a variant."""
    p, r = result.precision, result.recall
    metrics = {}
    for name, is_ap, iou, area, max_det in _COCO_STATS:
        setting = list(AREA_RANGES).index(area)
        metrics[f"{variant}/{name}"] = _summarize(p, r, is_ap, iou, setting, max_det)
    for s, setting in enumerate(result.settings):
        if setting.area != AREA_RANGES["all"] or s == 0:
            continue
        occ = next(b for b, v in OCCLUSION_BINS.items() if v == setting.occlusion)
        prefix = f"{variant}/" if setting.stuff == "both" else f"{variant}/{setting.stuff}/"
        suffix = "" if occ == "all" else f"_{occ}"
        for name in _BIN_STATS:
            is_ap = name.startswith("AP")
            iou = {"AP50": .5, "AP75": .75}.get(name)
            max_det = 100 if is_ap else int(name[2:])
            metrics[f"{prefix}{name}{suffix}"] = _summarize(p, r, is_ap, iou, s, max_det)
    return metrics


# ------------------------------------------------------------------ occlusion and order

def _matched_pairs(result: _VariantResult, images: list[ImageGT]) -> list[dict[int, int]]:
    """Per image {GT index: detection index} matched at IoU 0.5, main setting, maxDets 100."""
    pairs: list[dict[int, int]] = [{} for _ in images]
    for g in result.groups:
        hits = g.matched[0, 0]
        for d in np.flatnonzero(hits >= 0):
            gt = int(g.gt_index[hits[d]])
            if not g.gt_ignore[0, hits[d]]:
                pairs[g.image_index][gt] = int(g.det_index[d])
    return pairs


def _occlusion_metrics(pairs, images, dets) -> dict[str, float]:
    """Accuracy / F1 of occluded vs not (rate > OCCLUDED_RATE) and the rate's MAE."""
    gt_rate, dt_rate = [], []
    for match, img, det in zip(pairs, images, dets):
        for gt, d in match.items():
            gt_rate.append(img.occlusion[gt])
            dt_rate.append(det.occlusion[d])
    has_gt = any(len(img.ann_ids) and not img.crowd.all() for img in images)
    gt_rate, dt_rate = np.array(gt_rate, np.float64), np.array(dt_rate, np.float64)
    known = ~np.isnan(dt_rate)
    if not has_gt or (len(dt_rate) and not known.any()):
        return {"occlusion/accuracy": -1.0, "occlusion/f1": -1.0, "occlusion/rate_mae": -1.0}
    gt_rate, dt_rate = gt_rate[known], dt_rate[known]
    if not len(gt_rate):
        return {"occlusion/accuracy": 0.0, "occlusion/f1": 0.0, "occlusion/rate_mae": -1.0}
    gt_occ, dt_occ = gt_rate > OCCLUDED_RATE, dt_rate > OCCLUDED_RATE
    tp = float(np.sum(gt_occ & dt_occ))
    wrong = float(np.sum(gt_occ != dt_occ))
    return {
        "occlusion/accuracy": float(np.mean(gt_occ == dt_occ)),
        "occlusion/f1": 2 * tp / (2 * tp + wrong) if 2 * tp + wrong else -1.0,
        "occlusion/rate_mae": float(np.mean(np.abs(gt_rate - dt_rate))),
    }


def _predicted_order(det: ImageDets, members: list[int]) -> dict[tuple[int, int], int]:
    """{(a, b): +1 if detection a is in front of b, -1 behind, 0 unknown} for a != b in members.

    From the results' ``depth_order`` when every member has one; otherwise from the
    predicted visible and amodal masks (``sln_jax.depth_order.from_masks``).
    """
    if all(det.depth_order[a] is not None for a in members):
        full = depth_order.from_relations(det.depth_order)
        pairwise = full[np.ix_(members, members)]
    elif det.visible is None or len(members) < 2:
        pairwise = np.zeros((len(members), len(members)), np.int8)
    else:
        amodal = np.moveaxis(mask_utils.decode([det.amodal[a] for a in members]), -1, 0)
        visible = np.moveaxis(mask_utils.decode([det.visible[a] for a in members]), -1, 0)
        pairwise = depth_order.from_masks(amodal.astype(bool), visible.astype(bool))
    return {(a, b): int(pairwise[i, j]) for i, a in enumerate(members)
            for j, b in enumerate(members) if a != b}


def _overlaps(rles: list) -> np.ndarray:
    """bool [N, N]: whether two masks share a pixel (IoU > 0)."""
    if len(rles) < 2:
        return np.zeros((len(rles), len(rles)), bool)
    return np.asarray(mask_utils.iou(rles, rles, [0] * len(rles))) > 0


def _order_metrics(pairs, images, dets) -> dict[str, float]:
    """Pairwise depth-order accuracy over matched overlapping GT pairs, and order recall.

    ``order/accuracy`` counts a matched pair the prediction leaves unordered (a tie, or
    detections that do not overlap) as wrong; ``order/accuracy_decided`` is the accuracy
    over the matched pairs that do get a predicted order (-1 when none does).
    """
    correct = total = decided = gt_pairs = recalled = constraints_total = 0
    for match, img, det in zip(pairs, images, dets):
        n = len(img.ann_ids)
        if n < 2:
            continue
        usable = ~img.crowd & ~np.isnan(img.order)
        if not usable.any() and (img.constraints is None or not len(img.constraints)):
            continue
        gt_overlap = _overlaps(img.amodal)
        ordered = (gt_overlap & usable[:, None] & usable[None, :]
                   & (img.order[:, None] != img.order[None, :]))
        gt_pairs += int(np.triu(ordered, 1).sum())
        if img.constraints is not None:
            constraints = img.constraints
        else:
            front, back = np.nonzero(ordered & (img.order[:, None] < img.order[None, :]))
            constraints = np.stack([front, back], axis=1)
        members = sorted(set(match.values()))
        rel = _predicted_order(det, members) if len(members) >= 2 else {}
        # (a) accuracy over overlapping GT pairs that are both matched
        matched_gt = sorted(match)
        for x, a in enumerate(matched_gt):
            for b in matched_gt[x + 1:]:
                if not ordered[a, b]:
                    continue
                truth = 1 if img.order[a] < img.order[b] else -1
                predicted = rel.get((match[a], match[b]), 0)
                total += 1
                decided += predicted != 0
                correct += predicted == truth
        # (b) recall over GT constraints; a constraint needs both regions matched and
        # overlapping detections
        constraints_total += len(constraints)
        if len(constraints) and len(members) >= 2:
            position = {d: k for k, d in enumerate(members)}
            dt_overlap = _overlaps([det.amodal[d] for d in members])
            for front, back in constraints:
                if front in match and back in match:
                    da, db = match[front], match[back]
                    if dt_overlap[position[da], position[db]] and rel.get((da, db), 0) == 1:
                        recalled += 1
    return {
        # No matched pair while GT pairs exist (e.g. empty results) scores 0, not -1.
        "order/accuracy": correct / total if total else (0.0 if gt_pairs else -1.0),
        "order/accuracy_decided": correct / decided if decided else -1.0,
        "order/recall": recalled / constraints_total if constraints_total else -1.0,
        "order/pairs": float(total),
    }


# ------------------------------------------------------------------------------ public

def evaluate(gt: str | os.PathLike | dict, results: str | os.PathLike | list,
             fmt: str = "coco", iou_types: Sequence[str] = ("amodal", "modal")
             ) -> dict[str, float]:
    """Every metric of a results file against a GT file.

    Args:
      gt: GT JSON (path or parsed): ``fmt='coco'`` for COCO / D2SA-style files (the
        synthetic dataset's), ``fmt='cocoa'`` for the COCOA per-image format.
      results: COCO results JSON (path or parsed list): per detection ``image_id``,
        ``category_id``, ``score``, ``segmentation`` (amodal RLE), optional ``bbox``,
        ``visible_mask``, ``occlude_rate`` and ``depth_order``.
      fmt: ``'coco'`` (per category) or ``'cocoa'`` (class-agnostic amodalAPI protocol).
      iou_types: which of ``'amodal'`` and ``'modal'`` to compute; modal needs a
        ``visible_mask`` on every result.

    Returns:
      Flat metrics {name: float}: ``amodal/AP`` ... ``amodal/ARl`` (COCOeval's 12 stats),
      the same under ``modal/``, ``amodal/{AP,AP50,AP75,AR1,AR10,AR100}_{none,partial,heavy}``,
      for COCOA also ``amodal/{things,stuff}/...``, ``occlusion/accuracy``,
      ``occlusion/f1``, ``occlusion/rate_mae``, ``order/accuracy`` (unordered matched
      pairs count as wrong), ``order/accuracy_decided`` (over the matched pairs the
      prediction orders), ``order/recall`` and ``order/pairs``. Values in [0, 1] (pairs: a
      count); -1 where there is no GT (and ``order/accuracy_decided`` when no pair is
      ordered).

    Raises:
      ValueError: naming the file and the image / annotation / result that is wrong.
    """
    if fmt not in ("coco", "cocoa"):
        raise ValueError(f"fmt must be 'coco' or 'cocoa', got {fmt!r}")
    unknown = set(iou_types) - {"amodal", "modal"}
    if unknown:
        raise ValueError(f"iou_types must be 'amodal' / 'modal', got {sorted(unknown)}")
    images, categories = ground_truth.load(gt, fmt)
    results_data = ground_truth.load_json(results)
    dets = load_results(results_data, images, ground_truth.source_name(results))
    return compute_metrics(images, categories, dets, fmt, iou_types)


def compute_metrics(images: list[ImageGT], categories: list[int], dets: list[ImageDets],
                    fmt: str = "coco", iou_types: Sequence[str] = ("amodal", "modal")
                    ) -> dict[str, float]:
    """The metrics of ``evaluate`` on loaded ground truth and per-image detections
    (``ground_truth.load``; ``results.load_results`` or ``results.from_detections``)."""
    metrics: dict[str, float] = {}
    amodal = _evaluate_variant(images, dets, categories, "amodal", fmt)
    if "amodal" in iou_types:
        metrics.update(_variant_metrics(amodal, "amodal", fmt))
    if "modal" in iou_types and all(d.visible is not None for d in dets):
        metrics.update(_variant_metrics(
            _evaluate_variant(images, dets, categories, "modal", fmt), "modal", fmt))
    pairs = _matched_pairs(amodal, images)
    metrics.update(_occlusion_metrics(pairs, images, dets))
    metrics.update(_order_metrics(pairs, images, dets))
    return metrics


# Why a depth-order metric is -1 (undefined), printed beside it by format_table.
_UNDEFINED_NOTES = {
    "order/accuracy": "  (-1: no matched pair of overlapping ground-truth instances)",
    "order/accuracy_decided": "  (-1: the prediction orders none of the matched pairs)",
    "order/recall": "  (-1: the ground truth has no depth-order constraints, e.g. no "
                    "COCOA depth_constraint)",
}


def format_table(metrics: dict[str, float]) -> str:
    """A printable summary: COCOeval-style lines per mask type, then the occlusion-bin
    grid (things / stuff rows when present), occlusion classification and depth order."""
    lines = []
    line = " {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} ] = {:0.3f}"
    for variant in ("amodal", "modal"):
        if f"{variant}/AP" not in metrics:
            continue
        lines.append(f"{variant} masks")
        for name, is_ap, iou, area, max_det in _COCO_STATS:
            title = "Average Precision" if is_ap else "Average Recall"
            kind = "(AP)" if is_ap else "(AR)"
            iou_text = "0.50:0.95" if iou is None else f"{iou:0.2f}"
            lines.append(line.format(title, kind, iou_text, area, max_det,
                                     metrics[f"{variant}/{name}"]))
    if "amodal/AP_none" in metrics:
        lines.append("amodal masks by occlusion (area all)")
        lines.append(f" {'filter':<7} {'occlusion':<9} " + " ".join(f"{s:>6}" for s in _BIN_STATS))
        for f in STUFF_FILTERS:
            prefix = "amodal/" if f == "both" else f"amodal/{f}/"
            if f"{prefix}AR100_none" not in metrics:
                continue
            for b in OCCLUSION_BINS:
                suffix = "" if b == "all" else f"_{b}"
                values = [metrics.get(f"{prefix}{s}{suffix}", -1.0) for s in _BIN_STATS]
                lines.append(f" {f:<7} {b:<9} " + " ".join(f"{v:6.3f}" for v in values))
    lines.append("occlusion and depth order (pairs matched at IoU 0.50)")
    for key in ("occlusion/accuracy", "occlusion/f1", "occlusion/rate_mae",
                "order/accuracy", "order/accuracy_decided", "order/recall"):
        if key in metrics:
            note = _UNDEFINED_NOTES.get(key, "") if metrics[key] == -1 else ""
            lines.append(f" {key:<22} = {metrics[key]:0.3f}{note}")
    if "order/pairs" in metrics:
        lines.append(f" {'order/pairs':<22} = {int(metrics['order/pairs'])}")
    return "\n".join(lines)


def write_metrics(path: str | os.PathLike, metrics: dict[str, float]) -> None:
    """Write metrics JSON atomically (sorted keys, indented; ``sln_jax.atomic``)."""
    atomic.write_json(path, metrics, indent=2, sort_keys=True)
