"""Box arithmetic for the model: areas, IoU, the delta coder, clipping and static-shape NMS.

Box convention of the whole project: ``float32 [..., 4]`` as ``(y1, x1, y2, x2)`` in pixels,
with x2 / y2 exclusive edge coordinates (a box covering pixel columns 0..9 has x1 = 0,
x2 = 10), so height = y2 - y1 and width = x2 - x1 (no "+1").

Everything here is pure ``jax.numpy``, jittable and shape-static; NMS returns a fixed number
of indices padded with -1 together with the number of valid entries.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["area", "iou", "encode", "decode", "clip", "nms", "batched_nms",
           "BOX_CODER_WEIGHTS", "DELTA_CLAMP"]

# Deltas are divided by std (0.1, 0.1, 0.2, 0.2), i.e. scaled by these weights (dy, dx, dh, dw).
BOX_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
# Detectron's clamp on the decoded log size ratio: prevents exp() overflow for wild deltas.
DELTA_CLAMP = math.log(1000.0 / 16)


def area(boxes: jax.Array) -> jax.Array:
    """Area of boxes.

    Args:
      boxes: float32 [..., 4] (y1, x1, y2, x2).

    Returns:
      float32 [...]; boxes with y2 < y1 or x2 < x1 have area 0.
    """
    boxes = jnp.asarray(boxes, jnp.float32)
    h = jnp.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
    w = jnp.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    return h * w


def iou(a: jax.Array, b: jax.Array) -> jax.Array:
    """Pairwise intersection over union.

    Args:
      a: float32 [N, 4] (y1, x1, y2, x2).
      b: float32 [M, 4].

    Returns:
      float32 [N, M] in [0, 1]; 0 when either box is degenerate (zero area).
    """
    a = jnp.asarray(a, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    area_a = area(a)
    area_b = area(b)
    top_left = jnp.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = jnp.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = jnp.maximum(bottom_right - top_left, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    degenerate = (area_a[:, None] <= 0) | (area_b[None, :] <= 0)
    return jnp.where(degenerate, 0.0, inter / jnp.where(degenerate, 1.0, union))


def _centers_sizes(boxes: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    h = boxes[..., 2] - boxes[..., 0]
    w = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * h, boxes[..., 1] + 0.5 * w, h, w


def encode(boxes: jax.Array, anchors: jax.Array,
           weights: Sequence[float] = BOX_CODER_WEIGHTS) -> jax.Array:
    """Regression deltas that move each anchor onto its box.

    Args:
      boxes: float32 [N, 4] target boxes (positive size).
      anchors: float32 [N, 4] reference boxes (positive size).
      weights: (wy, wx, wh, ww) multipliers, 1 / std of the deltas.

    Returns:
      float32 [N, 4] (dy, dx, dh, dw): dy = wy * (cy - acy) / ah, dh = wh * log(h / ah), etc.
    """
    boxes = jnp.asarray(boxes, jnp.float32)
    anchors = jnp.asarray(anchors, jnp.float32)
    wy, wx, wh, ww = weights
    cy, cx, h, w = _centers_sizes(boxes)
    acy, acx, ah, aw = _centers_sizes(anchors)
    return jnp.stack([wy * (cy - acy) / ah, wx * (cx - acx) / aw,
                      wh * jnp.log(h / ah), ww * jnp.log(w / aw)], axis=-1)


def decode(deltas: jax.Array, anchors: jax.Array,
           weights: Sequence[float] = BOX_CODER_WEIGHTS,
           clip_to: Sequence | jax.Array | None = None) -> jax.Array:
    """Apply regression deltas to anchors (the inverse of ``encode``).

    Args:
      deltas: float32 [N, 4] (dy, dx, dh, dw) scaled by ``weights``.
      anchors: float32 [N, 4] (y1, x1, y2, x2).
      weights: (wy, wx, wh, ww) as in ``encode``.
      clip_to: optional (h, w) (ints or an int/float [2] array, may be traced) to clip to.

    Returns:
      float32 [N, 4] boxes; dh / dw are clamped at log(1000 / 16) before exponentiation.
    """
    deltas = jnp.asarray(deltas, jnp.float32)
    anchors = jnp.asarray(anchors, jnp.float32)
    wy, wx, wh, ww = weights
    acy, acx, ah, aw = _centers_sizes(anchors)
    cy = deltas[..., 0] / wy * ah + acy
    cx = deltas[..., 1] / wx * aw + acx
    h = jnp.exp(jnp.minimum(deltas[..., 2] / wh, DELTA_CLAMP)) * ah
    w = jnp.exp(jnp.minimum(deltas[..., 3] / ww, DELTA_CLAMP)) * aw
    boxes = jnp.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)
    if clip_to is not None:
        boxes = clip(boxes, clip_to)
    return boxes


def clip(boxes: jax.Array, size: Sequence | jax.Array) -> jax.Array:
    """Clip boxes to an image.

    Args:
      boxes: float32 [..., 4] (y1, x1, y2, x2).
      size: (h, w) of the image: Python numbers or a [2] array (may be traced).

    Returns:
      float32 [..., 4] with y in [0, h] and x in [0, w].
    """
    boxes = jnp.asarray(boxes, jnp.float32)
    size = jnp.asarray(size, jnp.float32)
    upper = jnp.stack([size[0], size[1], size[0], size[1]])
    return jnp.clip(boxes, 0.0, upper)


def nms(boxes: jax.Array, scores: jax.Array, iou_threshold: float,
        max_output: int) -> tuple[jax.Array, jax.Array]:
    """Greedy non-maximum suppression with a fixed-size output.

    Repeatedly takes the highest-scoring remaining box (ties: the lowest index) and removes
    every remaining box whose IoU with it exceeds ``iou_threshold``. Entries with score -inf
    or NaN are invalid and never selected. Runs ``max_output`` steps at most and stops early
    when nothing is left; each step is O(N), no [N, N] matrix is built.

    Args:
      boxes: float32 [N, 4] (y1, x1, y2, x2).
      scores: float32 [N].
      iou_threshold: Python float or scalar array; suppress IoU > threshold.
      max_output: static int, number of returned indices.

    Returns:
      (indices int32 [max_output] into N in selection order, padded with -1;
       count int32 [] number of valid indices).
    """
    boxes = jnp.asarray(boxes, jnp.float32)
    scores = jnp.asarray(scores, jnp.float32)
    n = boxes.shape[0]
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or scores.shape != (n,):
        raise ValueError(f"nms expects boxes [N,4] and scores [N], got {boxes.shape} and "
                         f"{scores.shape}")
    out = jnp.full((max_output,), -1, jnp.int32)
    if n == 0 or max_output == 0:
        return out, jnp.zeros((), jnp.int32)
    remaining = jnp.where(jnp.isnan(scores), -jnp.inf, scores)
    box_area = area(boxes)

    def cond(state):
        step, remaining, _ = state
        return (step < max_output) & jnp.any(remaining > -jnp.inf)

    def body(state):
        step, remaining, out = state
        best = jnp.argmax(remaining).astype(jnp.int32)
        box = boxes[best]
        top_left = jnp.maximum(box[:2], boxes[:, :2])
        bottom_right = jnp.minimum(box[2:], boxes[:, 2:])
        wh = jnp.maximum(bottom_right - top_left, 0.0)
        inter = wh[:, 0] * wh[:, 1]
        union = box_area[best] + box_area - inter
        overlap = jnp.where((box_area[best] > 0) & (box_area > 0),
                            inter / jnp.maximum(union, 1e-12), 0.0)
        suppressed = (overlap > iou_threshold) | (jnp.arange(n) == best)
        return step + 1, jnp.where(suppressed, -jnp.inf, remaining), out.at[step].set(best)

    count, _, out = lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), remaining, out))
    return out, count


def batched_nms(boxes: jax.Array, scores: jax.Array, classes: jax.Array,
                iou_threshold: float, max_output: int) -> tuple[jax.Array, jax.Array]:
    """Per-class greedy NMS: boxes of different classes never suppress each other.

    Each class is shifted to its own disjoint coordinate range, then plain ``nms`` runs once.

    Args:
      boxes: float32 [N, 4] (y1, x1, y2, x2).
      scores: float32 [N] (-inf / NaN = invalid entry).
      classes: int32 [N] class ids (any non-negative or negative ints).
      iou_threshold: suppress IoU > threshold within a class.
      max_output: static int.

    Returns:
      (indices int32 [max_output] padded with -1, count int32 []) as in ``nms``.
    """
    boxes = jnp.asarray(boxes, jnp.float32)
    classes = jnp.asarray(classes, jnp.int32)
    if boxes.shape[0] == 0:
        return nms(boxes, scores, iou_threshold, max_output)
    finite = jnp.isfinite(boxes)
    lo = jnp.min(jnp.where(finite, boxes, jnp.inf))
    hi = jnp.max(jnp.where(finite, boxes, -jnp.inf))
    span = hi - lo + 1.0
    shifted = boxes - lo + (classes - jnp.min(classes)).astype(jnp.float32)[:, None] * span
    return nms(shifted, scores, iou_threshold, max_output)
