"""Ground truth of the amodal metrics: COCO / D2SA-style and COCOA files, checked, in arrays.

``load(gt, fmt)`` reads a GT JSON (path or parsed) into one ``ImageGT`` per image (COCO
RLE masks, areas, crowd / stuff flags, occlusion rates, depth ranks or COCOA's pairwise
constraints) and the evaluated category ids. Errors name the file and the image /
annotation that is wrong. Segmentations become compressed RLE through pycocotools; their
counts are checked in one pass (``sln_jax.rle.check_many``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from sln_jax import depth_order, rle

__all__ = ["ImageGT", "load", "load_json", "load_coco_gt", "load_cocoa_gt", "to_rle",
           "check_compressed_rles", "occlusion_from_areas", "source_name"]

@dataclasses.dataclass
class ImageGT:
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

    def instances(self) -> list[dict[str, Any]]:
        """The instances as pictures draw them (``visualize.draw_comparison``): ``amodal`` and
        ``visible`` bool [H, W], ``category_id``, ``depth_order`` ({GT index: +1 / -1}) from
        the constraints, else the depth ranks, else the masks."""
        n = len(self.amodal)
        if n == 0:
            return []
        amodal = mask_utils.decode(self.amodal).transpose(2, 0, 1).astype(bool)
        visible = mask_utils.decode(self.visible).transpose(2, 0, 1).astype(bool)
        if self.constraints is not None:
            order = np.zeros((n, n), np.int8)
            for front, back in np.asarray(self.constraints, np.int64).reshape(-1, 2):
                order[front, back], order[back, front] = 1, -1
        elif np.all(np.isfinite(self.order)):
            order = depth_order.from_rank(amodal, self.order)
        else:
            order = depth_order.from_masks(amodal, visible)
        relations = depth_order.to_relations(order)
        return [{"amodal": amodal[i], "visible": visible[i],
                 "category_id": int(self.categories[i]), "depth_order": relations[i]}
                for i in range(n)]


def load_json(source: str | os.PathLike | dict | list) -> Any:
    """A parsed JSON document: ``source`` itself, or the file it names."""
    if isinstance(source, (dict, list)):
        return source
    with open(source) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}: not valid JSON ({e})") from None


def source_name(source) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else "<in-memory>"


def to_rle(segm, height: int, width: int, where: str) -> dict:
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


def check_compressed_rles(rles: Sequence[dict], describe: Callable[[int], str]) -> None:
    """Validate compressed COCO RLE strings, all at once, without decoding the masks
    (``sln_jax.rle.check_many``: runs must be non-negative and sum to height x width).

    Args:
      rles: COCO RLE dicts with ``size`` [h, w] and ``counts`` (str or bytes).
      describe: index -> what the RLE is (file, id), for the error message.

    Raises:
      ValueError: "<describe(i)>: malformed RLE (<why>)" for the first bad one.
    """
    blobs = [r["counts"].encode("ascii", "replace") if isinstance(r["counts"], str)
             else bytes(r["counts"]) for r in rles]
    try:
        rle.check_many(blobs, [(int(r["size"][0]), int(r["size"][1])) for r in rles])
    except rle.RleError as err:
        raise ValueError(f"{describe(err.index)}: malformed RLE ({err})") from None


def occlusion_from_areas(visible_area: np.ndarray, amodal_area: np.ndarray) -> np.ndarray:
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


def _build_image(image_id, size, anns: list[dict], constraints) -> ImageGT:
    """Pack converted annotation dicts (keys as in ImageGT, one value each) into arrays."""
    h, w = size
    amodal = [a["amodal"] for a in anns]
    visible = [a["visible"] for a in anns]
    amodal_area = mask_utils.area(amodal).astype(np.float64) if anns else np.zeros(0)
    visible_area = mask_utils.area(visible).astype(np.float64) if anns else np.zeros(0)
    area = np.array([a["area"] if a["area"] is not None else amodal_area[i]
                     for i, a in enumerate(anns)], np.float64)
    occlusion = np.array([a["occlusion"] if a["occlusion"] is not None else np.nan
                          for a in anns], np.float64)
    occlusion = np.where(np.isnan(occlusion), occlusion_from_areas(visible_area, amodal_area),
                         occlusion)
    return ImageGT(
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


def load_coco_gt(data: dict, name: str) -> tuple[list[ImageGT], list[int]]:
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
        amodal = to_rle(ann["segmentation"], h, w, f"{where} segmentation")
        visible = (to_rle(ann["visible_mask"], h, w, f"{where} visible_mask")
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
    check_compressed_rles(rles, wheres.__getitem__)
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


def load_cocoa_gt(data: dict, name: str) -> tuple[list[ImageGT], list[int]]:
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
            amodal = to_rle(region["segmentation"], h, w, f"{where} segmentation")
            visible = (to_rle(region["visible_mask"], h, w, f"{where} visible_mask")
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
    check_compressed_rles(rles, wheres.__getitem__)
    return images, [1]


def load(gt: str | os.PathLike | dict, fmt: str = "coco") -> tuple[list[ImageGT], list[int]]:
    """(per-image ground truth, evaluated category ids) of a GT JSON (path or parsed).

    Args:
      gt: ``fmt='coco'`` for COCO / D2SA-style files (the synthetic dataset's),
        ``fmt='cocoa'`` for the COCOA per-image format.
      fmt: 'coco' or 'cocoa'.
    """
    if fmt not in ("coco", "cocoa"):
        raise ValueError(f"fmt must be 'coco' or 'cocoa', got {fmt!r}")
    loader = load_cocoa_gt if fmt == "cocoa" else load_coco_gt
    return loader(load_json(gt), source_name(gt))
