"""The built-in synthetic amodal dataset: random shapes stacked over textured backgrounds.

A scene is drawn back to front: a textured background (smoothed noise, gradients, stripes or
a desaturated photo crop), then objects one by one, each in front of all earlier ones. The
amodal masks are the exact drawn shapes (clipped to the image); the visible masks follow from
painting back to front, so ``visible_i = amodal_i minus the union of the amodal masks in front
of i`` holds exactly, and the depth order is known.

Classes are defined by shape (see ``CATEGORIES``): ellipse, triangle, star, ring (an annulus:
its hole is not part of its amodal mask) and photo patch (a rotated rectangle cut from one of
scikit-image's bundled sample photos, which ship inside the package: no download). The other
shapes get a saturated random color modulated by a texture (flat, stripes, noise, gradient or
a photo's luminance), while backgrounds are muted, so objects stand out from the background;
objects that overlap get well separated hues so that the boundary between them is visible.

Occlusion: a new object is placed next to an existing one with probability
``cluster_probability``, else uniformly; the defaults give about 40 % occluded instances, some
hidden by two or more objects (``python -m data_prep.synthetic`` prints the measured figures).
Our choice on hidden instances: every instance keeps at least ``min_visible_fraction`` of its
amodal area visible, and an occluded instance has at least ``min_occluded_fraction`` of it
hidden (no slivers of a few pixels). A placement that breaks either rule for an earlier
instance is re-drawn (and the object left out after ``placement_attempts`` failures). Fully or almost fully hidden
objects cannot be detected from pixels at all, so they would only add ground truth no model
can recall; real amodal datasets (COCOA, D2SA) annotate what an annotator can see, too.

Output (``write_split`` / the CLI): a D2SA-style COCO JSON per split and PNG images:
``DIR/annotations/{train,val}.json``, ``DIR/images/{train,val}/{image_id:06d}.png``.
Each annotation holds ``segmentation`` (amodal RLE), ``visible_mask``, ``invisible_mask`` (RLE,
``counts`` as str), ``occlude_rate`` (invisible area / amodal area), ``order`` (depth rank,
1 = front, consecutive within the image), ``bbox`` ([x, y, w, h] of the amodal mask), ``area``
(amodal pixel count), ``iscrowd`` (0). Everything is a function of (seed, split, index): the
same arguments give byte-identical JSON and PNGs, whatever the number of workers.

Semantic maps (``--semantic``): also ``DIR/semantic/{train,val}/{image_id:06d}.png``, the
generator's exact classes at every pixel (``class_map``: 0 on the background, else the class
of the front-most object there, i.e. the visible class map), in the format the converter's
``--semantic_dir`` reads (``sln_jax.semantic``) with S = len(CATEGORIES) + 1 classes: what a
perfect semantic segmentation model would give, for the layering head's semantic input.

CLI::

  python -m data_prep.synthetic --output DIR --num_train N --num_val M --image_size S \\
      --seed X [--max_objects K] [--preview K] [--workers W] [--semantic]
"""

from __future__ import annotations

import colorsys
import dataclasses
import functools
import json
import multiprocessing
import os
import sys
from typing import Iterator

import cv2
import numpy as np
from absl import flags
from pycocotools import mask as mask_utils

from sln_jax import atomic, cli, rle

__all__ = [
    "CATEGORIES",
    "SPLITS",
    "SceneConfig",
    "Scene",
    "generate_scene",
    "make_scene",
    "scene_annotations",
    "class_map",
    "SEMANTIC_CHANNELS",
    "occlusion_stats",
    "write_split",
    "main",
]

CATEGORIES = (
    {"id": 1, "name": "ellipse", "supercategory": "shape"},
    {"id": 2, "name": "triangle", "supercategory": "shape"},
    {"id": 3, "name": "star", "supercategory": "shape"},
    {"id": 4, "name": "ring", "supercategory": "shape"},
    {"id": 5, "name": "photo_patch", "supercategory": "shape"},
)
_ELLIPSE, _TRIANGLE, _STAR, _RING, _PHOTO_PATCH = range(1, 6)
# Classes of the semantic maps (``class_map``): background and every category.
SEMANTIC_CHANNELS = len(CATEGORIES) + 1

