"""Layering maps: how instances stack front to back, in NumPy.

SLN describes a scene by layers (see ``docs/SLN.md`` section 2):

* the **global layering map** counts, at every pixel, the amodal masks covering it;
* an instance's **layering map** gives, on its amodal mask, its depth layer at each
  pixel: 0 where it is visible, ``d`` where ``d`` other instances are in front of it;
* the **depth order** (rank, smaller = nearer) relates the two, and can be recovered from
  visible and amodal masks when an annotation does not give it.

Per-ROI targets are box-relative crops of the instance layering maps (``crop_to_boxes``);
predictions made per ROI go back into the image with ``paste``.

Boxes are ``(y1, x1, y2, x2)`` float pixel edges (a box covering pixel rows 0..9 has
``y1 = 0, y2 = 10``), the convention of ``sln_jax.ops.boxes``.

This module imports nothing from the model: data prep, inference and evaluation share it.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "instance_layers",
    "global_layers",
    "order_from_visibility",
    "visible_from_layers",
    "crop_to_boxes",
    "paste",
    "paste_window",
    "masks_to_boxes",
]


def _check_masks(amodal: np.ndarray, name: str = "amodal") -> np.ndarray:
    amodal = np.asarray(amodal)
    if amodal.ndim != 3:
        raise ValueError(f"{name} must be [N, H, W], got shape {amodal.shape}")
    return amodal.astype(bool, copy=False)


def instance_layers(amodal: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Per-instance layering maps from amodal masks and a depth order.

    Args:
      amodal: bool [N, H, W] amodal masks.
      order: int [N] depth rank, smaller = nearer. Ties are allowed only between
        instances whose amodal masks do not overlap.

    Returns:
      int32 [N, H, W]: -1 outside the instance's amodal mask, else the number of
      instances in front of it (strictly smaller rank) whose amodal masks cover the pixel.

    Raises:
      ValueError: on shape mismatch, or when two overlapping instances share a rank
        (their relative depth would be undefined).
    """
    amodal = _check_masks(amodal)
    order = np.asarray(order)
    n, h, w = amodal.shape
    if order.shape != (n,):
        raise ValueError(f"order must have shape ({n},), got {order.shape}")
    if n == 0:
        return np.zeros((0, h, w), np.int32)
    layers = np.full((n, h, w), -1, np.int32)
    boxes = masks_to_boxes(amodal).astype(np.intp)
    for i in range(n):
        y1, x1, y2, x2 = boxes[i]
        if y2 <= y1:
            continue
        # Only the instance's box matters, and only instances strictly in front of it.
        own = amodal[i, y1:y2, x1:x2]
        front = np.flatnonzero(order < order[i])
        count = amodal[front, y1:y2, x1:x2].sum(axis=0, dtype=np.int32)
        layers[i, y1:y2, x1:x2] = np.where(own, count, -1)
        tied = np.flatnonzero((order == order[i]) & (np.arange(n) > i))
        if tied.size and amodal[tied, y1:y2, x1:x2][:, own].any():
            overlapping = tied[amodal[tied, y1:y2, x1:x2][:, own].any(axis=1)]
            raise ValueError(
                f"instances {[i] + overlapping.tolist()} share depth rank {order[i]} "
                "but their amodal masks overlap")
    return layers


def global_layers(amodal: np.ndarray, num_layers: int) -> np.ndarray:
    """Global layering map: how many amodal masks cover each pixel.

    Args:
      amodal: bool [N, H, W] amodal masks (N may be 0).
      num_layers: K, the number of layer classes; counts are clipped to K - 1, so class
        K - 1 means "K - 1 or more objects".

    Returns:
      int32 [H, W] with values in [0, K - 1].
    """
    amodal = _check_masks(amodal)
    if num_layers < 2:
        raise ValueError(f"num_layers must be >= 2, got {num_layers}")
    return np.minimum(amodal.sum(axis=0, dtype=np.int32), num_layers - 1)


def visible_from_layers(layers: np.ndarray) -> np.ndarray:
    """Visible (modal) masks from layering maps: bool [N, H, W] = ``layers == 0``."""
    return np.asarray(layers) == 0


