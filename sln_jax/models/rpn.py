"""Region proposal network: the shared head over FPN levels and static-shape proposals.

The head is shared by every pyramid level: a 3x3 conv + ReLU, then per anchor one
objectness logit (sigmoid, foreground vs background) and 4 box deltas coded with
``sln_jax.ops.boxes.encode`` (weights 10, 10, 5, 5). Outputs are flattened level by level,
row-major, then ratio: the order of ``sln_jax.ops.anchors.generate_anchors``.

Proposals (per image, jittable): top-k by objectness before NMS, decode, clip to the canvas,
drop degenerate boxes, NMS, a fixed number of boxes with a validity mask. Proposals carry no
gradient (they are inputs to the second stage, as in Faster R-CNN's approximate joint training).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sln_jax.models.layers import Conv
from sln_jax.ops import boxes as box_ops

__all__ = ["RPNHead", "proposals"]

# Proposals smaller than this (pixels, either side) are dropped before NMS.
MIN_PROPOSAL_SIZE = 1e-2


class RPNHead(nn.Module):
    """Objectness and box deltas for every anchor of every level.

    Attributes:
      num_anchors: anchors per location (number of aspect ratios).
      features: channels of the shared 3x3 conv (fpn_dim).
    """
    num_anchors: int
    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, pyramid: Sequence[jax.Array]) -> tuple[jax.Array, jax.Array]:
        """pyramid: [P2..P6], P_l [B, h_l, w_l, C].

        Returns:
          (logits float32 [B, A], deltas float32 [B, A, 4]) with
          A = sum_l h_l * w_l * num_anchors, in anchor order.
        """
        init = nn.initializers.normal(0.01)
        conv = Conv(self.features, (3, 3), padding=1, kernel_init=init, dtype=self.dtype,
                    name="conv")
        cls = Conv(self.num_anchors, (1, 1), kernel_init=init, dtype=self.dtype,
                   name="objectness")
        reg = Conv(self.num_anchors * 4, (1, 1), kernel_init=init, dtype=self.dtype,
                   name="deltas")
        logits, deltas = [], []
        for p in pyramid:
            b = p.shape[0]
            h = nn.relu(conv(p))
            logits.append(cls(h).reshape(b, -1))
            deltas.append(reg(h).reshape(b, -1, 4))
        return (jnp.concatenate(logits, axis=1).astype(jnp.float32),
                jnp.concatenate(deltas, axis=1).astype(jnp.float32))


def proposals(logits: jax.Array, deltas: jax.Array, anchors: jax.Array, canvas_size: int,
              pre_nms_topk: int, post_nms_topk: int, nms_threshold: float
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Proposals of one image (vmap over the batch).

    Args:
      logits: float32 [A] objectness logits.
      deltas: float32 [A, 4] box deltas.
      anchors: float32 [A, 4] (y1, x1, y2, x2) pixels.
      canvas_size: S; boxes are clipped to the S x S canvas.
      pre_nms_topk: static int, candidates kept before NMS (capped at A).
      post_nms_topk: static int P, proposals returned.
      nms_threshold: IoU above which a lower-scored candidate is suppressed.

    Returns:
      (boxes float32 [P, 4], scores float32 [P] objectness logits (-inf on padding),
       valid bool [P]); no gradient flows through them.
    """
    logits = jax.lax.stop_gradient(logits)
    deltas = jax.lax.stop_gradient(deltas)
    k = min(pre_nms_topk, logits.shape[0])
    top_scores, top_idx = jax.lax.top_k(logits, k)
    boxes = box_ops.decode(deltas[top_idx], anchors[top_idx],
                           clip_to=(canvas_size, canvas_size))
    big_enough = ((boxes[:, 2] - boxes[:, 0] > MIN_PROPOSAL_SIZE)
                  & (boxes[:, 3] - boxes[:, 1] > MIN_PROPOSAL_SIZE))
    top_scores = jnp.where(big_enough, top_scores, -jnp.inf)
    keep, _ = box_ops.nms(boxes, top_scores, nms_threshold, post_nms_topk)
    valid = keep >= 0
    safe = jnp.maximum(keep, 0)
    out_boxes = jnp.where(valid[:, None], boxes[safe], 0.0)
    out_scores = jnp.where(valid, top_scores[safe], -jnp.inf)
    return out_boxes, out_scores, valid