# Split names enter the per-scene seed, so train and val never share a scene.
SPLITS = ("train", "val")

# Photos bundled with scikit-image (no download). Color ones fill photo patches and, muted,
# backgrounds; the grayscale ones are textures (bricks, grass, gravel) for backgrounds.
_COLOR_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
                 "hubble_deep_field")
_GRAY_PHOTOS = ("brick", "grass", "gravel", "camera", "coins")


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn. Sizes are fractions of the image side unless named pixels.

    Attributes:
      image_size: S, the side of the square image in pixels.
      min_objects, max_objects: the number of objects tried per scene is uniform in
        [min_objects, max_objects]; placement failures can leave fewer.
      min_radius, max_radius: object radius range, fractions of S.
      min_area: smallest in-image amodal area, fraction of S * S.
      min_visible_fraction: every instance keeps at least this fraction of its amodal area
        visible (0 keeps fully hidden instances).
      min_occluded_fraction: an occluded instance has at least this fraction of its amodal
        area hidden; slivers of a few hidden pixels would make "occluded or not" ambiguous.
      cluster_probability: chance to place a new object next to an existing one, the main
        knob of the occluded fraction.
      placement_attempts: tries per object before it is left out.
    """

    image_size: int = 128
    min_objects: int = 2
    max_objects: int = 8
    min_radius: float = 0.07
    max_radius: float = 0.2
    min_area: float = 0.004
    min_visible_fraction: float = 0.25
    min_occluded_fraction: float = 0.02
    cluster_probability: float = 0.55
    placement_attempts: int = 20

    def __post_init__(self):
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")
        if not 0 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 0 <= min_objects <= max_objects, got "
                             f"{self.min_objects}, {self.max_objects}")
        if not 0 < self.min_radius <= self.max_radius:
            raise ValueError(f"need 0 < min_radius <= max_radius, got "
                             f"{self.min_radius}, {self.max_radius}")
        if not 0 <= self.min_visible_fraction <= 1:
            raise ValueError(f"min_visible_fraction must be in [0, 1], got "
                             f"{self.min_visible_fraction}")


@dataclasses.dataclass(frozen=True)
class Scene:
    """One synthetic scene as arrays.

    Attributes:
      image: uint8 [S, S, 3] RGB.
      amodal: bool [N, S, S] amodal masks (clipped to the image).
      visible: bool [N, S, S] visible masks.
      classes: int32 [N] category ids (``CATEGORIES``), 1..5.
      order: int32 [N] depth rank, 1 = front, consecutive (N, ..., 1 in drawing order).
    """

    image: np.ndarray
    amodal: np.ndarray
    visible: np.ndarray
    classes: np.ndarray
    order: np.ndarray


@functools.lru_cache(maxsize=None)
def _photos() -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """(color photos uint8 [h, w, 3], grayscale photos uint8 [h, w]) from skimage.data."""
    import skimage.data  # Imported here: only photo fills and backgrounds need it.

    color = tuple(np.ascontiguousarray(getattr(skimage.data, n)()) for n in _COLOR_PHOTOS)
    gray = tuple(np.ascontiguousarray(getattr(skimage.data, n)()) for n in _GRAY_PHOTOS)
    return color, gray


def _photo_crop(rng: np.random.Generator, photo: np.ndarray, h: int, w: int) -> np.ndarray:
    """A random crop of ``photo`` rescaled to [h, w] (same channels), randomly mirrored."""
    ph, pw = photo.shape[:2]
    scale = rng.uniform(0.5, 1.5)
    ch = int(min(ph, max(4, round(h / scale))))
    cw = int(min(pw, max(4, round(w / scale))))
    y = int(rng.integers(0, ph - ch + 1))
    x = int(rng.integers(0, pw - cw + 1))
    crop = photo[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return cv2.resize(np.ascontiguousarray(crop), (w, h), interpolation=cv2.INTER_LINEAR)


def _hsv_to_rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    """float32 [3] RGB in [0, 255] of a color given as hue in [0, 1), saturation, value."""
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value), np.float32) * 255


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """float32 [h, w] smooth random field in [0, 1]: coarse noise upsampled (bicubic)."""
    coarse = rng.random((cells, cells), dtype=np.float32)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(field.min()), float(field.max())
    return (field - lo) / max(hi - lo, 1e-6)


def _ramp(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """float32 [h, w] linear ramp in [0, 1] along a random direction."""
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.ogrid[:h, :w]
    yy, xx = yy.astype(np.float32), xx.astype(np.float32)
    t = xx * np.cos(angle) + yy * np.sin(angle)
    return (t - t.min()) / max(float(t.max() - t.min()), 1e-6)


def _stripes(rng: np.random.Generator, h: int, w: int, period: float) -> np.ndarray:
    """float32 [h, w] soft stripes in [0, 1] of the given period, random direction."""
    angle = rng.uniform(0, np.pi)
    yy, xx = np.ogrid[:h, :w]
    yy, xx = yy.astype(np.float32), xx.astype(np.float32)
    t = (xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period)
    return np.clip(0.5 + 0.8 * np.sin(t + rng.uniform(0, 2 * np.pi)), 0, 1)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """float32 [S, S, 3] muted textured background in [0, 255]."""
    kind = rng.integers(4)
    if kind == 0:  # colored smooth noise at two scales
        field = np.stack([_smooth_noise(rng, size, size, int(rng.integers(3, 9)))
                          for _ in range(3)], -1)
        detail = _smooth_noise(rng, size, size, max(4, size // 8))[..., None]
        base = 0.7 * field + 0.3 * detail
        image = 60 + 120 * (0.5 * base + 0.5 * base.mean(-1, keepdims=True))
    elif kind in (1, 2):  # two muted colors, blended by a ramp or stripes
        a = _hsv_to_rgb(rng.random(), rng.uniform(0, 0.3), rng.uniform(0.3, 0.9))
        b = _hsv_to_rgb(rng.random(), rng.uniform(0, 0.3), rng.uniform(0.3, 0.9))
        t = (_ramp(rng, size, size) if kind == 1
             else _stripes(rng, size, size, rng.uniform(0.05, 0.3) * size))[..., None]
        image = a * (1 - t) + b * t
    else:  # a photo crop, desaturated
        color, gray = _photos()
        pick = int(rng.integers(len(color) + len(gray)))
        if pick < len(color):
            crop = _photo_crop(rng, color[pick], size, size).astype(np.float32)
        else:
            crop = np.repeat(_photo_crop(rng, gray[pick - len(color)], size, size)
                             [..., None], 3, -1).astype(np.float32)
        keep = rng.uniform(0.0, 0.35)  # remaining saturation
        image = keep * crop + (1 - keep) * crop.mean(-1, keepdims=True)
        image = 40 + 0.7 * image  # lower contrast, so saturated objects stand out
    return image.astype(np.float32)


def _object_fill(rng: np.random.Generator, cls: int, hue: float, h: int,
                 w: int) -> np.ndarray:
    """float32 [h, w, 3] fill of an object's box: a photo for photo patches, else a
    saturated color of the given hue modulated by a random texture."""
    if cls == _PHOTO_PATCH:
        color, _ = _photos()
        return _photo_crop(rng, color[int(rng.integers(len(color)))], h, w).astype(np.float32)
    rgb = _hsv_to_rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.6, 1.0))
    kind = rng.integers(5)
    if kind == 0:
        return np.broadcast_to(rgb, (h, w, 3)).astype(np.float32)
    if kind == 1:
        pattern = _stripes(rng, h, w, rng.uniform(3.0, 10.0))
    elif kind == 2:
        pattern = _smooth_noise(rng, h, w, int(rng.integers(3, 8)))
    elif kind == 3:
        pattern = _ramp(rng, h, w)
    else:
        _, gray = _photos()
        pattern = _photo_crop(rng, gray[int(rng.integers(len(gray)))], h, w) / np.float32(255)
    strength = rng.uniform(0.2, 0.5)
    return rgb * (1 - strength + strength * pattern[..., None])


def _polygon_mask(size: int, points: np.ndarray) -> np.ndarray:
    """bool [S, S] filled polygon; ``points`` float [P, 2] (x, y), pixel-center coords."""
    mask = np.zeros((size, size), np.uint8)
    # Sub-pixel vertices (shift = 4 bits) keep small shapes faithful to their parameters.
    cv2.fillPoly(mask, [np.round(points * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    return mask.view(bool)


def _ellipse_mask(size: int, cy: float, cx: float, ry: float, rx: float, angle: float,
                  hole: float = 0.0) -> np.ndarray:
    """bool [S, S] rotated ellipse (pixel centers inside), minus a concentric ellipse
    scaled by ``hole`` (0 = none), evaluated only over the shape's box."""
    mask = np.zeros((size, size), bool)
    reach = max(ry, rx) + 1
    y0, y1 = max(int(cy - reach), 0), min(int(np.ceil(cy + reach)) + 1, size)
    x0, x1 = max(int(cx - reach), 0), min(int(np.ceil(cx + reach)) + 1, size)
    if y0 >= y1 or x0 >= x1:
        return mask
    yy, xx = np.ogrid[y0:y1, x0:x1]
    yy, xx = yy.astype(np.float32), xx.astype(np.float32)
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(angle), np.sin(angle)
    u, v = dx * c + dy * s, -dx * s + dy * c
    r2 = (u / rx) ** 2 + (v / ry) ** 2
    mask[y0:y1, x0:x1] = (r2 <= 1.0) & (r2 > hole * hole)
    return mask