def order_from_visibility(amodal: np.ndarray, visible: np.ndarray,
                          min_pixels: int = 1) -> np.ndarray:
    """A depth rank consistent with visible and amodal masks.

    Instance i is in front of j when i is visible on at least ``min_pixels`` pixels where
    j is hidden (in j's amodal mask but not in its visible mask). Pairs whose overlap is
    hidden by a third instance carry no information and are left to the topological
    sort's tie-break (lowest index first).

    Args:
      amodal: bool [N, H, W] amodal masks.
      visible: bool [N, H, W] visible masks.
      min_pixels: evidence needed for an edge; larger values ignore annotation noise.

    Returns:
      int32 [N] ranks 0..N-1, smaller = nearer.

    Raises:
      ValueError: naming the instances when the "in front of" relation has a cycle
        (including i in front of j and j in front of i).
    """
    amodal = _check_masks(amodal)
    visible = _check_masks(visible, "visible")
    if visible.shape != amodal.shape:
        raise ValueError(f"visible {visible.shape} and amodal {amodal.shape} differ")
    n = amodal.shape[0]
    if n == 0:
        return np.zeros((0,), np.int32)
    vis = visible.reshape(n, -1).astype(np.float32)
    hidden = (amodal & ~visible).reshape(n, -1).astype(np.float32)
    evidence = vis @ hidden.T  # [i, j] = pixels where i is seen and j is hidden
    front = evidence >= min_pixels
    np.fill_diagonal(front, False)
    indegree = front.sum(axis=0)
    rank = np.full(n, -1, np.int32)
    ready = sorted(np.flatnonzero(indegree == 0).tolist())
    next_rank = 0
    while ready:
        i = ready.pop(0)
        rank[i] = next_rank
        next_rank += 1
        for j in np.flatnonzero(front[i]):
            indegree[j] -= 1
            if indegree[j] == 0:
                ready.append(int(j))
        ready.sort()
    if next_rank < n:
        # Peel off nodes that only lead out of the cycle, so the message names the cycle.
        left = rank < 0
        while True:
            sinks = left & ~(front[:, left].any(axis=1))
            if not sinks.any():
                break
            left &= ~sinks
        cyclic = np.flatnonzero(left).tolist()
        raise ValueError(f"visible masks of instances {cyclic} form a depth cycle "
                         "(each is seen where another of them is hidden)")
    return rank


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight boxes of masks.

    Args:
      masks: bool [N, H, W].

    Returns:
      float32 [N, 4] (y1, x1, y2, x2) pixel edges; all zeros for an empty mask.
    """
    masks = _check_masks(masks, "masks")
    n = masks.shape[0]
    boxes = np.zeros((n, 4), np.float32)
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    for i in range(n):
        ys, xs = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
        if ys.size:
            boxes[i] = (ys[0], xs[0], ys[-1] + 1, xs[-1] + 1)
    return boxes


def _cell_centers(lo: np.ndarray, hi: np.ndarray, size: int) -> np.ndarray:
    """float64 [N, size] centers of ``size`` equal cells spanning [lo, hi] per row."""
    frac = (np.arange(size) + 0.5) / size
    return lo[:, None] + (hi - lo)[:, None] * frac[None, :]


def crop_to_boxes(maps: np.ndarray, boxes: np.ndarray, size: int,
                  method: str = "nearest", fill: float = -1) -> np.ndarray:
    """Crop each map to its box and resample it to ``size x size``.

    The crop is box-relative, so it is invariant to resizing the image and a horizontal
    flip of the image is a horizontal flip of the crop.

    Args:
      maps: [N, H, W] any numeric dtype (e.g. int32 layers, float32 sem-dist).
      boxes: float [N, 4] (y1, x1, y2, x2) pixel edges.
      size: output side R.
      method: 'nearest' (the pixel containing each cell center; for labels) or
        'bilinear' (pixel-center interpolation with edge clamping; for continuous maps).
      fill: value of cells whose center lies outside the image.

    Returns:
      [N, size, size]: the dtype of ``maps`` for 'nearest', float32 for 'bilinear'.
    """
    maps = np.asarray(maps)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if maps.ndim != 3 or boxes.shape[0] != maps.shape[0]:
        raise ValueError(f"maps [N,H,W] and boxes [N,4] must agree, got {maps.shape} "
                         f"and {boxes.shape}")
    n, h, w = maps.shape
    ys = _cell_centers(boxes[:, 0], boxes[:, 2], size)  # [N, R]
    xs = _cell_centers(boxes[:, 1], boxes[:, 3], size)
    inside = ((ys >= 0) & (ys < h))[:, :, None] & ((xs >= 0) & (xs < w))[:, None, :]
    idx = np.arange(n)[:, None, None]
    if method == "nearest":
        yi = np.clip(np.floor(ys), 0, h - 1).astype(np.intp)
        xi = np.clip(np.floor(xs), 0, w - 1).astype(np.intp)
        out = maps[idx, yi[:, :, None], xi[:, None, :]]
    elif method == "bilinear":
        out = _bilinear(maps, ys - 0.5, xs - 0.5)
        return np.where(inside, out, fill).astype(np.float32)
    else:
        raise ValueError(f"method must be 'nearest' or 'bilinear', got {method!r}")
    return np.where(inside, out, fill).astype(maps.dtype)


def _bilinear(maps: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Separable bilinear sampling of [N, H, W] at pixel-center coords ys [N, A], xs [N, B].

    Returns float64 [N, A, B]; only the sampled values are converted to float64.
    """
    n, h, w = maps.shape
    ys = np.clip(ys, 0, h - 1)
    xs = np.clip(xs, 0, w - 1)
    y0 = np.floor(ys).astype(np.intp)
    x0 = np.floor(xs).astype(np.intp)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    wy = (ys - y0)[:, :, None]
    wx = (xs - x0)[:, None, :]
    # Gathers by flat index: np.take is about twice as fast as 3-D fancy indexing.
    flat = np.ascontiguousarray(maps).reshape(-1)
    rows = np.arange(n)[:, None] * h

    def at(yy, xx):
        return flat.take((rows + yy)[:, :, None] * w + xx[:, None, :]).astype(np.float64)

    top = at(y0, x0) * (1 - wx) + at(y0, x1) * wx
    bottom = at(y1, x0) * (1 - wx) + at(y1, x1) * wx
    return top * (1 - wy) + bottom * wy


