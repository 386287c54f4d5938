"""Pairs of ROIs for the depth-order head: which pairs, their boxes, their labels.

Static shapes throughout: an image's N ROIs give the fixed list of N (N - 1) / 2 unordered
pairs ``upper_pairs(N)``; a fixed number P of them is chosen per image by a priority
(``choose``), and every chosen pair carries a validity flag. The order head then runs on
exactly P pairs per image, whatever the image holds.

All functions take one image's arrays; the model vmaps them over the batch.
"""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp

from sln_jax.ops import sampling

__all__ = ["upper_pairs", "union_boxes", "intersection_boxes", "boxes_intersect",
           "masks_overlap", "choose", "resample_maps", "box_indicator"]

# Side of the grid on which two GT crops are compared for overlap (masks_overlap).
OVERLAP_GRID = 8


def upper_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(first, second) int32 [n (n - 1) / 2] indices of every pair first < second."""
    first, second = np.triu_indices(n, k=1)
    return first.astype(np.int32), second.astype(np.int32)


def union_boxes(a: jax.Array, b: jax.Array) -> jax.Array:
    """Smallest box holding both: a, b float [..., 4] (y1, x1, y2, x2) -> [..., 4]."""
    return jnp.concatenate([jnp.minimum(a[..., :2], b[..., :2]),
                            jnp.maximum(a[..., 2:], b[..., 2:])], axis=-1)


def intersection_boxes(a: jax.Array, b: jax.Array) -> jax.Array:
    """Overlap box of a and b, float [..., 4]; empty (y2 <= y1 or x2 <= x1) when disjoint."""
    return jnp.concatenate([jnp.maximum(a[..., :2], b[..., :2]),
                            jnp.minimum(a[..., 2:], b[..., 2:])], axis=-1)


def boxes_intersect(a: jax.Array, b: jax.Array) -> jax.Array:
    """bool [...]: the boxes overlap with positive area."""
    inter = intersection_boxes(a, b)
    return (inter[..., 2] > inter[..., 0]) & (inter[..., 3] > inter[..., 1])


def masks_overlap(boxes_a: jax.Array, boxes_b: jax.Array, crops_a: jax.Array,
                  crops_b: jax.Array) -> jax.Array:
    """Whether two GT amodal masks overlap, from their box crops.

    Both crops are resampled (nearest) onto an ``OVERLAP_GRID`` grid over the boxes'
    intersection; the masks overlap when some cell is inside both. Objects whose boxes touch
    but whose masks do not (two discs side by side) have no depth order to learn: the
    evaluator scores only pairs whose amodal masks overlap.

    Args:
      boxes_a, boxes_b: float32 [P, 4] GT amodal boxes.
      crops_a, crops_b: int [P, T, T] layer crops of those GTs, -1 outside the amodal mask.

    Returns:
      bool [P].
    """
    inter = intersection_boxes(boxes_a, boxes_b)
    # An empty intersection would give a grid outside both boxes (-1 everywhere): no
    # overlap. Give it a positive size so the resampling's arithmetic stays finite.
    safe = jnp.concatenate([inter[:, :2], jnp.maximum(inter[:, 2:], inter[:, :2] + 1e-3)], -1)
    on_a = sampling.roi_layer_targets(safe, boxes_a, crops_a, OVERLAP_GRID) >= 0
    on_b = sampling.roi_layer_targets(safe, boxes_b, crops_b, OVERLAP_GRID) >= 0
    return boxes_intersect(boxes_a, boxes_b) & jnp.any(on_a & on_b, axis=(1, 2))


def choose(priority: jax.Array, eligible: jax.Array, count: int) -> tuple[jax.Array, jax.Array]:
    """The ``count`` eligible pairs of highest priority.

    Args:
      priority: float [C] (higher first); eligible: bool [C].
      count: static int; more than C is capped at C.

    Returns:
      (index int32 [min(count, C)], valid bool [min(count, C)]): positions in [0, C), and
      whether each chosen pair is eligible (fewer than ``count`` eligible pairs leave the
      rest invalid).
    """
    count = min(int(count), priority.shape[0])
    key = jnp.where(eligible, priority, -jnp.inf)
    _, index = jax.lax.top_k(key, count)
    return index.astype(jnp.int32), eligible[index]


def resample_maps(maps: jax.Array, boxes: jax.Array, targets: jax.Array,
                  output_size: int) -> jax.Array:
    """Per-ROI maps moved onto other boxes' grids (nearest cell, 0 outside the ROI).

    Args:
      maps: float [P, R, R, C], map p covering ``boxes[p]``.
      boxes: float32 [P, 4] boxes the maps cover.
      targets: float32 [P, 4] boxes to sample them on.
      output_size: static int r.

    Returns:
      float [P, r, r, C]: at each cell centre of ``targets[p]``, the cell of map p holding
      it, or 0 outside ``boxes[p]``.
    """
    return sampling.resample_nearest(maps, boxes, targets, output_size, 0)


def box_indicator(boxes: jax.Array, frames: jax.Array, output_size: int) -> jax.Array:
    """float32 [P, r, r]: 1 where a cell centre of ``frames[p]``'s r x r grid lies inside
    ``boxes[p]``, else 0 (boxes, frames float32 [P, 4])."""
    steps = (jnp.arange(output_size, dtype=jnp.float32) + 0.5) / output_size
    ys = frames[:, 0:1] + steps[None] * (frames[:, 2:3] - frames[:, 0:1])
    xs = frames[:, 1:2] + steps[None] * (frames[:, 3:4] - frames[:, 1:2])
    in_y = (ys >= boxes[:, 0:1]) & (ys < boxes[:, 2:3])
    in_x = (xs >= boxes[:, 1:2]) & (xs < boxes[:, 3:4])
    return (in_y[:, :, None] & in_x[:, None, :]).astype(jnp.float32)