def _shape_mask(rng: np.random.Generator, cls: int, size: int, cy: float, cx: float,
                radius: float) -> np.ndarray:
    """bool [S, S] amodal mask of a shape of class ``cls`` centered at (cy, cx)."""
    angle = rng.uniform(0, 2 * np.pi)
    if cls == _ELLIPSE:
        return _ellipse_mask(size, cy, cx, radius * rng.uniform(0.5, 1.0), radius, angle)
    if cls == _RING:
        return _ellipse_mask(size, cy, cx, radius * rng.uniform(0.75, 1.0), radius, angle,
                             hole=rng.uniform(0.45, 0.65))
    if cls == _TRIANGLE:
        # Near-equilateral: thin slivers would be hard to tell from other shapes' edges.
        t = angle + np.arange(3) * (2 * np.pi / 3) + rng.uniform(-0.3, 0.3, 3)
        r = radius * rng.uniform(0.9, 1.1, 3)
    elif cls == _STAR:
        points = int(rng.integers(5, 7))
        t = angle + np.arange(2 * points) * (np.pi / points)
        r = radius * np.where(np.arange(2 * points) % 2 == 0, 1.0, rng.uniform(0.4, 0.55))
    elif cls == _PHOTO_PATCH:
        half = np.array([1.0, rng.uniform(0.6, 1.0)]) * radius * 0.85
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
        c, s = np.cos(angle), np.sin(angle)
        pts = corners @ np.array([[c, s], [-s, c]]) + (cx, cy)
        return _polygon_mask(size, pts)
    else:
        raise ValueError(f"unknown class {cls}")
    return _polygon_mask(size, np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], -1))