def paste_window(roi_map: np.ndarray, box: np.ndarray,
                 image_size: tuple[int, int]) -> tuple[int, int, np.ndarray]:
    """Paste one ROI map into the window of the image its box covers (bilinear).

    The values equal ``paste``'s inside the window (``paste`` is 0 outside it); working on
    the window alone avoids image-sized arrays per detection.

    Args:
      roi_map: float [R, R] or [R, R, C] map over the box.
      box: float [4] (y1, x1, y2, x2) pixel edges in the output image.
      image_size: (H, W) of the output.

    Returns:
      (top, left, values): values float32 [h, w] or [h, w, C] for rows top..top+h-1 and
      columns left..left+w-1 of the image (h or w is 0 for a box outside the image or empty).
    """
    roi_map = np.asarray(roi_map, np.float32)
    if roi_map.ndim not in (2, 3) or roi_map.shape[0] != roi_map.shape[1]:
        raise ValueError(f"roi_map must be [R, R(, C)], got {roi_map.shape}")
    h, w = image_size
    r = roi_map.shape[0]
    channels = roi_map.shape[2:]
    y1, x1, y2, x2 = np.asarray(box, np.float64).reshape(4)
    bh, bw = y2 - y1, x2 - x1
    top, left = max(int(np.floor(y1)), 0), max(int(np.floor(x1)), 0)
    bottom, right = min(int(np.ceil(y2)), h), min(int(np.ceil(x2)), w)
    if bh <= 0 or bw <= 0 or bottom <= top or right <= left:
        return 0, 0, np.zeros((0, 0) + channels, np.float32)
    py = np.arange(top, bottom) + 0.5
    px = np.arange(left, right) + 0.5
    inside = ((py >= y1) & (py < y2))[:, None] & ((px >= x1) & (px < x2))[None, :]
    # ROI cell c has its center at y1 + (c + 0.5) * bh / R.
    sy = (py - y1) * r / bh - 0.5
    sx = (px - x1) * r / bw - 0.5
    src = roi_map if not channels else np.moveaxis(roi_map, -1, 0)
    flat = src.reshape(-1, r, r)
    vals = _bilinear(flat, np.broadcast_to(sy, (flat.shape[0], sy.size)),
                     np.broadcast_to(sx, (flat.shape[0], sx.size)))
    vals = np.where(inside[None], vals, 0.0).astype(np.float32)
    return top, left, (np.moveaxis(vals, 0, -1) if channels else vals[0])


def paste(roi_maps: np.ndarray, boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Paste per-ROI maps back into the image (bilinear), the inverse of ``crop_to_boxes``.

    Args:
      roi_maps: float [N, R, R] or [N, R, R, C] maps over each box (e.g. probabilities).
      boxes: float [N, 4] (y1, x1, y2, x2) pixel edges in the output image.
      image_size: (H, W) of the output.

    Returns:
      float32 [N, H, W] or [N, H, W, C]; 0 outside each box.
    """
    roi_maps = np.asarray(roi_maps, np.float32)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if roi_maps.ndim not in (3, 4) or roi_maps.shape[1] != roi_maps.shape[2]:
        raise ValueError(f"roi_maps must be [N, R, R(, C)], got {roi_maps.shape}")
    if boxes.shape[0] != roi_maps.shape[0]:
        raise ValueError(f"{roi_maps.shape[0]} ROI maps but {boxes.shape[0]} boxes")
    h, w = image_size
    out = np.zeros((roi_maps.shape[0], h, w) + roi_maps.shape[3:], np.float32)
    for i in range(roi_maps.shape[0]):
        top, left, vals = paste_window(roi_maps[i], boxes[i], image_size)
        out[i, top:top + vals.shape[0], left:left + vals.shape[1]] = vals
    return out
