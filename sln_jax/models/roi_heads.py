"""Second-stage heads on ROIs: the box head and the layering (or sem-dist) head.

* ``BoxHead``: multi-level ROIAlign (``box_pool_size``) -> 2 FC (``fc_dim``, 1024 in the paper)
  -> class logits over 1 + num_classes (0 = background) and class-specific box deltas
  ``[1 + num_classes, 4]`` coded with ``sln_jax.ops.boxes.encode`` (weights 10, 10, 5, 5).
* ``LayeringHead``: multi-level ROIAlign (``mask_pool_size`` = R/2) of the FPN, concatenated
  with the ROIAligned GLM probabilities and the ROIAligned semantic map (each when given;
  ``pool_glm``, ``pool_dense``) -> four 3x3 convs + ReLU -> 2x2 stride-2
  transposed conv (as 1x1 conv + depth-to-space) + ReLU -> 1x1 conv to R x R outputs per ROI:
  head 'layers': K layer logits (channel c = {min(L, K-1) == c}; a softmax with a fixed
  background logit 0, see ``sln_jax.losses``);
  head 'semdist': one sem-dist regression map (``sln_jax.semdist`` encoding, in [0, K+1)).
  Per class (the channel set of the ROI's class is selected) or class-agnostic.
  The convs carry no normalization: BatchNorm in training mode would need batch statistics
  (the model keeps ``batch_stats`` frozen) and the head trains well without it.

* ``OrderHead``: for a pair of ROIs (a, b), the FPN ROIAligned on their union box, with each
  ROI's own cues on that grid (its box and its layering head's probabilities) -> one logit
  that a is in front of b, antisymmetric in (a, b) by construction.

All functions take one image's ROIs ([N, 4]); the model vmaps them over the batch.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sln_jax.models.layers import Conv
from sln_jax.ops import roi_align as roi_ops

__all__ = ["BoxHead", "InstanceContext", "LayeringHead", "OrderHead", "pool_rois", "pool_glm",
           "pool_dense"]

# ROIAlign of the GLM map: it lives at stride 4.
GLM_SPATIAL_SCALE = 0.25


def pool_rois(pyramid: Sequence[jax.Array], rois: jax.Array, output_size: int) -> jax.Array:
    """Multi-level ROIAlign of a batch.

    Args:
      pyramid: [P2..P6], P_l [B, h_l, w_l, C]; P2..P5 are pooled from (level by box size).
      rois: float32 [B, N, 4] (y1, x1, y2, x2) canvas pixels.
      output_size: static int.

    Returns:
      [B, N, output_size, output_size, C].
    """
    levels = list(pyramid[:4])

    def one(image_levels, image_rois):
        return roi_ops.multilevel_roi_align(image_levels, image_rois, output_size,
                                            sampling_ratio=2)

    return jax.vmap(one)(levels, rois)


class BoxHead(nn.Module):
    """Box classification and class-specific regression.

    Attributes:
      num_classes: C foreground classes (logits over C + 1).
      fc_dim: width of the two hidden FC layers.
    """
    num_classes: int
    fc_dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, pooled: jax.Array) -> tuple[jax.Array, jax.Array]:
        """pooled: [B, N, p, p, C] ROI features.

        Returns:
          (logits float32 [B, N, C + 1], deltas float32 [B, N, C + 1, 4]).
        """
        b, n = pooled.shape[:2]
        x = pooled.reshape(b, n, -1)
        x = nn.relu(nn.Dense(self.fc_dim, dtype=self.dtype, name="fc1")(x))
        x = nn.relu(nn.Dense(self.fc_dim, dtype=self.dtype, name="fc2")(x))
        logits = nn.Dense(self.num_classes + 1, kernel_init=nn.initializers.normal(0.01),
                          dtype=self.dtype, name="cls")(x)
        deltas = nn.Dense((self.num_classes + 1) * 4, kernel_init=nn.initializers.normal(0.001),
                          dtype=self.dtype, name="deltas")(x)
        return (logits.astype(jnp.float32),
                deltas.reshape(b, n, self.num_classes + 1, 4).astype(jnp.float32))


class InstanceContext(nn.Module):
    """Each pixel of a ROI compared with a descriptor of the ROI's own object.

    Where two objects overlap, both ROIs pool the same pixels and the same global layering
    map: nothing in a ROI's crop says which of the two objects the head is segmenting, and a
    head of local convs labels the overlap much alike for both (the main job's head without
    this, on ground-truth boxes: visible on 59 % of the overlap for the front object and
    33 % for the back one, truth 92 % and 0 %; ``benchmarks/diagnose.py``). Here the ROI pools
    one descriptor of its object, an attention-weighted mean of its features (the attention
    is a 1x1 conv plus a learned position prior, so it can favour the ROI's centre, where its
    own object is); every pixel's elementwise product with that descriptor, projected by a
    1x1 conv, is added to its features: the next conv reads how much the pixel looks like
    *this* object. That differs between the two ROIs of a pair (the front object's colour,
    texture and edges are what the overlap shows), which is what ordering them needs.
    Cost: two 1x1 convs and a weighted mean per ROI, ~3 % of the head's FLOPs at the
    paper's width (concatenating the product to the next 3x3 conv's input instead would
    double that conv: +26 % of the head).
    """
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [M, r, r, F] ROI features -> [M, r, r, F]: x + P(x * descriptor)."""
        m, r, _, f = x.shape
        attention = Conv(1, (1, 1), kernel_init=nn.initializers.zeros, dtype=self.dtype,
                         name="attention")(x)[..., 0]
        prior = self.param("position_prior", nn.initializers.zeros, (r, r), jnp.float32)
        weights = jax.nn.softmax((attention.astype(jnp.float32) + prior).reshape(m, r * r),
                                 axis=-1).astype(x.dtype)
        descriptor = jnp.einsum("mpf,mp->mf", x.reshape(m, r * r, f), weights)
        descriptor = nn.Dense(f, dtype=self.dtype, name="project")(descriptor)
        return x + Conv(f, (1, 1), dtype=self.dtype, name="compare")(
            x * descriptor[:, None, None, :])


