"""COCOA amodal annotations (Zhu et al. 2017): the per-image format and COCOA-cls.

``COCO_amodal_{train,val,test}2014.json`` holds ``images`` and one ``annotations`` entry per
image and annotator: ``image_id``, ``id``, ``size`` (not trusted: it can differ from the
number of regions), an optional ``depth_constraint`` string ``"a-b,..."`` (the region with
``order`` a is in front of the one with ``order`` b; may be empty or missing) and
``regions``, each with:

* ``segmentation``: ONE flat amodal polygon ``[x1, y1, x2, y2, ...]``;
* ``visible_mask`` / ``invisible_mask``: COCO RLE, present only on occluded regions (else
  the visible mask is the amodal mask);
* ``order``: 1-based depth rank, 1 = front, may skip numbers; ``occlude_rate``;
  ``isStuff``; ``name`` (free text); ``area``.

Choices: class-agnostic (one class, "object"), as COCOA is evaluated; stuff regions are
kept with ``is_stuff`` set; when several annotators labelled an image (BSDS-A style) the
first annotation entry in the file is used and the others are counted
(``extra_annotators_ignored``). Regions have no ids of their own: a region's id is
``annotation id * 1000 + region index`` (index from 0), and messages name both.

COCOA-cls and the flat class-agnostic COCOA (COCO-style, one entry per region with
polygon lists) are read by ``read_cls`` through ``data_prep.coco_style``.
"""

from __future__ import annotations

import collections

from data_prep.coco_style import image_table, number, read_flat, read_json
from data_prep.scene import (AnnotationSet, DataError, InstanceSource, SceneSource,
                             check_rle_size)

__all__ = ["read", "read_cls", "parse_depth_constraint", "REGIONS_PER_ANNOTATION"]

# Region ids are annotation id * REGIONS_PER_ANNOTATION + region index.
REGIONS_PER_ANNOTATION = 1000


def parse_depth_constraint(text: str | None, where: str) -> tuple[tuple[int, int], ...]:
    """``"1-2,2-5"`` -> ((1, 2), (2, 5)); empty or None -> (). DataError on bad tokens."""
    if not text or not str(text).strip():
        return ()
    pairs = []
    for token in str(text).split(","):
        token = token.strip()
        if not token:
            continue
        parts = token.split("-")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise DataError(f"{where}: bad depth_constraint entry {token!r} "
                            "(expected 'a-b' with integer orders)")
        pairs.append((int(parts[0]), int(parts[1])))
    return tuple(pairs)


def read(path: str, images_dir: str) -> AnnotationSet:
    """Read a per-image COCOA amodal file (class-agnostic: class 1 = "object").

    Args:
      path: ``COCO_amodal_*.json``.
      images_dir: directory the images' ``file_name`` are relative to.

    Returns:
      AnnotationSet with one SceneSource per image entry (an image without annotation
      entry is kept with no instances), in the file's image order.

    Raises:
      DataError: one line naming the file, image id and annotation id / region.
    """
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DataError(f"{path}: expected a JSON object with 'images' and 'annotations'")
    images = image_table(data, path, images_dir)
    warnings: collections.Counter = collections.Counter()
    chosen: dict[int, tuple[int, tuple[InstanceSource, ...], tuple]] = {}
    for entry in data["annotations"]:
        if not isinstance(entry, dict) or "id" not in entry or "image_id" not in entry:
            raise DataError(f"{path}: annotation entry without 'id' or 'image_id'")
        ann_id = int(number(entry["id"], path, "id"))
        image_id = int(number(entry["image_id"], f"{path}: annotation {ann_id}", "image_id"))
        where = f"{path}: image {image_id}, annotation {ann_id}"
        if image_id not in images:
            raise DataError(f"{where}: unknown image id {image_id}")
        if image_id in chosen:
            warnings["extra_annotators_ignored"] += 1
            continue
        regions = entry.get("regions")
        if not isinstance(regions, list):
            raise DataError(f"{where}: 'regions' must be a list")
        if len(regions) >= REGIONS_PER_ANNOTATION:
            raise DataError(f"{where}: {len(regions)} regions, at most "
                            f"{REGIONS_PER_ANNOTATION - 1} supported")
        h, w = images[image_id]["height"], images[image_id]["width"]
        instances = []
        for index, region in enumerate(regions):
            label = f"annotation {ann_id}, region {index}"
            at = f"{path}: image {image_id}, {label}"
            if not isinstance(region, dict) or "segmentation" not in region:
                raise DataError(f"{at}: region without 'segmentation'")
            for key in ("visible_mask", "invisible_mask"):
                check_rle_size(region.get(key), h, w, f"{at} ({key})")
            order = region.get("order")
            instances.append(InstanceSource(
                ann_id=ann_id * REGIONS_PER_ANNOTATION + index,
                class_id=1,
                amodal=region["segmentation"],
                visible=region.get("visible_mask"),
                invisible=region.get("invisible_mask"),
                order=None if order is None else int(number(order, at, "order")),
                is_stuff=bool(int(number(region.get("isStuff", 0), at, "isStuff"))),
                label=label,
            ))
        constraints = parse_depth_constraint(entry.get("depth_constraint"), where)
        chosen[image_id] = (ann_id, tuple(instances), constraints)
    sources = []
    for image_id, info in images.items():
        _, instances, constraints = chosen.get(image_id, (None, (), ()))
        sources.append(SceneSource(
            image_id=image_id, image_path=info["path"], height=info["height"],
            width=info["width"], instances=instances, annotation_file=path,
            depth_constraints=constraints))
    return AnnotationSet(sources=sources, classes={1: "object"}, category_ids={1: 0},
                         warnings=warnings, annotation_file=path)


def read_cls(path: str, images_dir: str) -> AnnotationSet:
    """Read COCOA-cls or the flat class-agnostic COCOA (COCO-style, one entry per region).

    Classes are the file's categories mapped to contiguous ids 1..C (80 COCO classes with
    non-contiguous ids, or a single class). See ``data_prep.coco_style.read_flat``.
    """
    return read_flat(path, images_dir, class_agnostic=False)
