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
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

__all__ = [
    "IOU_THRESHOLDS",
    "RECALL_THRESHOLDS",
    "MAX_DETS",
    "AREA_RANGES",
    "OCCLUSION_BINS",
    "OCCLUDED_RATE",
    "evaluate",
    "format_table",
    "load_json",
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


# ----------------------------------------------------------------------------- inputs

@dataclasses.dataclass
class _ImageGT:
    """Ground truth of one image; arrays are per instance [G]."""
    image_id: int
    height: int
    width: int
    ann_ids: np.ndarray  # int64
    categories: np.ndarray  # int64
    amodal: list  # COCO RLE dicts
    visible: list
    area: np.ndarray  # float64, the GT ``area`` field (amodal)
    visible_area: np.ndarray  # float64
    crowd: np.ndarray  # bool
    occlusion: np.ndarray  # float64 occlusion rate
    order: np.ndarray  # float64 depth rank, NaN when absent
    stuff: np.ndarray  # bool
    constraints: np.ndarray | None  # int64 [C, 2] (front, back) GT indices; None: derive


@dataclasses.dataclass
class _ImageDets:
    """Detections of one image, in results-file order; arrays are per detection [D]."""
    scores: np.ndarray  # float64
    categories: np.ndarray  # int64
    amodal: list
    visible: list | None
    area: np.ndarray  # float64, amodal evaluation area (loadRes rule)
    visible_area: np.ndarray  # float64, modal evaluation area
    occlusion: np.ndarray  # float64, NaN when unknown
    depth_order: list  # dict | None per detection


def load_json(source: str | os.PathLike | dict | list) -> Any:
    """A parsed JSON document: ``source`` itself, or the file it names."""
    if isinstance(source, (dict, list)):
        return source
    with open(source) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}: not valid JSON ({e})") from None


def _name(source) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else "<in-memory>"


def _to_rle(segm, height: int, width: int, where: str) -> dict:
    """A compressed RLE from a polygon (flat or list of lists), uncompressed or compressed RLE."""
    if isinstance(segm, list):
        if not segm:
            raise ValueError(f"{where}: empty polygon")
        polys = [segm] if not isinstance(segm[0], list) else segm
        if any(len(p) < 6 or len(p) % 2 for p in polys):
            raise ValueError(f"{where}: a polygon needs an even number (>= 6) of coordinates")
        return mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    if not isinstance(segm, dict) or "counts" not in segm or "size" not in segm:
        raise ValueError(f"{where}: malformed RLE (need a dict with 'size' and 'counts')")
    size = segm["size"]
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or [int(size[0]), int(size[1])] != [height, width]):
        raise ValueError(f"{where}: mask size {size} differs from the image size "
                         f"[{height}, {width}]")
    counts = segm["counts"]
    if isinstance(counts, list):
        if (not all(isinstance(c, (int, np.integer)) and c >= 0 for c in counts)
                or sum(counts) != height * width):
            raise ValueError(f"{where}: malformed RLE (uncompressed counts must be >= 0 "
                             f"and sum to {height * width})")
        return mask_utils.frPyObjects(segm, height, width)
    if not isinstance(counts, (str, bytes)):
        raise ValueError(f"{where}: malformed RLE (counts is {type(counts).__name__})")
    return segm


