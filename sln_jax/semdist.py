"""Semantics-aware distance maps (sem-dist maps), in NumPy.

For instance i with layering map L_i (``sln_jax.layering.instance_layers``) and K levels:

    M_i(p) = K - min(L_i(p), K - 1) + d_i(p)   on the amodal mask (L_i(p) >= 0),
    M_i(p) = 0                                 outside,

where d_i(p) in [0, 1) is a normalized distance transform of p inside its own level
region: 0 on the region's border, rising toward its interior (``distance=False`` gives the
integer variant, d = 0). Hence floor(M) = K - L on the amodal mask:

* modal (visible) mask  = {floor(M) == K}
* amodal mask           = {M >= 1}
* occluded part         = {1 <= floor(M) < K}
* layer                 = K - floor(M)

Layers deeper than K - 1 are clipped to K - 1 ("K - 1 or deeper"): with K levels the map
distinguishes visible, occluded once, ..., occluded K - 1 or more times. ``decode`` then
returns the clipped layers. See ``docs/SLN.md`` section 2.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

__all__ = ["encode", "encode_window", "decode", "depth_order", "MAX_FRACTION"]

# The fractional term stays strictly below 1 so that float32 floor() recovers the level.
MAX_FRACTION = np.float32(1.0 - 2.0 ** -10)


@functools.lru_cache(maxsize=None)
def _level_codes(num_levels: int) -> np.ndarray:
    """float32 [256] lookup table: layer code c = L + 1 -> K - L (0 for c = 0); read-only."""
    table = np.zeros(256, np.float32)
    table[1:num_levels + 1] = num_levels - np.arange(num_levels)
    table.flags.writeable = False
    return table


def encode_window(codes: np.ndarray, num_levels: int, out: np.ndarray) -> np.ndarray:
    """Sem-dist map of one instance over a window, from its layer codes.

    The building block of ``encode`` and of the conversion targets: everything runs over
    the window, and each distance transform over its level's own box (with the zero
    border, exactly the transform over the whole map).

    Args:
      codes: uint8 [h + 2, w + 2] layer codes ``min(L, K - 1) + 1``, 0 outside the amodal
        mask, with a border of one pixel of zeros (so a window cut by the image edge
        treats the edge as a region border, as the whole-map transform does).
      num_levels: K >= 2.
      out: float32 [h, w] written with the sem-dist map of the window.

    Returns:
      float64 [K + 1] pixel counts of each code 0..K over the window.
    """
    inner = codes[1:-1, 1:-1]
    counts = cv2.calcHist([inner], [0], None, [num_levels + 1],
                          [0, num_levels + 1]).ravel().astype(np.float64)
    out[...] = cv2.LUT(inner, _level_codes(num_levels))
    present = np.flatnonzero(counts[1:]) + 1
    for code in present:
        region = cv2.compare(codes, int(code), cv2.CMP_EQ)
        if present.size > 1:
            x, y, w, h = cv2.boundingRect(region)
            region = region[y - 1:y + h + 1, x - 1:x + w + 1]
            target = out[y - 1:y - 1 + h, x - 1:x - 1 + w]
        else:
            target = out
        # A zero border makes the image edge count as a region border, as it is a border
        # of what the map describes.
        dist = cv2.distanceTransform(region, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
        peak = float(dist.max())
        if peak <= 0:
            continue
        # The transform is 0 outside the region, so clipping at 0 also zeroes the outside
        # (OpenCV's threshold is a faster clip).
        dist -= 1.0
        np.divide(dist, peak, out=dist)
        dist = cv2.threshold(dist, 0.0, 0.0, cv2.THRESH_TOZERO)[1]
        if peak > 1.0 / (1.0 - MAX_FRACTION):
            np.minimum(dist, MAX_FRACTION, out=dist)
        target += dist
    return counts


def encode(layers: np.ndarray, num_levels: int, distance: bool = True) -> np.ndarray:
    """Sem-dist maps from instance layering maps.

    Args:
      layers: int [N, H, W], -1 outside each instance's amodal mask, else its depth
        layer (0 = visible).
      num_levels: K >= 2; layers are clipped to K - 1.
      distance: add the fractional distance term d in [0, 1); False gives integer maps.

    Returns:
      float32 [N, H, W]: 0 outside the amodal mask, K - min(L, K - 1) + d on it.
    """
    layers = np.asarray(layers)
    if layers.ndim != 3:
        raise ValueError(f"layers must be [N, H, W], got shape {layers.shape}")
    if num_levels < 2:
        raise ValueError(f"num_levels must be >= 2, got {num_levels}")
    if num_levels > 254:
        raise ValueError(f"num_levels must be at most 254 (uint8 layer codes), got "
                         f"{num_levels}")
    if layers.size and layers.min() < -1:
        raise ValueError(f"layers must be >= -1, got minimum {layers.min()}")
    if not distance:
        clipped = np.minimum(layers, num_levels - 1)
        return np.where(clipped >= 0, num_levels - clipped, 0).astype(np.float32)
    semdist = np.zeros(layers.shape, np.float32)
    for i in range(layers.shape[0]):
        on = layers[i] >= 0
        rows, cols = np.flatnonzero(on.any(axis=1)), np.flatnonzero(on.any(axis=0))
        if not rows.size:
            continue
        # Everything over the instance's box: objects are small in images.
        window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        codes = np.zeros((rows[-1] - rows[0] + 3, cols[-1] - cols[0] + 3), np.uint8)
        codes[1:-1, 1:-1] = np.minimum(layers[i][window], num_levels - 1) + 1
        encode_window(codes, num_levels, semdist[i][window])
    return semdist


def decode(semdist: np.ndarray, num_levels: int) -> dict[str, np.ndarray]:
    """Masks and layers from sem-dist maps (exact inverse of ``encode`` on its range).

    Values are read by their integer part: below 1 is background, K and above is visible.
    Predicted (regressed) maps can be passed as they are.

    Args:
      semdist: float [..., H, W] (typically [N, H, W]).
      num_levels: K used by ``encode``.

    Returns:
      dict with ``amodal``, ``modal``, ``occluded`` (bool, same shape as ``semdist``) and
      ``layers`` (int32, -1 outside the amodal mask, else 0..K-1).
    """
    semdist = np.asarray(semdist, np.float32)
    if num_levels < 2:
        raise ValueError(f"num_levels must be >= 2, got {num_levels}")
    if np.isnan(semdist).any():
        raise ValueError("sem-dist map contains NaN")
    level = np.clip(np.floor(semdist), 0, num_levels).astype(np.int32)
    amodal = level >= 1
    modal = level == num_levels
    return {
        "amodal": amodal,
        "modal": modal,
        "occluded": amodal & ~modal,
        "layers": np.where(amodal, num_levels - level, -1).astype(np.int32),
    }


def depth_order(layers: np.ndarray) -> np.ndarray:
    """Pairwise depth order from instance layering maps.

    i is in front of j when, on the intersection of their amodal masks, the mean layer of
    i is smaller than the mean layer of j.

    Args:
      layers: int [N, H, W], -1 outside each amodal mask.

    Returns:
      int8 [N, N]: +1 where i is in front of j, -1 behind, 0 for no overlap or a tie
      (and on the diagonal).
    """
    layers = np.asarray(layers)
    if layers.ndim != 3:
        raise ValueError(f"layers must be [N, H, W], got shape {layers.shape}")
    n = layers.shape[0]
    on = (layers >= 0).reshape(n, layers[0].size if n else 0).astype(np.float64)
    values = np.where(layers >= 0, layers, 0).reshape(on.shape).astype(np.float64)
    # sums[i, j] = sum of L_i over the overlap of i and j; both means share a denominator.
    sums = values @ on.T
    overlap = on @ on.T
    order = np.sign(sums.T - sums) * (overlap > 0)
    np.fill_diagonal(order, 0)
    return order.astype(np.int8)