class LayeringHead(nn.Module):
    """Per-ROI layer logits or sem-dist map.

    Attributes:
      head: 'layers' (K logits per pixel) or 'semdist' (one regression map).
      num_layers: K.
      num_classes: C; used when ``class_agnostic`` is False.
      class_agnostic: one output set shared by all classes.
      features: conv width (fpn_dim; 256 in the paper).
      instance_context: after the second conv, compare every pixel with a descriptor of the
        ROI's own object (``InstanceContext``): the asymmetric cue that tells, where two
        objects overlap, whether the pixel belongs to this ROI's object or to the other.
    """
    head: str
    num_layers: int
    num_classes: int
    class_agnostic: bool
    features: int
    instance_context: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, pooled: jax.Array, classes: jax.Array,
                 glm_pooled: jax.Array | None = None,
                 semantic_pooled: jax.Array | None = None) -> jax.Array:
        """Layering outputs of the ROIs.

        Args:
          pooled: [B, N, r, r, C] FPN features ROIAligned at r = R / 2.
          classes: int32 [B, N] class (1..C) of each ROI, picks the output set when the
            head is per class; ignored when class-agnostic.
          glm_pooled: optional [B, N, r, r, K] ROIAligned GLM probabilities.
          semantic_pooled: optional [B, N, r, r, S_sem] ROIAligned semantic class
            fractions (the reference's DeepLab input); the first conv's input grows by S_sem.

        Returns:
          head 'layers': float32 [B, N, R, R, K] logits; head 'semdist': float32 [B, N, R, R].
        """
        if self.head not in ("layers", "semdist"):
            raise ValueError(f"unknown layering head {self.head!r}; choose 'layers' or 'semdist'")
        x = pooled
        if glm_pooled is not None:
            x = jnp.concatenate([x, glm_pooled.astype(x.dtype)], axis=-1)
        if semantic_pooled is not None:
            x = jnp.concatenate([x, semantic_pooled.astype(x.dtype)], axis=-1)
        b, n, r = x.shape[:3]
        x = x.reshape((b * n,) + x.shape[2:])
        init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
        for i in range(4):
            if i == 2 and self.instance_context:
                x = InstanceContext(dtype=self.dtype, name="context")(x)
            x = nn.relu(Conv(self.features, (3, 3), padding=1, kernel_init=init,
                             dtype=self.dtype, name=f"conv{i + 1}")(x))
        # A 2x2 stride-2 transposed conv maps each pixel linearly to its 2x2 output block:
        # written as a 1x1 conv + depth-to-space it is the same function, without the
        # input-dilated convolution that XLA:CPU runs ~50x slower.
        x = Conv(4 * self.features, (1, 1), kernel_init=init, dtype=self.dtype,
                 name="upsample")(x)
        x = x.reshape(b * n, r, r, 2, 2, self.features).transpose(0, 1, 3, 2, 4, 5)
        x = nn.relu(x.reshape(b * n, 2 * r, 2 * r, self.features))
        per_set = self.num_layers if self.head == "layers" else 1
        sets = 1 if self.class_agnostic else self.num_classes
        out = Conv(per_set * sets, (1, 1), kernel_init=nn.initializers.normal(0.001),
                   dtype=self.dtype, name="predictor")(x).astype(jnp.float32)
        out = out.reshape(b, n, 2 * r, 2 * r, sets, per_set)
        if self.class_agnostic:
            out = out[:, :, :, :, 0]
        else:
            index = jnp.clip(classes - 1, 0, self.num_classes - 1)
            out = jnp.take_along_axis(out, index[:, :, None, None, None, None], axis=4)[
                :, :, :, :, 0]
        return out if self.head == "layers" else out[..., 0]


