"""Flat COCO-style amodal annotations: one entry per instance (D2SA, COCOA-cls, synthetic).

The file is ``{"images": [...], "annotations": [...], "categories": [...]}`` with, per
annotation: ``id``, ``image_id``, ``category_id``, ``segmentation`` (the amodal mask: RLE
or polygons), ``visible_mask`` and optional ``invisible_mask`` (RLE or polygons),
``occlude_rate``, ``bbox`` ``[x, y, w, h]``, ``iscrowd`` (a JSON boolean or 0/1), and a depth
rank, 1 = front, as ``order`` or ``amodal_region.order`` (D2SA); without one the order is
derived from the visible masks. ``isStuff`` (or ``amodal_region.isStuff``) marks stuff.
Crowd annotations are skipped and counted (``crowd_skipped``).

Category ids (possibly non-contiguous, e.g. COCO's 80 classes) map to contiguous class ids
1..C in increasing id order; ``class_agnostic=True`` maps every category to class 1.

Also home of ``read_json`` and ``image_path``, the checks every reader shares.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any

from data_prep.scene import (AnnotationSet, DataError, InstanceSource, SceneSource,
                             check_rle_size)

__all__ = ["read_json", "image_path", "number", "annotation_ids", "read_flat"]


def read_json(path: str) -> Any:
    """Load a JSON file; DataError naming the file on a missing, truncated or invalid one."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: invalid or truncated JSON ({err})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read annotation file ({err.strerror})") from None


def image_path(images_dir: str, file_name: str, where: str) -> str:
    """Path of an image file; DataError naming ``where`` when it does not exist."""
    path = os.path.join(images_dir, file_name)
    if not os.path.isfile(path):
        raise DataError(f"{where}: image file {path} not found")
    return path


def number(value: Any, where: str, field: str) -> float:
    """A JSON number that some files store as a string ("103074"); DataError otherwise."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: field {field!r} is not a number: {value!r}") from None


def _field(entry: dict, key: str, where: str) -> Any:
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    if key not in entry:
        raise DataError(f"{where}: missing field {key!r}")
    return entry[key]


def _list(data: dict, key: str, path: str) -> list:
    value = _field(data, key, path)
    if not isinstance(value, list):
        raise DataError(f"{path}: {key!r} must be a list")
    return value


def image_table(data: dict, path: str, images_dir: str) -> dict[int, dict]:
    """``images`` entries by id, with ``path`` added; DataError on missing files."""
    images = {}
    for entry in _list(data, "images", path):
        image_id = int(number(_field(entry, "id", f"{path}: image entry"), path, "id"))
        where = f"{path}: image {image_id}"
        images[image_id] = {
            "path": image_path(images_dir, str(_field(entry, "file_name", where)), where),
            "height": int(number(_field(entry, "height", where), where, "height")),
            "width": int(number(_field(entry, "width", where), where, "width")),
        }
    return images


def _region_field(ann: dict, key: str) -> Any:
    """``ann[key]``, else D2SA's ``ann['amodal_region'][key]``, else None."""
    if key in ann:
        return ann[key]
    region = ann.get("amodal_region")
    return region.get(key) if isinstance(region, dict) else None


def _flag(value: Any) -> bool:
    """JSON booleans, 0/1 and "0"/"1" as bool."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true")
    return bool(value)


def annotation_ids(ann: dict, path: str, images: dict[int, dict], class_of: dict[int, int],
                   known: str = "") -> tuple[int, int, int, str]:
    """Checked ids of a COCO-style annotation: (ann_id, image_id, category_id, where).

    ``where`` is "file: image i, annotation a" for later messages; ``known`` is appended to
    the unknown-category error (e.g. " (KINS uses 1, 2, ...)").

    Raises:
      DataError: on a missing or non-numeric id, an unknown image id or category id.
    """
    ann_id = int(number(_field(ann, "id", f"{path}: annotation"), path, "id"))
    where = f"{path}: annotation {ann_id}"
    image_id = int(number(_field(ann, "image_id", where), where, "image_id"))
    if image_id not in images:
        raise DataError(f"{where}: unknown image id {image_id}")
    where = f"{path}: image {image_id}, annotation {ann_id}"
    category = int(number(_field(ann, "category_id", where), where, "category_id"))
    if category not in class_of:
        raise DataError(f"{where}: unknown category id {category}{known}")
    return ann_id, image_id, category, where


def read_flat(path: str, images_dir: str, class_agnostic: bool = False) -> AnnotationSet:
    """Read a flat COCO-style amodal annotation file.

    Args:
      path: the JSON file.
      images_dir: directory the images' ``file_name`` are relative to.
      class_agnostic: map every category to class 1 ("object").

    Returns:
      AnnotationSet with one SceneSource per image entry (images without annotations kept),
      in the file's image order.

    Raises:
      DataError: invalid JSON, missing fields or image files, unknown image or category
        ids, RLE sizes that differ from the image size.
    """
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with 'images' and 'annotations'")
    images = image_table(data, path, images_dir)
    categories = sorted(
        (int(number(_field(c, "id", f"{path}: category"), path, "id")),
         str(c.get("name", "")).strip()) for c in _list(data, "categories", path))
    if class_agnostic:
        classes, category_ids = {1: "object"}, {1: 0}
        class_of = {cat_id: 1 for cat_id, _ in categories}
    else:
        classes = {i + 1: name for i, (_, name) in enumerate(categories)}
        category_ids = {i + 1: cat_id for i, (cat_id, _) in enumerate(categories)}
        class_of = {cat_id: i + 1 for i, (cat_id, _) in enumerate(categories)}
    warnings: collections.Counter = collections.Counter()
    per_image: dict[int, list[InstanceSource]] = {i: [] for i in images}
    for ann in _list(data, "annotations", path):
        ann_id, image_id, category, where = annotation_ids(ann, path, images, class_of)
        if _flag(ann.get("iscrowd", False)):
            warnings["crowd_skipped"] += 1
            continue
        h, w = images[image_id]["height"], images[image_id]["width"]
        for key in ("segmentation", "visible_mask", "invisible_mask"):
            check_rle_size(ann.get(key), h, w, f"{where} ({key})")
        order = _region_field(ann, "order")
        bbox = ann.get("bbox")
        if bbox is not None and (not isinstance(bbox, list) or len(bbox) != 4):
            raise DataError(f"{where}: 'bbox' must be [x, y, w, h], got {bbox!r}")
        per_image[image_id].append(InstanceSource(
            ann_id=ann_id,
            class_id=class_of[category],
            amodal=_field(ann, "segmentation", where),
            visible=ann.get("visible_mask"),
            invisible=ann.get("invisible_mask"),
            order=None if order is None else int(number(order, where, "order")),
            is_stuff=_flag(_region_field(ann, "isStuff") or False),
            bbox=None if bbox is None else tuple(number(v, where, "bbox") for v in bbox),
        ))
    sources = [
        SceneSource(image_id=image_id, image_path=info["path"], height=info["height"],
                    width=info["width"], instances=tuple(per_image[image_id]),
                    annotation_file=path)
        for image_id, info in images.items()
    ]
    return AnnotationSet(sources=sources, classes=classes, category_ids=category_ids,
                         warnings=warnings, annotation_file=path)
