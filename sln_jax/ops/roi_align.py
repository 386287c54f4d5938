"""ROIAlign with torchvision's ``roi_align(..., aligned=True)`` semantics, written with gathers.

For a box (y1, x1, y2, x2) in input pixels and a feature map of stride 1 / spatial_scale, the
box in feature coordinates starts at y1 * scale - 0.5 (the half-pixel offset: feature cell i
has its centre at i + 0.5). Its height is split into ``output_size`` bins, each sampled at
``sampling_ratio`` evenly spaced points per axis (the centres of equal sub-bins); a bin's value
is the mean over its sampling_ratio^2 samples. A sample is bilinearly interpolated; samples
with y < -1 or y > H (likewise x) contribute 0, otherwise coordinates below 0 are raised to 0
and those past the last cell are clamped onto it.

Bilinear sampling on a Cartesian grid is separable, so per ROI we build the two row indices
and weights of each y sample and the two column indices and weights of each x sample, gather
the 4 corners of every (y, x) sample from the flattened map and reduce. The multi-level
version flattens all FPN levels into one table so each ROI is gathered at its own level only.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["roi_align", "multilevel_roi_align", "fpn_levels"]


def _axis_samples(start: jax.Array, length: jax.Array, size: jax.Array, output_size: int,
                  sampling_ratio: int) -> tuple[jax.Array, jax.Array]:
    """Corner indices and bilinear weights of the samples along one axis.

    Args:
      start: float32 [N] box start in feature coordinates (offset already applied).
      length: float32 [N] box length in feature cells.
      size: int32 [N] or [] feature map length along this axis.
      output_size, sampling_ratio: static ints.

    Returns:
      (indices int32 [N, S, 2], weights float32 [N, S, 2]) with S = output_size *
      sampling_ratio: (low, high) cell and weight of each sample, weights 0 for samples
      outside [-1, size].
    """
    count = output_size * sampling_ratio
    step = length / count  # sub-bin length
    pos = start[:, None] + (jnp.arange(count, dtype=jnp.float32) + 0.5) * step[:, None]
    size = jnp.broadcast_to(jnp.asarray(size, jnp.int32), start.shape)[:, None]
    inside = (pos >= -1.0) & (pos <= size.astype(jnp.float32))
    pos = jnp.maximum(pos, 0.0)
    low = jnp.floor(pos).astype(jnp.int32)
    at_end = low >= size - 1
    low = jnp.where(at_end, size - 1, low)
    high = jnp.where(at_end, size - 1, low + 1)
    pos = jnp.where(at_end, low.astype(jnp.float32), pos)
    frac = pos - low.astype(jnp.float32)
    weights = jnp.stack([1.0 - frac, frac], axis=-1) * inside[..., None]
    return jnp.stack([low, high], axis=-1), weights


def _roi_align_flat(table: jax.Array, boxes: jax.Array, heights: jax.Array, widths: jax.Array,
                    offsets: jax.Array, scales: jax.Array, output_size: int,
                    sampling_ratio: int) -> jax.Array:
    """ROIAlign of each box on its own map, the maps stored row-major in one table.

    Args:
      table: [T, C] concatenation of flattened [H_l * W_l, C] maps.
      boxes: float32 [N, 4] (y1, x1, y2, x2) input pixels.
      heights, widths, offsets: int32 [N] height, width and first table row of each box's map.
      scales: float32 [N] spatial scale (1 / stride) of each box's map.

    Returns:
      [N, output_size, output_size, C] in the table's dtype.
    """
    boxes = jnp.asarray(boxes, jnp.float32)
    n = boxes.shape[0]
    scaled = boxes * scales[:, None] - 0.5
    rows, wy = _axis_samples(scaled[:, 0], scaled[:, 2] - scaled[:, 0], heights,
                             output_size, sampling_ratio)
    cols, wx = _axis_samples(scaled[:, 1], scaled[:, 3] - scaled[:, 1], widths,
                             output_size, sampling_ratio)
    # Flat index and weight of every corner of every sample, grouped per output bin:
    # [N, out, out, K] with K = 4 * sampling_ratio^2 terms whose weighted sum is the bin.
    flat = (offsets[:, None, None, None, None] + rows[:, :, :, None, None]
            * widths[:, None, None, None, None] + cols[:, None, None, :, :])
    weight = wy[:, :, :, None, None] * wx[:, None, None, :, :] / (sampling_ratio ** 2)
    terms = 4 * sampling_ratio ** 2

    def per_bin(x):
        x = x.reshape(n, output_size, 2 * sampling_ratio, output_size, 2 * sampling_ratio)
        return x.transpose(0, 1, 3, 2, 4).reshape(n, output_size, output_size, terms)

    flat, weight = per_bin(flat), per_bin(weight)

    # Accumulating one term at a time keeps the live gather at [N, out, out, C]; gathering all
    # terms at once materialises a K times larger array and is ~10x slower on CPU.
    def add_term(k, acc):
        values = jnp.take(table, flat[..., k], axis=0, mode="clip").astype(jnp.float32)
        return acc + weight[..., k, None] * values

    init = jnp.zeros((n, output_size, output_size, table.shape[-1]), jnp.float32)
    return lax.fori_loop(0, terms, add_term, init).astype(table.dtype)


def _check_sampling(output_size: int, sampling_ratio: int) -> None:
    if output_size < 1 or sampling_ratio < 1:
        raise ValueError(f"roi_align: output_size and sampling_ratio must be >= 1 (static "
                         f"shapes: no adaptive ratio), got {output_size}, {sampling_ratio}")


def roi_align(features: jax.Array, boxes: jax.Array, output_size: int, spatial_scale: float,
              sampling_ratio: int = 2) -> jax.Array:
    """ROIAlign on one feature map (torchvision ``roi_align(aligned=True)`` semantics).

    Args:
      features: [H, W, C] float feature map.
      boxes: float32 [N, 4] (y1, x1, y2, x2) in input pixels.
      output_size: static int, output side.
      spatial_scale: feature cells per input pixel (1 / stride).
      sampling_ratio: static int >= 1, samples per bin per axis.

    Returns:
      [N, output_size, output_size, C] in the dtype of ``features``.
    """
    _check_sampling(output_size, sampling_ratio)
    if features.ndim != 3:
        raise ValueError(f"roi_align: features must be [H, W, C], got {features.shape}")
    h, w, c = features.shape
    n = boxes.shape[0]
    ints = jnp.ones((n,), jnp.int32)
    return _roi_align_flat(features.reshape(h * w, c), boxes, h * ints, w * ints, 0 * ints,
                           jnp.full((n,), spatial_scale, jnp.float32), output_size,
                           sampling_ratio)


def fpn_levels(boxes: jax.Array, min_level: int = 2, max_level: int = 5,
               canonical_size: float = 224.0, canonical_level: int = 4) -> jax.Array:
    """FPN level of each box: clip(floor(k0 + log2(sqrt(area) / 224 + 1e-8)), min, max).

    Args:
      boxes: float32 [N, 4] (y1, x1, y2, x2) input pixels.

    Returns:
      int32 [N] pyramid level (2 = stride 4).
    """
    boxes = jnp.asarray(boxes, jnp.float32)
    side = jnp.sqrt(jnp.maximum(boxes[:, 2] - boxes[:, 0], 0.0)
                    * jnp.maximum(boxes[:, 3] - boxes[:, 1], 0.0))
    level = jnp.floor(canonical_level + jnp.log2(side / canonical_size + 1e-8))
    return jnp.clip(level, min_level, max_level).astype(jnp.int32)


def multilevel_roi_align(features: Sequence[jax.Array], boxes: jax.Array, output_size: int,
                         sampling_ratio: int = 2, canonical_size: float = 224.0,
                         canonical_level: int = 4) -> jax.Array:
    """ROIAlign over FPN levels P2.. (strides 4, 8, ...), each box pooled at its own level.

    Args:
      features: sequence of [H_l, W_l, C] maps for P2, P3, ... (stride 2^l), same C and dtype.
      boxes: float32 [N, 4] (y1, x1, y2, x2) input pixels.
      output_size: static int; sampling_ratio: static int >= 1.
      canonical_size, canonical_level: FPN level assignment (see ``fpn_levels``).

    Returns:
      [N, output_size, output_size, C] in the features' dtype.
    """
    _check_sampling(output_size, sampling_ratio)
    if not features or any(f.ndim != 3 for f in features):
        raise ValueError("multilevel_roi_align: features must be a non-empty sequence of "
                         f"[H, W, C] maps, got {[getattr(f, 'shape', None) for f in features]}")
    channels = {f.shape[-1] for f in features}
    if len(channels) != 1:
        raise ValueError(f"multilevel_roi_align: all levels need the same channels, got "
                         f"{[f.shape for f in features]}")
    min_level = 2
    max_level = min_level + len(features) - 1
    level = fpn_levels(boxes, min_level, max_level, canonical_size, canonical_level) - min_level
    heights = [f.shape[0] for f in features]
    widths = [f.shape[1] for f in features]
    starts = [0]
    for h, w in zip(heights, widths):
        starts.append(starts[-1] + h * w)
    table = jnp.concatenate([f.reshape(-1, f.shape[-1]) for f in features], axis=0)
    scales = [1.0 / (2 ** (min_level + i)) for i in range(len(features))]
    return _roi_align_flat(table, boxes, jnp.asarray(heights, jnp.int32)[level],
                           jnp.asarray(widths, jnp.int32)[level],
                           jnp.asarray(starts[:-1], jnp.int32)[level],
                           jnp.asarray(scales, jnp.float32)[level], output_size, sampling_ratio)