class OrderHead(nn.Module):
    """Which of two ROIs is in front: a learned pairwise depth order (our addition).

    The paper reads the order off the two instance layering maps (the higher sem-dist level
    in front); on the main job that rule orders only ~60 % of matched pairs right, and the
    detection score alone does better (``benchmarks/diagnose.py``): each ROI's head decides
    its own pixels without seeing the other object. This head sees both, on the pair's
    union box, with each ROI's cues on that grid: channel 0 its box, then its layering
    probabilities (where its head believes its object is seen or hidden), 0 outside its box.
    The front object is the one whose appearance the overlap shows, so the head compares
    descriptors of three regions of the union's FPN features, the overlap (o), a's part
    outside b's box (d_a) and b's part outside a's (d_b): o * d_a against o * d_b. Beside
    them, a small conv stack reads both ROIs' cues and the features together, pooled over
    the overlap (the probabilities the paper's rule compares, seen locally). The score
    f(a, b) of those is antisymmetrized, logit = f(a, b) - f(b, a), so swapping the ROIs
    negates it and no position is favoured. Trained with a binary cross-entropy on sampled
    positive pairs whose GT amodal masks overlap (``sln_jax.losses``); the probabilities it
    reads are not differentiated through, so it does not change what the layering head
    learns.

    Attributes:
      features: conv and hidden width.
    """
    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, union_pooled: jax.Array, cues_a: jax.Array,
                 cues_b: jax.Array) -> jax.Array:
        """Order logits of P pairs.

        Args:
          union_pooled: [P, r, r, F] FPN features ROIAligned on each pair's union box.
          cues_a, cues_b: float [P, r, r, Q] each ROI's cues on the same grid: channel 0
            its box indicator, the others anything 0 outside its box.

        Returns:
          float32 [P]: logit that a is in front of b (negated when a and b swap).
        """
        p = union_pooled.shape[0]
        init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
        shared = nn.relu(Conv(self.features, (1, 1), dtype=self.dtype,
                              name="reduce")(union_pooled))
        shared = nn.relu(Conv(self.features, (3, 3), padding=1, kernel_init=init,
                              dtype=self.dtype, name="context")(shared))
        cues_a, cues_b = cues_a.astype(shared.dtype), cues_b.astype(shared.dtype)
        in_a, in_b = cues_a[..., 0], cues_b[..., 0]
        both = in_a * in_b

        def region_mean(x, weights):  # x [P, r, r, C], weights [P, r, r] -> [P, C]
            total = jnp.sum(weights, axis=(1, 2))[:, None]
            return jnp.sum(x * weights[..., None], axis=(1, 2)) / jnp.maximum(total, 1.0)

        overlap = region_mean(shared, both)
        only_a = region_mean(shared, in_a * (1 - in_b))
        only_b = region_mean(shared, in_b * (1 - in_a))
        # Both orders of the pair in one batch: [2P, ...], the second half swapped.
        x = jnp.concatenate([jnp.concatenate([shared, cues_a, cues_b], axis=-1),
                             jnp.concatenate([shared, cues_b, cues_a], axis=-1)], axis=0)
        for i in range(2):
            x = nn.relu(Conv(self.features, (3, 3), padding=1, kernel_init=init,
                             dtype=self.dtype, name=f"conv{i + 1}")(x))
        local = region_mean(x, jnp.concatenate([both, both], axis=0))
        first = jnp.concatenate([only_a, only_b], axis=0)
        second = jnp.concatenate([only_b, only_a], axis=0)
        overlap2 = jnp.concatenate([overlap, overlap], axis=0)
        h = jnp.concatenate([local, overlap2 * first, overlap2 * second, first, second,
                             overlap2], axis=-1)
        h = nn.relu(nn.Dense(self.features, dtype=self.dtype, name="fc")(h))
        # No bias: it cancels in f(a, b) - f(b, a), so its gradient is 0 up to float
        # reordering, which Adam would blow up into updates that differ between device counts.
        score = nn.Dense(1, use_bias=False, kernel_init=nn.initializers.normal(0.01),
                         dtype=self.dtype, name="score")(h)[:, 0].astype(jnp.float32)
        return score[:p] - score[p:]


def pool_glm(glm_probs: jax.Array, rois: jax.Array, output_size: int) -> jax.Array:
    """ROIAlign of the GLM probabilities (stride 4) for a batch.

    Args:
      glm_probs: float [B, S/4, S/4, K] softmax of the GLM logits.
      rois: float32 [B, N, 4] (y1, x1, y2, x2) canvas pixels.
      output_size: static int.

    Returns:
      [B, N, output_size, output_size, K].
    """
    return pool_dense(glm_probs, rois, output_size, GLM_SPATIAL_SCALE)


def pool_dense(maps: jax.Array, rois: jax.Array, output_size: int,
               spatial_scale: float) -> jax.Array:
    """ROIAlign of one dense map per image (GLM probabilities, semantic class fractions).

    Args:
      maps: float [B, h, w, C], the map of a canvas of side h / spatial_scale.
      rois: float32 [B, N, 4] (y1, x1, y2, x2) canvas pixels.
      output_size: static int.
      spatial_scale: map cells per canvas pixel (1 / stride).

    Returns:
      [B, N, output_size, output_size, C].
    """
    def one(image_maps, image_rois):
        return roi_ops.roi_align(image_maps, image_rois, output_size, spatial_scale,
                                 sampling_ratio=2)

    return jax.vmap(one)(maps, rois)