def _circular_distance(a: float, b: np.ndarray) -> np.ndarray:
    d = np.abs(a - b) % 1.0
    return np.minimum(d, 1.0 - d)


def generate_scene(rng: np.random.Generator, config: SceneConfig) -> Scene:
    """Draw one scene with objects stacked back to front (see the module docstring).

    Args:
      rng: the source of randomness (the scene is a function of its state).
      config: sizes, counts and occlusion settings.

    Returns:
      A ``Scene``: image uint8 [S, S, 3], amodal / visible bool [N, S, S], classes int32
      [N], order int32 [N] (1 = front).
    """
    size = config.image_size
    image = _background(rng, size)
    target = int(rng.integers(config.min_objects, config.max_objects + 1))
    owner = np.full((size, size), -1, np.int32)  # index of the visible object, -1 = none
    masks, classes, hues, centers, radii = [], [], [], [], []
    amodal_area = np.zeros(0, np.int64)
    visible_area = np.zeros(0, np.int64)
    min_area = config.min_area * size * size
    for _ in range(target):
        cls = int(rng.integers(1, len(CATEGORIES) + 1))
        for _attempt in range(config.placement_attempts):
            radius = rng.uniform(config.min_radius, config.max_radius) * size
            if masks and rng.random() < config.cluster_probability:
                k = int(rng.integers(len(masks)))
                dist = rng.uniform(0.4, 1.0) * (radii[k] + radius)
                theta = rng.uniform(0, 2 * np.pi)
                cy = centers[k][0] + dist * np.sin(theta)
                cx = centers[k][1] + dist * np.cos(theta)
            else:
                cy, cx = rng.uniform(0.05, 0.95, 2) * size
            if not (0 <= cy < size and 0 <= cx < size):
                continue
            mask = _shape_mask(rng, cls, size, cy, cx, radius)
            area = int(np.count_nonzero(mask))
            if area < min_area:
                continue
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
            inside = mask[box]
            covered = np.bincount(owner[box][inside] + 1, minlength=len(masks) + 1)[1:]
            left = visible_area - covered
            hidden = amodal_area - left
            if (np.any(left < config.min_visible_fraction * amodal_area)
                    or np.any((covered > 0) & (left <= 0))
                    or np.any((hidden > 0)
                              & (hidden < config.min_occluded_fraction * amodal_area))):
                continue
            break
        else:
            continue
        # A hue far from the objects this one overlaps keeps their shared border visible.
        overlapped = np.asarray(hues)[covered > 0] if masks else np.zeros(0)
        candidates = rng.random(6)
        if overlapped.size:
            spread = [_circular_distance(h, overlapped).min() for h in candidates]
            hue = float(candidates[int(np.argmax(spread))])
        else:
            hue = float(candidates[0])
        fill = _object_fill(rng, cls, hue, rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0])
        image[box][inside] = fill[inside]
        owner[box][inside] = len(masks)
        visible_area = np.append(visible_area - covered, area)
        amodal_area = np.append(amodal_area, area)
        masks.append(mask)
        classes.append(cls)
        hues.append(hue)
        centers.append((cy, cx))
        radii.append(radius)
    n = len(masks)
    amodal = np.array(masks, bool).reshape(n, size, size)
    visible = owner[None] == np.arange(n, dtype=np.int32)[:, None, None]
    return Scene(
        image=np.clip(np.rint(image), 0, 255).astype(np.uint8),
        amodal=amodal,
        visible=visible,
        classes=np.array(classes, np.int32),
        order=(n - np.arange(n)).astype(np.int32),
    )


