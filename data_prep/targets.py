"""Layering targets of one scene, computed once at conversion time.

* the global layering map (``sln_jax.layering.global_layers``) at the image's resolution;
* per instance, its layering map cropped to its amodal box and resized to P x P with
  nearest neighbour, stored as uint8 ``layer + 1`` (0 outside the amodal mask);
* per instance, its sem-dist map (``sln_jax.semdist.encode``) cropped the same way with
  bilinear resampling, stored as uint8 ``round(M / (K + 1) * 255)``.

Layers come from the amodal masks and the depth order; where they disagree with the
annotated visible masks (annotation noise, e.g. COCOA), the visible mask wins for layer 0
and the order decides the rest (``docs/SLN.md`` section 2): annotated-visible pixels
get layer 0, hidden pixels the order puts in front get layer 1. Instances where the two
disagree on more than ``CONFLICT_FRACTION`` of the amodal area (and at least
``CONFLICT_MIN_PIXELS``) are counted as ``visible_layer_conflict``.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from data_prep.scene import Scene
from sln_jax import layering, semdist

__all__ = ["Targets", "build_targets", "quantize_semdist", "dequantize_semdist",
           "CONFLICT_FRACTION", "CONFLICT_MIN_PIXELS"]

CONFLICT_FRACTION = 0.02
CONFLICT_MIN_PIXELS = 16


@dataclasses.dataclass
class Targets:
    """Compact layering targets of one scene (N instances, K layers, crops P x P).

    Attributes:
      global_layers: uint8 [H, W] values 0..K-1.
      layer_crops: uint8 [N, P, P] layer + 1 (0 outside the amodal mask), layers clipped
        to K - 1.
      semdist_crops: uint8 [N, P, P] quantized sem-dist (``quantize_semdist``).
      layer_pixels: int64 [K] instance-layer histogram over the amodal masks at full
        resolution (layers clipped to K - 1).
    """

    global_layers: np.ndarray
    layer_crops: np.ndarray
    semdist_crops: np.ndarray
    layer_pixels: np.ndarray


def quantize_semdist(values: np.ndarray, num_layers: int) -> np.ndarray:
    """float [...] sem-dist in [0, K + 1) -> uint8 [...] ``round(M / (K + 1) * 255)``."""
    scaled = np.round(np.asarray(values, np.float64) / (num_layers + 1) * 255.0)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def dequantize_semdist(values: np.ndarray, num_layers: int) -> np.ndarray:
    """uint8 [...] -> float32 [...] sem-dist ``v / 255 * (K + 1)`` (error <= (K+1)/510)."""
    return (np.asarray(values, np.float32) * np.float32((num_layers + 1) / 255.0))


def build_targets(scene: Scene, num_layers: int, mask_target_size: int,
                  warnings: collections.Counter) -> Targets:
    """Layering targets of a scene.

    Args:
      scene: the decoded scene (N may be 0).
      num_layers: K >= 2 (at most 254, so that layer + 1 fits uint8).
      mask_target_size: P, side of the per-instance crops.
      warnings: counter for ``visible_layer_conflict``.

    Returns:
      Targets.
    """
    if not 2 <= num_layers <= 254:
        raise ValueError(f"num_layers must be in 2..254, got {num_layers}")
    k, p = num_layers, mask_target_size
    n, h, w = scene.amodal.shape
    if n == 0:
        empty = np.zeros((0, p, p), np.uint8)
        return Targets(np.zeros((h, w), np.uint8), empty, empty.copy(),
                       np.zeros((k,), np.int64))
    amodal, visible = scene.amodal, scene.visible
    # Everything is computed on each instance's box grown by one pixel (clipped to the
    # image): the bilinear crop reads at most one pixel beyond the box, so the result equals
    # the full-image computation at a fraction of the cost.
    boxes = scene.boxes.astype(np.int64)
    windows = np.concatenate([np.maximum(boxes[:, :2] - 1, 0),
                              np.minimum(boxes[:, 2:] + 1, [h, w])], axis=1)
    sizes = windows[:, 2:] - windows[:, :2]
    # The windows, padded to a common size, so that cropping is a single call. Layer codes
    # (layer + 1, 0 outside) carry the one-pixel zero border ``semdist.encode_window`` needs.
    hp, wp = int(sizes[:, 0].max()), int(sizes[:, 1].max())
    codes = np.zeros((n, hp + 2, wp + 2), np.uint8)
    semdist_maps = np.zeros((n, hp, wp), np.float32)
    # How many instances are nearer than the current one, saturated at K - 1 (all that the
    # layers and the global map need), so that uint8 holds it.
    ahead = np.zeros((h, w), np.uint8)
    code_pixels = np.zeros(k + 1, np.float64)
    conflicts = 0
    for i in np.argsort(scene.order, kind="stable"):  # front to back
        y1, x1, y2, x2 = windows[i]
        own = amodal[i, y1:y2, x1:x2]
        in_front = ahead[y1:y2, x1:x2]
        seen = visible[i, y1:y2, x1:x2]
        disagree = np.count_nonzero(own & ((in_front == 0) != seen))
        conflicts += disagree > max(CONFLICT_MIN_PIXELS, CONFLICT_FRACTION * np.count_nonzero(own))
        # Code 1 where seen, else 1 + max(instances in front, 1), only on the mask.
        code = np.maximum(in_front, 1)
        code += 1
        np.copyto(code, 1, where=seen)
        window_codes = codes[i, :y2 - y1 + 2, :x2 - x1 + 2]
        np.copyto(window_codes[1:-1, 1:-1], code, where=own)
        in_front += own
        np.minimum(in_front, k - 1, out=in_front)
        code_pixels += semdist.encode_window(window_codes, k,
                                             semdist_maps[i, :y2 - y1, :x2 - x1])
    # Bilinear sampling clamps at the image edge: where a window was cut by the bottom or
    # right image edge, extend its last row / column over the padding as the image would.
    for i in np.flatnonzero((windows[:, 2] == h) | (windows[:, 3] == w)):
        wh, ww = sizes[i]
        semdist_maps[i, wh:, :ww] = semdist_maps[i, wh - 1, :ww]
        semdist_maps[i, :, ww:] = semdist_maps[i, :, ww - 1:ww]
    relative = scene.boxes - np.tile(windows[:, :2], 2).astype(np.float32)
    if conflicts:
        warnings["visible_layer_conflict"] += int(conflicts)
    return Targets(
        global_layers=ahead,
        layer_crops=layering.crop_to_boxes(codes, relative + 1, p, method="nearest", fill=0),
        semdist_crops=quantize_semdist(layering.crop_to_boxes(
            semdist_maps, relative, p, method="bilinear", fill=0), k),
        layer_pixels=code_pixels[1:].astype(np.int64),
    )