def _check_compressed_rles(rles: Sequence[dict], describe: Callable[[int], str]) -> None:
    """Validate compressed COCO RLE strings, all at once, without decoding the masks.

    Mirrors pycocotools' ``rleFrString``: 6-bit chars from '0', 5 value bits, a
    continuation bit, a sign bit in the last char, and runs from the fourth on coded as
    differences to the run two before. Each string must parse into non-negative runs
    summing to height x width; pycocotools' C decoder does not check this and would
    write past its buffer.

    Args:
      rles: COCO RLE dicts with ``size`` [h, w] and ``counts`` (str or bytes).
      describe: index -> what the RLE is (file, id), for the error message.

    Raises:
      ValueError: "<describe(i)>: malformed RLE (<why>)" for the first bad one.
    """
    if not rles:
        return
    blobs = [r["counts"].encode("ascii", "replace") if isinstance(r["counts"], str)
             else bytes(r["counts"]) for r in rles]
    lengths = np.array([len(b) for b in blobs], np.int64)
    pixels = np.array([int(r["size"][0]) * int(r["size"][1]) for r in rles], np.int64)
    char_end = np.cumsum(lengths)

    def fail_at_char(bad: np.ndarray, why: str):
        string = int(np.searchsorted(char_end, np.flatnonzero(bad)[0], side="right"))
        raise ValueError(f"{describe(string)}: malformed RLE ({why})")

    def fail_string(bad: np.ndarray, why: str):
        raise ValueError(f"{describe(int(np.flatnonzero(bad)[0]))}: malformed RLE ({why})")

    raw = np.frombuffer(b"".join(blobs), np.uint8)
    bad = (raw < 48) | (raw > 111)
    if bad.any():
        fail_at_char(bad, "character outside '0'..'o'")
    chars = raw - np.uint8(48)
    ends = (chars & 0x20) == 0
    nonempty = lengths > 0
    if not ends[char_end[nonempty] - 1].all():
        open_end = np.zeros(len(blobs), bool)
        open_end[nonempty] = ~ends[char_end[nonempty] - 1]
        fail_string(open_end, "truncated count")
    token_end = np.flatnonzero(ends)
    if not len(token_end):
        fail_string(pixels != 0, "runs do not sum to height x width")
        return
    # Counts are contiguous (every string ends on a count's last char). Most take one
    # char; the few longer ones are summed 5 bits at a time.
    low = (chars & 0x1f).astype(np.int64)
    token_start = np.empty_like(token_end)
    token_start[0] = 0
    token_start[1:] = token_end[:-1] + 1
    length = token_end - token_start + 1
    if length.max() > 11:
        fail_at_char(np.isin(np.arange(len(chars)), token_end[length > 11]), "count too long")
    values = low[token_start]
    multi = np.flatnonzero(length > 1)
    for k in range(1, int(length.max())):
        part = multi[length[multi] > k]
        values[part] += low[token_start[part] + k] << (5 * k)
    negative = (chars[token_end] & 0x10) != 0
    values[negative] -= np.int64(1) << (5 * length[negative])
    # Run j >= 3 is coded relative to run j - 2, so runs are prefix sums with stride 2:
    # within a string starting at token f, run j = G[f + j] - G[f - 1] (j odd) or
    # - G[f] (j even >= 2), where G is the stride-2 cumulative sum of all values.
    tokens_before = np.searchsorted(token_end, char_end, side="left")
    tokens = np.diff(tokens_before, prepend=0)
    first_token = tokens_before - tokens
    summed = np.empty_like(values)
    summed[0::2] = np.cumsum(values[0::2])
    summed[1::2] = np.cumsum(values[1::2])
    base_odd = np.where(first_token > 0, summed[np.maximum(first_token - 1, 0)], 0)
    base_even = summed[np.minimum(first_token, len(values) - 1)]
    odd = (np.arange(len(values)) & 1).astype(bool) ^ np.repeat((first_token & 1).astype(bool),
                                                                tokens)
    runs = summed - np.where(odd, np.repeat(base_odd, tokens), np.repeat(base_even, tokens))
    starting = first_token[tokens > 0]
    runs[starting] = values[starting]
    out_of_range = (runs < 0) | (runs >= 1 << 32)
    if out_of_range.any():
        string = np.searchsorted(tokens_before, np.flatnonzero(out_of_range)[0], side="right")
        raise ValueError(f"{describe(int(string))}: malformed RLE (negative or huge run)")
    total = np.zeros(len(blobs), np.int64)
    total[tokens > 0] = np.add.reduceat(runs, starting)
    if (total != pixels).any():
        fail_string(total != pixels, "runs do not sum to height x width")