def _scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), index]))


def make_scene(seed: int, split: str, index: int, config: SceneConfig) -> Scene:
    """The scene number ``index`` of a split, as written by the CLI for the same arguments.

    Args:
      seed: dataset seed (``--seed``).
      split: 'train' or 'val'.
      index: 0-based position in the split (image id = index + 1).
      config: the scene settings.

    Returns:
      The ``Scene`` (see ``generate_scene``).
    """
    return generate_scene(_scene_rng(seed, split, index), config)


def scene_annotations(scene: Scene, image_id: int, first_id: int) -> list[dict]:
    """D2SA-style COCO annotations of a scene, one per instance.

    Args:
      scene: the scene.
      image_id: id of its image record.
      first_id: annotation id of the first instance; the others follow consecutively.

    Returns:
      list of dicts with id, image_id, category_id, segmentation (amodal RLE),
      visible_mask, invisible_mask (RLE), occlude_rate, order, bbox [x, y, w, h], area,
      iscrowd.
    """
    annotations = []
    for i in range(scene.amodal.shape[0]):
        amodal = rle.encode_json(scene.amodal[i])
        area = int(np.count_nonzero(scene.amodal[i]))
        hidden = int(np.count_nonzero(scene.amodal[i] & ~scene.visible[i]))
        annotations.append({
            "id": first_id + i,
            "image_id": image_id,
            "category_id": int(scene.classes[i]),
            "segmentation": amodal,
            "visible_mask": rle.encode_json(scene.visible[i]),
            "invisible_mask": rle.encode_json(scene.amodal[i] & ~scene.visible[i]),
            "occlude_rate": hidden / area,
            "order": int(scene.order[i]),
            "bbox": [float(v) for v in mask_utils.toBbox(
                {"size": amodal["size"], "counts": amodal["counts"].encode("ascii")})],
            "area": area,
            "iscrowd": 0,
        })
    return annotations


