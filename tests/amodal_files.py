"""Small annotation files in each format, written into temporary directories by the tests.

* ``cocoa_samples``: the five real COCOA annotations of ``tests/fixtures/cocoa_samples``
  wrapped as the full ``COCO_amodal_*.json`` is (image entries from the JPEG sizes);
* ``layered_scene`` / ``write_d2sa``: D2SA-style COCO JSON + PNGs from exact masks;
* ``edit_json`` / ``truncate_file`` to damage them, ``assert_record_matches_scene`` to check
  what a conversion wrote.
"""

from __future__ import annotations

import copy
import json
import os

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from scene_strategies import paint

SAMPLES = os.path.join(os.path.dirname(__file__), "fixtures", "cocoa_samples")


def cocoa_samples(tmp_dir: str) -> tuple[str, str, list[dict]]:
    """Write the wrapped COCOA sample file; returns (json path, images dir, raw entries)."""
    images, annotations = [], []
    for i in range(1, 6):
        with open(os.path.join(SAMPLES, f"{i}.json")) as f:
            entry = json.load(f)
        width, height = Image.open(os.path.join(SAMPLES, f"{i}.jpg")).size
        images.append({"id": entry["image_id"], "file_name": f"{i}.jpg", "height": height,
                       "width": width})
        annotations.append(entry)
    path = os.path.join(tmp_dir, "COCO_amodal_val2014.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations}, f)
    return path, SAMPLES, copy.deepcopy(annotations)


def rle(mask: np.ndarray) -> dict:
    """JSON-ready compressed COCO RLE of a bool [H, W] mask."""
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode()}


def layered_scene(height: int = 48, width: int = 64, seed: int = 0,
                  count: int = 4) -> dict[str, np.ndarray]:
    """Overlapping rectangles and ellipses: amodal bool [N,H,W], order int [N] (0 = front),
    visible bool [N,H,W] (painted), classes int [N] in 1..3."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    masks = []
    for i in range(count):
        cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.2, 0.8) * width
        ry, rx = rng.uniform(0.15, 0.3) * height, rng.uniform(0.15, 0.3) * width
        if i % 2:
            masks.append((np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx))
        else:
            masks.append(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0)
    amodal = np.asarray(masks, bool).reshape(count, height, width)
    order = rng.permutation(count)
    return {"amodal": amodal, "order": order, "visible": paint(amodal, order),
            "classes": rng.integers(1, 4, count)}


def d2sa_annotation(ann_id: int, image_id: int, category_id: int, amodal: np.ndarray,
                    visible: np.ndarray, order: int) -> dict:
    """One D2SA-style annotation (order 1-based under ``amodal_region``, iscrowd a bool)."""
    ys, xs = np.nonzero(amodal)
    bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
            float(ys.max() - ys.min() + 1)] if ys.size else [0.0, 0.0, 0.0, 0.0]
    return {
        "id": ann_id, "image_id": image_id, "category_id": category_id,
        "segmentation": rle(amodal), "visible_mask": rle(visible),
        "invisible_mask": rle(amodal & ~visible),
        "occlude_rate": float(1 - visible.sum() / max(amodal.sum(), 1)),
        "occl_depth": 0, "bbox": bbox, "area": int(amodal.sum()), "iscrowd": False,
        "amodal_region": {"name": "thing", "area": int(amodal.sum()), "isStuff": 0,
                          "bbox": bbox, "order": int(order) + 1},
    }


CATEGORIES = [{"id": 1, "name": "apple"}, {"id": 7, "name": "pear"},
              {"id": 42, "name": "plum"}]


def write_d2sa(tmp_dir: str, scenes: list[dict], split: str = "train",
               image_mode: str = "RGB") -> tuple[str, str]:
    """Write scenes as a D2SA-style dataset (categories 1, 7, 42 = classes 1, 2, 3).

    Returns (annotation json path, images dir). Images are random PNGs in ``image_mode``.
    """
    image_dir = os.path.join(tmp_dir, "images", split)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    rng = np.random.default_rng(123)
    for index, scene in enumerate(scenes):
        image_id = index + 1
        n, h, w = scene["amodal"].shape
        name = f"{image_id:06d}.png"
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        cv2.imwrite(os.path.join(image_dir, name), pixels)
        if image_mode != "RGB":
            Image.fromarray(pixels).convert(image_mode).save(os.path.join(image_dir, name))
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        for i in range(n):
            annotations.append(d2sa_annotation(
                len(annotations) + 1, image_id, CATEGORIES[int(scene["classes"][i]) - 1]["id"],
                scene["amodal"][i], scene["visible"][i], int(scene["order"][i])))
    path = os.path.join(tmp_dir, f"{split}.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations,
                   "categories": CATEGORIES}, f)
    return path, image_dir


def edit_json(path: str, edit) -> None:
    """Load, ``edit(data)`` in place, and save a JSON file."""
    with open(path) as f:
        data = json.load(f)
    edit(data)
    with open(path, "w") as f:
        json.dump(data, f)


def truncate_file(path: str) -> None:
    """Cut a file in half, as an interrupted download or copy leaves it."""
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text[: len(text) // 2])


def assert_record_matches_scene(record: dict, scene, image_path: str) -> None:
    """A parsed record (``records.parse``) holds the scene's instances and the image file's
    bytes unchanged."""
    for key in ("ann_ids", "classes", "order", "amodal", "visible"):
        np.testing.assert_array_equal(record[key], getattr(scene, key), err_msg=key)
    with open(image_path, "rb") as f:
        assert record["image"] == f.read()
