"""Static-shape training targets: RPN anchor labels, ROI sampling and per-ROI mask targets.

All functions work on one image (the model vmaps them over the batch), use fixed shapes with
validity masks, and draw their randomness from an explicit PRNG key. Random subsampling to a
budget ranks the candidates of a group by a random key (an argsort, so the selected subset is
a uniform random one) and keeps the first ``budget`` of them.

Boxes are (y1, x1, y2, x2) pixels (see ``sln_jax.ops.boxes``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sln_jax.ops import boxes as box_ops

__all__ = ["rpn_targets", "sample_rois", "roi_layer_targets", "roi_semdist_targets",
           "crop_coordinates", "resample_nearest"]


def _random_ranks(key: jax.Array, members: jax.Array) -> jax.Array:
    """int32 [N]: a uniformly random order of the ``members`` (bool [N]) as ranks 0..count-1;
    non-members get ranks >= count."""
    priority = jnp.where(members, jax.random.uniform(key, members.shape), 2.0)
    order = jnp.argsort(priority)
    return jnp.zeros(members.shape, jnp.int32).at[order].set(
        jnp.arange(members.shape[0], dtype=jnp.int32))


def _match(candidates: jax.Array, gt_boxes: jax.Array,
           gt_valid: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """IoU matrix [N, M] (-1 on invalid GT), best IoU [N] and best GT index int32 [N]."""
    overlaps = jnp.where(gt_valid[None, :], box_ops.iou(candidates, gt_boxes), -1.0)
    return overlaps, jnp.max(overlaps, axis=1), jnp.argmax(overlaps, axis=1).astype(jnp.int32)


def _safe_encode(targets: jax.Array, references: jax.Array, use: jax.Array) -> jax.Array:
    """Encoded deltas where ``use`` (bool [N]), 0 elsewhere, without NaNs from empty boxes."""
    ok = use & (box_ops.area(targets) > 0) & (box_ops.area(references) > 0)
    unit = jnp.array([0.0, 0.0, 1.0, 1.0], jnp.float32)
    deltas = box_ops.encode(jnp.where(ok[:, None], targets, unit),
                            jnp.where(ok[:, None], references, unit))
    return jnp.where(ok[:, None], deltas, 0.0)


def rpn_targets(anchors: jax.Array, gt_boxes: jax.Array, gt_valid: jax.Array, rng: jax.Array,
                batch_per_image: int = 256, positive_fraction: float = 0.5,
                positive_iou: float = 0.7, negative_iou: float = 0.3) -> dict[str, jax.Array]:
    """Sampled objectness labels and box targets of the anchors of one image.

    An anchor is positive when its best IoU with a valid GT is >= ``positive_iou``, negative
    when < ``negative_iou``, ignored in between; in addition the anchor(s) with the highest
    IoU of every valid GT (if > 0) are positive (Detectron's low-quality matches). Then at most
    ``batch_per_image * positive_fraction`` positives are kept at random and negatives fill the
    rest of the budget; everything else is -1. Without any valid GT all sampled are negatives.

    Args:
      anchors: float32 [A, 4].
      gt_boxes: float32 [M, 4].
      gt_valid: bool [M].
      rng: PRNG key.
      batch_per_image, positive_fraction: static Python numbers (the positive budget is
        int(batch_per_image * positive_fraction)).
      positive_iou, negative_iou: IoU thresholds (may be traced).

    Returns:
      dict with ``labels`` int32 [A] (1 positive, 0 negative, -1 ignored / not sampled) and
      ``box_targets`` float32 [A, 4] deltas (``encode``) of the matched GT, 0 unless positive.
    """
    anchors = jnp.asarray(anchors, jnp.float32)
    gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
    gt_valid = jnp.asarray(gt_valid, bool) & (box_ops.area(gt_boxes) > 0)
    overlaps, best_iou, matched = _match(anchors, gt_boxes, gt_valid)
    best_per_gt = jnp.max(overlaps, axis=0)  # [M]
    low_quality = jnp.any((overlaps == best_per_gt[None, :]) & gt_valid[None, :]
                          & (best_per_gt[None, :] > 0), axis=1)
    positive = (best_iou >= positive_iou) | low_quality
    negative = ~positive & (best_iou < negative_iou)

    pos_key, neg_key = jax.random.split(rng)
    max_positive = int(batch_per_image * positive_fraction)
    keep_positive = positive & (_random_ranks(pos_key, positive) < max_positive)
    num_negative = batch_per_image - jnp.sum(keep_positive)
    keep_negative = negative & (_random_ranks(neg_key, negative) < num_negative)

    labels = jnp.where(keep_positive, 1, jnp.where(keep_negative, 0, -1)).astype(jnp.int32)
    return {"labels": labels,
            "box_targets": _safe_encode(gt_boxes[matched], anchors, keep_positive)}


def sample_rois(proposals: jax.Array, proposal_valid: jax.Array, gt_boxes: jax.Array,
                gt_classes: jax.Array, gt_valid: jax.Array, rng: jax.Array, num_rois: int,
                positive_fraction: float, positive_iou: float = 0.5,
                append_gt: bool = True) -> dict[str, jax.Array]:
    """Sample a fixed number of training ROIs from the proposals of one image.

    The valid GT boxes are appended to the proposals (as Detectron does, so every GT has at
    least one positive). A candidate is positive when its best IoU with a valid GT is
    >= ``positive_iou``, else background. At most ``num_rois * positive_fraction`` positives
    are drawn at random, backgrounds fill the rest; if there are too few candidates the tail
    is padding (``valid`` False). Sampled positives come first, then backgrounds, then padding.

    Args:
      proposals: float32 [P, 4]; proposal_valid: bool [P].
      gt_boxes: float32 [M, 4]; gt_classes: int32 [M] (1..C); gt_valid: bool [M].
      rng: PRNG key.
      num_rois: static int; positive_fraction: static float (budget
        int(num_rois * positive_fraction)); positive_iou: float (may be traced).
      append_gt: static bool.

    Returns:
      dict: ``rois`` float32 [num_rois, 4]; ``classes`` int32 [num_rois] (0 = background or
      padding); ``matched_gt`` int32 [num_rois] index into M (meaningful for positives);
      ``box_targets`` float32 [num_rois, 4] deltas of the matched GT, 0 unless positive;
      ``is_positive`` bool [num_rois]; ``valid`` bool [num_rois].
    """
    proposals = jnp.asarray(proposals, jnp.float32)
    gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
    gt_classes = jnp.asarray(gt_classes, jnp.int32)
    gt_valid = jnp.asarray(gt_valid, bool) & (box_ops.area(gt_boxes) > 0)
    candidates, valid = proposals, jnp.asarray(proposal_valid, bool)
    if append_gt:
        candidates = jnp.concatenate([candidates, gt_boxes], axis=0)
        valid = jnp.concatenate([valid, gt_valid], axis=0)
    shortfall = num_rois - candidates.shape[0]
    if shortfall > 0:  # static: fewer candidates than the budget, pad with invalid entries
        candidates = jnp.concatenate([candidates, jnp.zeros((shortfall, 4), jnp.float32)])
        valid = jnp.concatenate([valid, jnp.zeros((shortfall,), bool)])

    _, best_iou, matched = _match(candidates, gt_boxes, gt_valid)
    foreground = valid & (best_iou >= positive_iou)
    background = valid & ~foreground

    fg_key, bg_key, order_key = jax.random.split(rng, 3)
    max_positive = int(num_rois * positive_fraction)
    keep_fg = foreground & (_random_ranks(fg_key, foreground) < max_positive)
    keep_bg = background & (_random_ranks(bg_key, background) < num_rois - jnp.sum(keep_fg))
    # Sort key: kept positives, then kept backgrounds, then the rest (padding).
    noise = jax.random.uniform(order_key, valid.shape)
    sort_key = jnp.where(keep_fg, noise, jnp.where(keep_bg, 1.0 + noise, 3.0))
    chosen = jnp.argsort(sort_key)[:num_rois]

    is_positive = keep_fg[chosen]
    roi_valid = is_positive | keep_bg[chosen]
    rois = candidates[chosen]
    matched = matched[chosen]
    matched_boxes = gt_boxes[matched]
    return {
        "rois": rois,
        "classes": jnp.where(is_positive, gt_classes[matched], 0).astype(jnp.int32),
        "matched_gt": matched,
        "box_targets": _safe_encode(matched_boxes, rois, is_positive),
        "is_positive": is_positive,
        "valid": roi_valid,
    }


def crop_coordinates(rois: jax.Array, gt_boxes: jax.Array, crop_size: int,
                      output_size: int) -> tuple[jax.Array, jax.Array]:
    """Centres of the ROI's output cells in the GT crop's cell units: ys, xs float32 [N, out].

    Crop cell j of the P x P GT crop spans [j, j + 1) in these units (it covers the GT box
    evenly), so a value outside [0, P) lies outside the GT box.
    """
    rois = jnp.asarray(rois, jnp.float32)
    gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
    frac = (jnp.arange(output_size, dtype=jnp.float32) + 0.5) / output_size

    def axis(lo, hi, glo, ghi):
        centers = lo[:, None] + (hi - lo)[:, None] * frac[None, :]
        length = ghi - glo
        scale = jnp.where(length > 0, crop_size / jnp.where(length > 0, length, 1.0), 0.0)
        # Degenerate GT boxes map everything to -1, i.e. outside.
        return jnp.where(length[:, None] > 0, (centers - glo[:, None]) * scale[:, None], -1.0)

    ys = axis(rois[:, 0], rois[:, 2], gt_boxes[:, 0], gt_boxes[:, 2])
    xs = axis(rois[:, 1], rois[:, 3], gt_boxes[:, 1], gt_boxes[:, 3])
    return ys, xs


def _check_crops(crops: jax.Array, rois: jax.Array, gt_boxes: jax.Array, name: str) -> None:
    if crops.ndim != 3 or crops.shape[1] != crops.shape[2] or rois.shape != gt_boxes.shape \
            or crops.shape[0] != rois.shape[0]:
        raise ValueError(f"{name}: expected rois [N,4], gt_boxes [N,4], crops [N,P,P], got "
                         f"{rois.shape}, {gt_boxes.shape}, {crops.shape}")


def roi_layer_targets(rois: jax.Array, gt_boxes: jax.Array, gt_layers: jax.Array,
                      output_size: int) -> jax.Array:
    """Resample each GT's box-cropped layer map onto its ROI's output grid (nearest).

    Args:
      rois: float32 [N, 4] sampled ROIs.
      gt_boxes: float32 [N, 4] amodal box of each ROI's matched GT.
      gt_layers: int8 [N, P, P] the GT's layer map cropped to its box, -1 outside the mask.
      output_size: static int R.

    Returns:
      int32 [N, R, R]: the crop cell containing each output cell centre; -1 where the centre
      lies outside the GT box.
    """
    gt_layers = jnp.asarray(gt_layers)
    _check_crops(gt_layers, jnp.asarray(rois), jnp.asarray(gt_boxes), "roi_layer_targets")
    return resample_nearest(gt_layers.astype(jnp.int32), gt_boxes, rois, output_size, -1)


def resample_nearest(crops: jax.Array, crop_boxes: jax.Array, rois: jax.Array,
                     output_size: int, fill) -> jax.Array:
    """Box crops moved onto other boxes' grids, nearest cell.

    Args:
      crops: [N, P, P, ...] crop n covering ``crop_boxes[n]`` evenly.
      crop_boxes: float32 [N, 4]; rois: float32 [N, 4] the boxes to sample on.
      output_size: static int R.
      fill: the value where an output cell centre lies outside the crop's box.

    Returns:
      [N, R, R, ...] in the crops' dtype: the crop cell holding each output cell centre.
    """
    p = crops.shape[1]
    ys, xs = crop_coordinates(rois, crop_boxes, p, output_size)
    inside = ((ys >= 0) & (ys < p))[:, :, None] & ((xs >= 0) & (xs < p))[:, None, :]
    yi = jnp.clip(jnp.floor(ys), 0, p - 1).astype(jnp.int32)
    xi = jnp.clip(jnp.floor(xs), 0, p - 1).astype(jnp.int32)
    n = crops.shape[0]
    values = crops[jnp.arange(n)[:, None, None], yi[:, :, None], xi[:, None, :]]
    inside = inside.reshape(inside.shape + (1,) * (crops.ndim - 3))
    return jnp.where(inside, values, jnp.asarray(fill, crops.dtype))


def roi_semdist_targets(rois: jax.Array, gt_boxes: jax.Array, gt_semdist: jax.Array,
                        output_size: int) -> jax.Array:
    """Resample each GT's box-cropped sem-dist map onto its ROI's output grid (bilinear).

    Crop values sit at the crop cell centres; between centres they are interpolated, past the
    outermost centres (but inside the GT box) the edge value is kept.

    Args:
      rois: float32 [N, 4] sampled ROIs.
      gt_boxes: float32 [N, 4] amodal box of each ROI's matched GT.
      gt_semdist: float32 [N, P, P] the GT's sem-dist map cropped to its box.
      output_size: static int R.

    Returns:
      float32 [N, R, R]; 0 where the output cell centre lies outside the GT box.
    """
    gt_semdist = jnp.asarray(gt_semdist, jnp.float32)
    _check_crops(gt_semdist, jnp.asarray(rois), jnp.asarray(gt_boxes), "roi_semdist_targets")
    p = gt_semdist.shape[1]
    ys, xs = crop_coordinates(rois, gt_boxes, p, output_size)
    inside = ((ys >= 0) & (ys < p))[:, :, None] & ((xs >= 0) & (xs < p))[:, None, :]

    def corners(pos):
        pos = jnp.clip(pos - 0.5, 0.0, p - 1.0)  # crop-cell-centre coordinates
        low = jnp.floor(pos).astype(jnp.int32)
        return low, jnp.minimum(low + 1, p - 1), pos - low

    y0, y1, wy = corners(ys)
    x0, x1, wx = corners(xs)
    idx = jnp.arange(gt_semdist.shape[0])[:, None, None]

    def at(yy, xx):
        return gt_semdist[idx, yy[:, :, None], xx[:, None, :]]

    wx = wx[:, None, :]
    top = at(y0, x0) * (1.0 - wx) + at(y0, x1) * wx
    bottom = at(y1, x0) * (1.0 - wx) + at(y1, x1) * wx
    wy = wy[:, :, None]
    return jnp.where(inside, top * (1.0 - wy) + bottom * wy, 0.0)