def class_map(scene: Scene) -> np.ndarray:
    """The scene's exact semantic map: uint8 [S, S], 0 on the background, else the class of
    the object visible at the pixel (the front-most one; visible masks are disjoint)."""
    classes = np.asarray(scene.classes, np.uint8)[:, None, None]
    return (scene.visible * classes).sum(axis=0, dtype=np.uint8)


def occlusion_stats(amodal: np.ndarray, order: np.ndarray) -> dict[str, int]:
    """Occlusion counts of one scene.

    Args:
      amodal: bool [N, H, W] amodal masks.
      order: int [N] distinct depth ranks, smaller = nearer.

    Returns:
      dict with ``instances``, ``occluded`` (instances with a hidden pixel) and
      ``multi_occluded`` (instances overlapped by two or more objects in front of them).
    """
    n = amodal.shape[0]
    flat = amodal.reshape(n, -1).astype(np.float32)
    overlap = (flat @ flat.T) > 0
    in_front = np.asarray(order)[:, None] < np.asarray(order)[None, :]  # [i, j]: i before j
    occluders = (overlap & in_front).sum(axis=0)
    return {"instances": n, "occluded": int((occluders >= 1).sum()),
            "multi_occluded": int((occluders >= 2).sum())}


def _png_bytes(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return data.tobytes()


def _render(job: tuple[int, str, int, SceneConfig, str, str]) -> tuple[dict, list[dict], dict]:
    """Worker: draw scene ``index``, write its PNG (and its semantic map when
    ``semantic_dir``), return (image record, annotations without ids, occlusion stats)."""
    seed, split, index, config, image_dir, semantic_dir = job
    scene = make_scene(seed, split, index, config)
    image_id = index + 1
    file_name = f"{image_id:06d}.png"
    atomic.write_bytes(os.path.join(image_dir, file_name), _png_bytes(scene.image))
    if semantic_dir:
        atomic.write_png(os.path.join(semantic_dir, file_name), class_map(scene))
    record = {"id": image_id, "file_name": file_name, "height": config.image_size,
              "width": config.image_size}
    return record, scene_annotations(scene, image_id, 0), occlusion_stats(
        scene.amodal, scene.order)


def _rendered(jobs: list, workers: int) -> Iterator:
    if workers <= 1:
        yield from map(_render, jobs)
        return
    # spawn: safe even when the caller has already started threads (e.g. JAX).
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(_render, jobs, chunksize=8)


def write_split(output: str, split: str, num_images: int, seed: int, config: SceneConfig,
                workers: int = 1, progress: bool = True,
                semantic: bool = False) -> dict[str, int]:
    """Generate one split: PNGs in ``output/images/<split>/`` and
    ``output/annotations/<split>.json`` (written atomically).

    Args:
      output: dataset root directory.
      split: 'train' or 'val'.
      num_images: number of scenes.
      seed: dataset seed.
      config: scene settings.
      workers: processes drawing scenes (results do not depend on it).
      progress: show a tqdm progress bar.
      semantic: also write each scene's ``class_map`` to
        ``output/semantic/<split>/<image file name>``.

    Returns:
      Summed ``occlusion_stats`` over the split: instances, occluded, multi_occluded.
    """
    from tqdm import tqdm

    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images} for split {split!r}")
    image_dir = os.path.join(output, "images", split)
    annotation_dir = os.path.join(output, "annotations")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(annotation_dir, exist_ok=True)
    semantic_dir = os.path.join(output, "semantic", split) if semantic else ""
    if semantic_dir:
        os.makedirs(semantic_dir, exist_ok=True)
    jobs = [(seed, split, i, config, image_dir, semantic_dir) for i in range(num_images)]
    images, annotations = [], []
    totals = {"instances": 0, "occluded": 0, "multi_occluded": 0}
    results = _rendered(jobs, workers)
    bar = tqdm(results, total=num_images, desc=f"generate {split}", unit="img",
               disable=not progress)
    for record, anns, stats in bar:
        images.append(record)
        for ann in anns:
            ann["id"] = len(annotations) + 1
            annotations.append(ann)
        for key in totals:
            totals[key] += stats[key]
    dataset = {
        "info": {"description": "sln-jax synthetic amodal shapes", "version": "1.0",
                 "split": split, "seed": seed, "scene_config": dataclasses.asdict(config)},
        "images": images,
        "annotations": annotations,
        "categories": [dict(c) for c in CATEGORIES],
    }
    atomic.write_bytes(os.path.join(annotation_dir, f"{split}.json"),
                  json.dumps(dataset, separators=(",", ":")).encode("utf-8"))
    return totals