def _occlusion_from_areas(visible_area: np.ndarray, amodal_area: np.ndarray) -> np.ndarray:
    """float64 [N] 1 - visible / amodal area (0 for empty amodal masks)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = 1.0 - visible_area / amodal_area
    return np.where(amodal_area > 0, rate, 0.0)


def _images_index(images: list, name: str) -> dict[int, tuple[int, int]]:
    sizes = {}
    for img in images:
        try:
            image_id, h, w = img["id"], int(img["height"]), int(img["width"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{name}: image entry {img!r:.80} needs id, height, width") from None
        if image_id in sizes:
            raise ValueError(f"{name}: image id {image_id} appears twice")
        sizes[image_id] = (h, w)
    return sizes


def _build_image(image_id, size, anns: list[dict], constraints) -> _ImageGT:
    """Pack converted annotation dicts (keys as in _ImageGT, one value each) into arrays."""
    h, w = size
    amodal = [a["amodal"] for a in anns]
    visible = [a["visible"] for a in anns]
    amodal_area = mask_utils.area(amodal).astype(np.float64) if anns else np.zeros(0)
    visible_area = mask_utils.area(visible).astype(np.float64) if anns else np.zeros(0)
    area = np.array([a["area"] if a["area"] is not None else amodal_area[i]
                     for i, a in enumerate(anns)], np.float64)
    occlusion = np.array([a["occlusion"] if a["occlusion"] is not None else np.nan
                          for a in anns], np.float64)
    occlusion = np.where(np.isnan(occlusion), _occlusion_from_areas(visible_area, amodal_area),
                         occlusion)
    return _ImageGT(
        image_id=image_id, height=h, width=w,
        ann_ids=np.array([a["id"] for a in anns], np.int64),
        categories=np.array([a["category"] for a in anns], np.int64),
        amodal=amodal, visible=visible, area=area, visible_area=visible_area,
        crowd=np.array([bool(a["crowd"]) for a in anns], bool),
        occlusion=occlusion,
        order=np.array([np.nan if a["order"] is None else float(a["order"]) for a in anns],
                       np.float64),
        stuff=np.array([bool(a["stuff"]) for a in anns], bool),
        constraints=constraints)


def _load_coco_gt(data: dict, name: str) -> tuple[list[_ImageGT], list[int]]:
    """COCO / D2SA-style GT: one annotation per instance, ``segmentation`` amodal."""
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ValueError(f"{name}: GT must be a dict with 'images' and 'annotations'")
    sizes = _images_index(data["images"], name)
    per_image: dict[int, list] = {i: [] for i in sizes}
    rles, wheres = [], []
    for k, ann in enumerate(data["annotations"]):
        where = f"{name}: annotation id {ann.get('id', f'#{k}')}"
        image_id = ann.get("image_id")
        if image_id not in sizes:
            raise ValueError(f"{where}: image_id {image_id} not in 'images'")
        if "segmentation" not in ann or "category_id" not in ann:
            raise ValueError(f"{where}: needs 'segmentation' and 'category_id'")
        h, w = sizes[image_id]
        amodal = _to_rle(ann["segmentation"], h, w, f"{where} segmentation")
        visible = (_to_rle(ann["visible_mask"], h, w, f"{where} visible_mask")
                   if ann.get("visible_mask") is not None else amodal)
        for r, label in ((amodal, "segmentation"), (visible, "visible_mask")):
            if isinstance(r["counts"], str) and not (label == "visible_mask" and r is amodal):
                rles.append(r)
                wheres.append(f"{where} {label}")
        per_image[image_id].append(dict(
            id=ann.get("id", k + 1), category=ann["category_id"], amodal=amodal,
            visible=visible, area=ann.get("area"), crowd=ann.get("iscrowd", 0),
            occlusion=ann.get("occlude_rate"), order=ann.get("order"),
            stuff=ann.get("isStuff", 0)))
    _check_compressed_rles(rles, wheres.__getitem__)
    if "categories" in data:
        categories = sorted({c["id"] for c in data["categories"]})
    else:
        categories = sorted({a["category_id"] for a in data["annotations"]})
    images = [_build_image(i, sizes[i], per_image[i], None) for i in sorted(sizes)]
    return images, categories


def _parse_constraints(text, orders: np.ndarray, where: str) -> np.ndarray:
    """int64 [C, 2] GT index pairs (front, back) from a COCOA ``"a-b,c-d"`` string."""
    if not text:
        return np.zeros((0, 2), np.int64)
    pairs = []
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            continue
        try:
            front, back = (int(v) for v in item.split("-"))
        except ValueError:
            raise ValueError(f"{where}: depth constraint {item!r} is not 'a-b'") from None
        idx = []
        for value in (front, back):
            hits = np.flatnonzero(orders == value)
            if len(hits) != 1:
                raise ValueError(f"{where}: depth constraint {item!r} names order {value}, "
                                 f"held by {len(hits)} regions")
            idx.append(int(hits[0]))
        pairs.append(idx)
    return np.array(pairs, np.int64).reshape(-1, 2)


def _load_cocoa_gt(data: dict, name: str) -> tuple[list[_ImageGT], list[int]]:
    """COCOA per-image GT: one annotation object per image and annotator, with ``regions``.

    The first annotation object of each image is used (as amodalAPI does); evaluation
    is class-agnostic (every region has category 1).
    """
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ValueError(f"{name}: COCOA GT must be a dict with 'images' and 'annotations'")
    sizes = _images_index(data["images"], name)
    first: dict[int, dict] = {}
    for k, ann in enumerate(data["annotations"]):
        image_id = ann.get("image_id")
        if image_id not in sizes:
            raise ValueError(f"{name}: annotation id {ann.get('id', f'#{k}')}: image_id "
                             f"{image_id} not in 'images'")
        if "regions" not in ann:
            raise ValueError(f"{name}: annotation id {ann.get('id', f'#{k}')}: no 'regions' "
                             "(is this a COCO-format file? use --format coco)")
        first.setdefault(image_id, ann)
    images, rles, wheres = [], [], []
    for image_id in sorted(sizes):
        h, w = sizes[image_id]
        ann = first.get(image_id, {"regions": []})
        regions = []
        for j, region in enumerate(ann["regions"]):
            where = f"{name}: image {image_id} region {j}"
            if "segmentation" not in region:
                raise ValueError(f"{where}: no 'segmentation'")
            amodal = _to_rle(region["segmentation"], h, w, f"{where} segmentation")
            visible = (_to_rle(region["visible_mask"], h, w, f"{where} visible_mask")
                       if region.get("visible_mask") is not None else amodal)
            for r, label in ((amodal, "segmentation"), (visible, "visible_mask")):
                if isinstance(r["counts"], str) and not (label == "visible_mask"
                                                         and r is amodal):
                    rles.append(r)
                    wheres.append(f"{where} {label}")
            regions.append(dict(
                id=j + 1, category=1, amodal=amodal, visible=visible,
                area=region.get("area"), crowd=0, occlusion=region.get("occlude_rate", 0.0),
                order=region.get("order"), stuff=region.get("isStuff", 0)))
        orders = np.array([np.nan if r["order"] is None else r["order"] for r in regions],
                          np.float64)
        constraints = _parse_constraints(ann.get("depth_constraint", ""), orders,
                                         f"{name}: image {image_id}")
        images.append(_build_image(image_id, (h, w), regions, constraints))
    _check_compressed_rles(rles, wheres.__getitem__)
    return images, [1]


def _load_results(results: list, images: list[_ImageGT], name: str) -> list[_ImageDets]:
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
                segm = entry[label] = _to_rle(segm, h, w, f"{where(k)} {label}")
            if isinstance(segm["counts"], (str, bytes)):
                rles.append(segm)
                owners.append((k, label))
        converted.append(entry)
        per_image[index[image_id]].append(k)
    _check_compressed_rles(rles, lambda i: f"{where(owners[i][0])} {owners[i][1]}")
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
                                 _occlusion_from_areas(visible_area, amodal_area), occlusion)
        out.append(_ImageDets(
            scores=np.array([r["score"] for r in rs], np.float64),
            categories=np.array([r.get("category_id", 1) for r in rs], np.int64),
            amodal=amodal, visible=visible,
            area=box_area if uses_bbox else amodal_area,
            visible_area=box_area if uses_bbox else visible_area,
            occlusion=occlusion,
            depth_order=[r.get("depth_order") for r in rs]))
    return out


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


def _match_groups(groups: list[_Group], images: list[_ImageGT]) -> None:
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

def _accumulate(groups: list[_Group], dets: list[_ImageDets], num_categories: int,
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


def _evaluate_variant(images: list[_ImageGT], dets: list[_ImageDets], categories: list[int],
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

def _matched_pairs(result: _VariantResult, images: list[_ImageGT]) -> list[dict[int, int]]:
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


def _predicted_order(det: _ImageDets, members: list[int]) -> dict[tuple[int, int], int]:
    """{(a, b): +1 if detection a is in front of b, -1 behind, 0 unknown} for a != b in members.

    From the results' ``depth_order`` when every member has one; otherwise from the
    predicted visible and amodal masks (``sln_jax.layering`` / ``sln_jax.semdist``).
    """
    rel = {}
    if all(det.depth_order[a] is not None for a in members):
        for a in members:
            order = det.depth_order[a]
            for b in members:
                if a != b:
                    value = order.get(str(b), order.get(b, 0)) if isinstance(order, dict) else 0
                    rel[a, b] = int(np.sign(value))
        return rel
    if det.visible is None or len(members) < 2:
        return {(a, b): 0 for a in members for b in members if a != b}
    # Imported here: the representation module is only needed for this fallback.
    from sln_jax import layering, semdist
    amodal = mask_utils.decode([det.amodal[a] for a in members]).astype(bool)
    visible = mask_utils.decode([det.visible[a] for a in members]).astype(bool) & amodal
    # Only pixels under two or more amodal masks carry order evidence: keep those, as a
    # [N, 1, P] image, so that full-resolution masks stay cheap.
    shared = amodal.sum(axis=-1) >= 2
    amodal = amodal[shared].T[:, None, :]
    visible = visible[shared].T[:, None, :]
    try:
        rank = layering.order_from_visibility(amodal, visible)
        pairwise = semdist.depth_order(layering.instance_layers(amodal, rank))
    except ValueError:
        # A cycle in the predicted masks: fall back to pairwise evidence.
        seen = visible.reshape(len(members), -1).astype(np.float64)
        hidden = (amodal & ~visible).reshape(len(members), -1).astype(np.float64)
        evidence = seen @ hidden.T
        pairwise = np.sign(evidence - evidence.T).astype(np.int8)
    for i, a in enumerate(members):
        for j, b in enumerate(members):
            if a != b:
                rel[a, b] = int(pairwise[i, j])
    return rel


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
    gt_name, results_name = _name(gt), _name(results)
    gt_data = load_json(gt)
    results_data = load_json(results)
    loader = _load_cocoa_gt if fmt == "cocoa" else _load_coco_gt
    images, categories = loader(gt_data, gt_name)
    dets = _load_results(results_data, images, results_name)
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
            lines.append(f" {key:<22} = {metrics[key]:0.3f}")
    if "order/pairs" in metrics:
        lines.append(f" {'order/pairs':<22} = {int(metrics['order/pairs'])}")
    return "\n".join(lines)


def write_metrics(path: str | os.PathLike, metrics: dict[str, float]) -> None:
    """Write metrics JSON atomically (temporary file in the same directory, then rename)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".metrics-", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(metrics, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
