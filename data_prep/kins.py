"""KINS amodal annotations (Qi et al., CVPR 2019): KITTI object images, 7 classes.

What the files hold. The 2020 release ``update_{train,test}_2020.json`` is COCO-style:
``images`` (``id``, ``file_name`` such as ``000123.png`` relative to KITTI's ``image_2``,
``width``, ``height``), ``categories`` and one ``annotations`` entry per instance with ``id``,
``image_id``, ``category_id`` and

* ``a_segm`` / ``a_bbox`` / ``a_area``: the amodal polygons (a list of flat
  ``[x1, y1, x2, y2, ...]`` lists), box ``[x, y, w, h]`` and area;
* ``i_segm`` / ``i_bbox`` / ``i_area``: the same for the visible ("inmodal") part;
* ``oco_id``: the occlusion cluster. The instances of an image are partitioned into
  disconnected clusters, each holding instances connected by occlusion;
* ``ico_id``: the relative occlusion order inside the cluster, by distance to the camera:
  0 for an instance that overlaps nothing; otherwise 1 for the nearest and +1 each time the
  instance is occluded once. Smaller = nearer.

Sources: the dataset's README, github.com/qqlu/Amodal-Instance-Segmentation-through-KINS-Dataset
("Update 16.02.2020": "a_*" / "i_*" are the amodal / inmodal annotation; "oco_id" and
"ico_id" are "the cluster id and the relative occlusion id in this cluster"; non-overlapping
instances are 0; "order starts from 1 and increases by 1 when occluded once"). The direction
is confirmed by lyndonzheng/VINV (``mmdet/datasets/kins.py`` feeds ``ico_id`` as the layer
order to ``pairwise_ranking`` in ``mmdet/core/utils/misc.py``, where the smaller order of two
overlapping amodal masks is the occluder) and by third-party code that takes an instance's
occluders as the same-``oco_id`` instances with a smaller ``ico_id``. VINV uses the category
ids 1, 2, 4, 5, 6, 7, 8 (7 classes; 3, "rider", appears in some category tables, on no
instance) and also reads the 2019 release (``instances_{train,val}.json``: ``segmentation``
amodal polygons, ``inmodal_seg`` visible RLE, ``bbox``, ``inmodal_bbox``, no order); so does
this reader, through the same fallbacks.

Choices and assumptions:

* Classes are the fixed table ``CATEGORIES`` mapped to 1..7 in id order (the same for every
  split, whatever the file's ``categories`` lists); any other ``category_id`` (3 included)
  is a DataError.
* Depth order: ``ico_id`` restarts at 1 in every cluster, and clusters disconnected as
  annotated may still touch by a pixel once rasterized (assumed, not checked on the real
  files); ``load_scene`` would take that as a tie between overlapping instances and drop the
  image's annotated order. So ``order`` is a per-image rank, the dense rank of
  ``(ico_id, oco_id)``: the nearest instance of every cluster first, then the second ones,
  and so on. It keeps each cluster's internal order and its ties (equal ``ico_id`` in one
  cluster, which must not overlap: ``load_scene`` counts ``order_tie`` if they do), and
  orders different clusters arbitrarily but without ties (should that order contradict the
  visible masks, ``load_scene`` falls back as for any contradiction). Each ``ico_id`` 0
  instance gets a rank of its own. Without ``ico_id`` or ``oco_id`` the order is None
  (``load_scene`` derives it from the visible masks).
* A missing ``i_segm`` (and ``inmodal_seg``) means unoccluded: the visible mask is the
  amodal mask (as in COCOA), counted as ``visible_missing``. An empty ``i_segm`` is kept as
  given: nothing visible.
* Crowd annotations (``iscrowd`` true, where the field exists) are skipped and counted
  (``crowd_skipped``); images without annotations are kept with no instances.
* ``a_area``, ``i_area`` and ``i_bbox`` are not used (boxes and areas are rebuilt from the
  masks); ``a_bbox`` is only checked (``box_clipped``).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

from data_prep.coco_style import (_flag, _list, annotation_ids, image_table, number,
                                  read_json)
from data_prep.scene import (AnnotationSet, DataError, InstanceSource, SceneSource,
                             check_rle_size)

__all__ = ["read", "cluster_ranks", "CATEGORIES"]

# (KINS category id, name); class ids are 1..7 in this order.
CATEGORIES = ((1, "cyclist"), (2, "pedestrian"), (4, "car"), (5, "tram"), (6, "truck"),
              (7, "van"), (8, "misc"))


def cluster_ranks(clusters: list[tuple[int, int] | None]) -> list[int | None]:
    """Per-image depth ranks from KINS ``(oco_id, ico_id)`` pairs (see the module docstring).

    Args:
      clusters: per instance ``(oco_id, ico_id)``, or None when not annotated.

    Returns:
      per instance the dense rank 0.. of ``(ico_id, oco_id)`` (smaller = nearer; equal within
      a cluster for equal ``ico_id``), a distinct rank for each ``ico_id`` 0 instance, or None.
    """
    keys = []
    for index, pair in enumerate(clusters):
        if pair is None:
            keys.append(None)
            continue
        oco, ico = pair
        # ico_id 0 overlaps nothing, so it must tie with nobody, not even in its cluster.
        keys.append((ico, oco, index if ico == 0 else -1))
    rank = {key: r for r, key in enumerate(sorted({k for k in keys if k is not None}))}
    return [None if key is None else rank[key] for key in keys]


def _either(ann: dict, keys: tuple[str, str]) -> tuple[str, Any]:
    """(key, value) of the first of ``keys`` present and not None, else (keys[0], None)."""
    for key in keys:
        if ann.get(key) is not None:
            return key, ann[key]
    return keys[0], None


def _cluster(ann: dict, where: str) -> tuple[int, int] | None:
    """``(oco_id, ico_id)``, None when either is missing; DataError on bad values."""
    if ann.get("oco_id") is None or ann.get("ico_id") is None:
        return None
    oco = number(ann["oco_id"], where, "oco_id")
    ico = number(ann["ico_id"], where, "ico_id")
    if not (ico >= 0 and ico.is_integer() and oco.is_integer()):
        raise DataError(f"{where}: 'oco_id' and 'ico_id' must be integers, 'ico_id' >= 0; "
                        f"got {ann['oco_id']!r}, {ann['ico_id']!r}")
    return int(oco), int(ico)


def read(path: str, images_dir: str) -> AnnotationSet:
    """Read a KINS annotation file (2020 release, or the 2019 one without depth orders).

    Args:
      path: ``update_{train,test}_2020.json`` (or ``instances_{train,val}.json``).
      images_dir: directory the images' ``file_name`` are relative to (KITTI ``image_2``).

    Returns:
      AnnotationSet with one SceneSource per image entry, in the file's image order; classes
      1..7 = ``CATEGORIES``; instance ``order`` = ``cluster_ranks`` of the image.

    Raises:
      DataError: one line naming the file, image id and annotation id (invalid JSON,
        missing fields or image files, unknown image or category ids, bad ``ico_id``).
    """
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with 'images' and 'annotations'")
    images = image_table(data, path, images_dir)
    class_of = {cat_id: i + 1 for i, (cat_id, _) in enumerate(CATEGORIES)}
    known = ", ".join(str(cat_id) for cat_id, _ in CATEGORIES)
    warnings: collections.Counter = collections.Counter()
    per_image: dict[int, list[InstanceSource]] = {i: [] for i in images}
    clusters: dict[int, list[tuple[int, int] | None]] = {i: [] for i in images}
    for ann in _list(data, "annotations", path):
        ann_id, image_id, category, where = annotation_ids(ann, path, images, class_of,
                                                           f" (KINS uses {known})")
        if _flag(ann.get("iscrowd", False)):
            warnings["crowd_skipped"] += 1
            continue
        h, w = images[image_id]["height"], images[image_id]["width"]
        amodal_key, amodal = _either(ann, ("a_segm", "segmentation"))
        if amodal is None:
            raise DataError(f"{where}: missing field 'a_segm'")
        visible_key, visible = _either(ann, ("i_segm", "inmodal_seg"))
        if visible is None:
            warnings["visible_missing"] += 1
        for key, segmentation in ((amodal_key, amodal), (visible_key, visible)):
            check_rle_size(segmentation, h, w, f"{where} ({key})")
        bbox_key, bbox = _either(ann, ("a_bbox", "bbox"))
        if bbox is not None and (not isinstance(bbox, list) or len(bbox) != 4):
            raise DataError(f"{where}: {bbox_key!r} must be [x, y, w, h], got {bbox!r}")
        per_image[image_id].append(InstanceSource(
            ann_id=ann_id,
            class_id=class_of[category],
            amodal=amodal,
            visible=visible,
            bbox=None if bbox is None else tuple(number(v, where, bbox_key) for v in bbox),
        ))
        clusters[image_id].append(_cluster(ann, where))
    sources = []
    for image_id, info in images.items():
        orders = cluster_ranks(clusters[image_id])
        instances = tuple(dataclasses.replace(inst, order=order)
                          for inst, order in zip(per_image[image_id], orders))
        sources.append(SceneSource(image_id=image_id, image_path=info["path"],
                                   height=info["height"], width=info["width"],
                                   instances=instances, annotation_file=path))
    classes = {i + 1: name for i, (_, name) in enumerate(CATEGORIES)}
    category_ids = {i + 1: cat_id for i, (cat_id, _) in enumerate(CATEGORIES)}
    return AnnotationSet(sources=sources, classes=classes, category_ids=category_ids,
                         warnings=warnings, annotation_file=path)