def _write_previews(output: str, count: int, seed: int, config: SceneConfig) -> list[str]:
    """Preview PNGs of the first ``count`` train scenes in ``output/previews/``."""
    from sln_jax import visualize  # matplotlib is only needed for previews

    directory = os.path.join(output, "previews")
    os.makedirs(directory, exist_ok=True)
    paths = []
    for index in range(count):
        scene = make_scene(seed, "train", index, config)
        # Show the true stack depth: one more level than the deepest pixel stack.
        depth = int(scene.amodal.sum(0).max()) if scene.amodal.shape[0] else 0
        path = os.path.join(directory, f"train_{index + 1:06d}.png")
        visualize.save_scene_preview(path, scene.image, scene.amodal, scene.visible,
                                     scene.classes, num_layers=max(2, depth + 1),
                                     order=scene.order,
                                     class_names={c["id"]: c["name"] for c in CATEGORIES})
        paths.append(path)
    return paths


def _define_flags(values: flags.FlagValues) -> None:
    def define(kind, name, default, help_):
        kind(name, default, help_, flag_values=values)

    define(flags.DEFINE_string, "output", None, "dataset root directory")
    define(flags.DEFINE_integer, "num_train", None, "train scenes")
    define(flags.DEFINE_integer, "num_val", None, "val scenes")
    define(flags.DEFINE_integer, "image_size", 128, "image side S")
    define(flags.DEFINE_integer, "seed", 0, "dataset seed")
    define(flags.DEFINE_integer, "min_objects", SceneConfig.min_objects,
           "objects per scene, at least")
    define(flags.DEFINE_integer, "max_objects", SceneConfig.max_objects,
           "objects per scene, at most")
    define(flags.DEFINE_integer, "preview", 0,
           "write this many preview pictures of train scenes to DIR/previews/")
    define(flags.DEFINE_integer, "workers", 1,
           "processes drawing scenes (output does not depend on it)")
    define(flags.DEFINE_bool, "semantic", False,
           f"also write the exact semantic maps to DIR/semantic/SPLIT/ "
           f"({SEMANTIC_CHANNELS} classes: background and each category)")
    flags.mark_flags_as_required(["output", "num_train", "num_val"], flag_values=values)


def _parse_args(argv: list[str] | None) -> flags.FlagValues:
    """The command line (``sln_jax.cli``: absl flags, parsed per call)."""
    return cli.parse(_define_flags, argv, "python -m data_prep.synthetic")


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    args = _parse_args(argv)
    try:
        config = SceneConfig(image_size=args.image_size, min_objects=args.min_objects,
                             max_objects=args.max_objects)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Checked before anything is written: a bad count must not leave half a dataset.
    for name in ("num_train", "num_val", "preview"):
        if getattr(args, name) < 0:
            print(f"error: --{name} must be >= 0, got {getattr(args, name)}", file=sys.stderr)
            return 2
    if args.workers < 1:
        print(f"error: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    for split, count in (("train", args.num_train), ("val", args.num_val)):
        stats = write_split(args.output, split, count, args.seed, config, args.workers,
                            semantic=args.semantic)
        n = max(stats["instances"], 1)
        print(f"generated {split}: {count} images, {stats['instances']} instances, "
              f"{stats['occluded'] / n:.1%} occluded, "
              f"{stats['multi_occluded'] / n:.1%} occluded by >= 2 objects "
              f"-> {os.path.join(args.output, 'annotations', split + '.json')}")
    if args.preview > 0:
        paths = _write_previews(args.output, min(args.preview, args.num_train), args.seed,
                                config)
        print(f"previews: {len(paths)} in {os.path.join(args.output, 'previews')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
