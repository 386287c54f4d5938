"""Layering targets of one scene, computed once at conversion time.

* the global layering map (``sln_jax.layering.global_layers``) at the image's resolution;
* per instance, its layering map cropped to its amodal box and resized to P x P with
  nearest neighbour, stored as uint8 ``layer + 1`` (0 outside the amodal mask);
* per instance, its sem-dist map (``sln_jax.semdist.encode``) cropped the same way with
  bilinear resampling, stored as uint8 ``round(M / (K + 1) * 255)``.

Layers come from the amodal masks and the depth order; where they disagree with the
annotated visible masks (annotation noise, e.g. COCOA), the visible mask wins for layer 0
and the order decides the rest (``shared/paper/SLN.md`` section 2): annotated-visible pixels
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
    n = scene.num_instances
    global_map = layering.global_layers(scene.amodal, k).astype(np.uint8)
    if n == 0:
        empty = np.zeros((0, p, p), np.uint8)
        return Targets(global_map, empty, empty.copy(), np.zeros((k,), np.int64))
    layers = layering.instance_layers(scene.amodal, scene.order)
    amodal, visible = scene.amodal, scene.visible
    disagree = (amodal & ((layers == 0) != visible)).reshape(n, -1).sum(axis=1)
    area = amodal.reshape(n, -1).sum(axis=1)
    limit = np.maximum(CONFLICT_MIN_PIXELS, CONFLICT_FRACTION * area)
    warnings["visible_layer_conflict"] += int((disagree > limit).sum())
    layers = np.where(visible, 0, np.where(amodal & (layers == 0), 1, layers))
    layers = np.minimum(layers, k - 1).astype(np.int32)
    layer_pixels = np.bincount(layers[layers >= 0], minlength=k).astype(np.int64)
    boxes = scene.boxes
    layer_crops = layering.crop_to_boxes(layers, boxes, p, method="nearest", fill=-1)
    semdist_maps = semdist.encode(layers, k)
    semdist_crops = layering.crop_to_boxes(semdist_maps, boxes, p, method="bilinear", fill=0)
    return Targets(
        global_layers=global_map,
        layer_crops=(layer_crops + 1).astype(np.uint8),
        semdist_crops=quantize_semdist(semdist_crops, k),
        layer_pixels=layer_pixels,
    )
