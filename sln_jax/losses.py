"""Every SLN loss term, from the training outputs of ``sln_jax.models.sln.SLN``.

``compute(outputs, loss_config) -> (total, metrics)``: ``total`` float32 [] is the weighted
sum; ``metrics`` holds every term unweighted under ``loss/<term>`` plus ``loss/total``.
Terms (each normalized so that padding and unsampled entries never contribute):

* ``rpn_cls``: sigmoid cross-entropy of the objectness over sampled anchors (labels 0 / 1),
  mean over sampled anchors.
* ``rpn_box``: smooth L1 (beta 1/9) of the anchor deltas, summed over the 4 coordinates,
  mean over positive anchors.
* ``box_cls``: softmax cross-entropy over 1 + C classes, mean over sampled ROIs.
* ``box_reg``: smooth L1 (beta 1) of the GT class's deltas, summed over 4, mean over positives.
* ``layers`` (head 'layers'): per-pixel softmax cross-entropy over background + the K layer
  channels, where background has a fixed logit 0 (so the K outputs stay the K layer maps of
  ``docs/interfaces.md``); target = layer + 1, 0 outside the amodal mask; mean over pixels of
  positive ROIs, pixels whose target layer is >= 1 (hidden) weighted by
  ``occluded_pixel_weight``. The layers of a pixel are mutually exclusive, which the softmax
  encodes.
* ``amodal`` (head 'layers'): binary cross-entropy of P(amodal) = 1 - P(background) =
  ``sigmoid(logsumexp_c z_c)`` against the amodal mask: the reference's "sigmoid of the summed
  object-layer logits" with the sum taken in probability space, consistent with ``layers``.
  Measured reason for not using independent per-layer sigmoids (the reference's per-layer BCE)
  with a noisy-OR amodal term: on the synthetic set after 600 steps the occluded-layer channel
  never exceeded p = 0.3 anywhere (the amodal term pushes every channel up on hidden pixels,
  the visible one most), so no detection was ever predicted occluded (occlusion F1 = 0).
* ``layers_form = 'sigmoid'`` (the reference's losses, for the ablation): ``layers`` is the
  sum over the K channels of the binary cross-entropy of sigmoid(z_c) against
  {pixel layer == c} (0 outside the amodal mask), hidden pixels weighted as above, and
  ``amodal`` the binary cross-entropy of sigmoid(sum_c z_c) against the amodal mask.
  Decoding is the same for both forms (``sln_jax.postprocess``: softmax with the fixed
  background logit): where one channel is positive and the others negative, as the
  sigmoid loss drives them, both read the same layer.
* ``semdist`` (head 'semdist'): smooth L1 (beta 1) of the sem-dist map, mean over pixels of
  positive ROIs.
* ``glm``: softmax cross-entropy of the global layering map at stride 4, mean over pixels
  inside the image content (canvas padding ignored).
* ``semantic`` (``config.model.semantic_head``): cross-entropy of the GLM's semantic map
  against the batch's class fractions at stride 4, mean over the cells that hold a class.
* ``order`` (``config.model.order_head``): binary cross-entropy of the order head's logit
  (first ROI of a pair in front) against the GT depth ranks, mean over the chosen pairs.

Loss config fields (``config.loss``): rpn_cls, rpn_box, box_cls, box_reg, layers, amodal,
semdist, glm, semantic, order (term weights; terms whose outputs are absent, e.g. ``semdist`` for head 'layers',
are not reported), occluded_pixel_weight (see ``layers``) and layers_form ('softmax' |
'sigmoid', see above).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

__all__ = ["compute", "smooth_l1", "amodal_log_probs", "layer_log_probs", "TERMS"]

TERMS = ("rpn_cls", "rpn_box", "box_cls", "box_reg", "layers", "amodal", "semdist", "glm",
         "semantic", "order")
RPN_BETA = 1.0 / 9.0
BOX_BETA = 1.0


def smooth_l1(x: jax.Array, beta: float) -> jax.Array:
    """Elementwise Huber-style smooth L1: 0.5 x^2 / beta for |x| < beta, |x| - beta / 2 else."""
    ax = jnp.abs(x)
    return jnp.where(ax < beta, 0.5 * ax * ax / beta, ax - 0.5 * beta)


def amodal_log_probs(layer_logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Log-probabilities that a pixel is / is not on the amodal mask.

    Args:
      layer_logits: float32 [..., K] per-layer logits; background has the fixed logit 0.

    Returns:
      (log P(amodal), log P(background)), float32 [...], with
      P(amodal) = sigmoid(logsumexp_c z_c).
    """
    lse = jax.nn.logsumexp(layer_logits, axis=-1)
    return jax.nn.log_sigmoid(lse), jax.nn.log_sigmoid(-lse)


def layer_log_probs(layer_logits: jax.Array) -> jax.Array:
    """float32 [..., K + 1] log-probabilities of (background, layer 0, ..., layer K - 1)."""
    zeros = jnp.zeros(layer_logits.shape[:-1] + (1,), layer_logits.dtype)
    return jax.nn.log_softmax(jnp.concatenate([zeros, layer_logits], axis=-1), axis=-1)


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    mask = mask.astype(jnp.float32)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _rpn_terms(outputs: dict) -> dict:
    labels = outputs["rpn_labels"]
    logits = outputs["rpn_logits"]
    sampled = labels >= 0
    positive = labels == 1
    target = positive.astype(jnp.float32)
    ce = -(target * jax.nn.log_sigmoid(logits) + (1 - target) * jax.nn.log_sigmoid(-logits))
    reg = jnp.sum(smooth_l1(outputs["rpn_deltas"] - outputs["rpn_box_targets"], RPN_BETA), -1)
    reg = jnp.where(positive, reg, 0.0)  # targets of unsampled anchors may be anything
    return {"rpn_cls": _masked_mean(ce, sampled), "rpn_box": _masked_mean(reg, positive)}


def _box_terms(outputs: dict) -> dict:
    valid = outputs["roi_valid"]
    positive = outputs["roi_is_positive"] & valid
    log_probs = jax.nn.log_softmax(outputs["box_logits"], axis=-1)
    ce = -jnp.take_along_axis(log_probs, outputs["roi_classes"][..., None], axis=-1)[..., 0]
    reg = jnp.sum(smooth_l1(outputs["box_deltas"] - outputs["roi_box_targets"], BOX_BETA), -1)
    reg = jnp.where(positive, reg, 0.0)
    return {"box_cls": _masked_mean(ce, valid), "box_reg": _masked_mean(reg, positive)}


def _layer_terms(outputs: dict, occluded_pixel_weight: float, form: str) -> dict:
    if form not in ("softmax", "sigmoid"):
        raise ValueError(f"config.loss.layers_form must be 'softmax' or 'sigmoid', got {form!r}")
    logits = outputs["layer_logits"]  # [B, Np, R, R, K]
    targets = outputs["layer_targets"]  # [B, Np, R, R], -1 outside
    pixel_mask = jnp.broadcast_to(outputs["mask_valid"][:, :, None, None], targets.shape)
    # Hidden pixels are a few percent of ROI pixels; weighting them keeps the head from
    # settling on "visible wherever the object is".
    weight = pixel_mask * jnp.where(targets >= 1, occluded_pixel_weight, 1.0)
    amodal = targets >= 0
    if form == "softmax":
        log_probs = layer_log_probs(logits)
        ce = -jnp.take_along_axis(log_probs, (targets + 1)[..., None], axis=-1)[..., 0]
        log_amodal, log_background = amodal_log_probs(logits)
    else:
        # The reference's per-layer binary cross-entropies and summed-logit amodal term.
        onehot = targets[..., None] == jnp.arange(logits.shape[-1])  # all False outside
        ce = -jnp.sum(jnp.where(onehot, jax.nn.log_sigmoid(logits),
                                jax.nn.log_sigmoid(-logits)), axis=-1)
        total = jnp.sum(logits, axis=-1)
        log_amodal, log_background = jax.nn.log_sigmoid(total), jax.nn.log_sigmoid(-total)
    layers = jnp.sum(ce * weight) / jnp.maximum(jnp.sum(weight), 1.0)
    amodal_ce = -jnp.where(amodal, log_amodal, log_background)
    return {"layers": layers, "amodal": _masked_mean(amodal_ce, pixel_mask)}


def _semdist_terms(outputs: dict) -> dict:
    pred = outputs["semdist"]
    err = smooth_l1(pred - outputs["semdist_targets"], BOX_BETA)
    pixel_mask = jnp.broadcast_to(outputs["mask_valid"][:, :, None, None], pred.shape)
    return {"semdist": _masked_mean(err, pixel_mask)}


def _glm_terms(outputs: dict) -> dict:
    log_probs = jax.nn.log_softmax(outputs["global_logits"], axis=-1)
    ce = -jnp.take_along_axis(log_probs, outputs["global_targets"][..., None], axis=-1)[..., 0]
    return {"glm": _masked_mean(ce, outputs["global_valid"])}


def _semantic_terms(outputs: dict) -> dict:
    """Cross-entropy of the GLM's semantic map against the cells' class fractions (soft
    targets), mean over the cells that hold a class."""
    log_probs = jax.nn.log_softmax(outputs["semantic_logits"], axis=-1)
    targets = outputs["semantic_targets"]
    ce = -jnp.sum(targets * log_probs, axis=-1) / jnp.maximum(targets.sum(axis=-1), 1e-6)
    return {"semantic": _masked_mean(ce, outputs["semantic_valid"])}


def _order_terms(outputs: dict) -> dict:
    """Binary cross-entropy of the order logits on the chosen, labelled pairs (mean over
    them; 0 when a batch has none)."""
    logits, targets = outputs["order_logits"], outputs["order_targets"]
    bce = optax.sigmoid_binary_cross_entropy(logits, targets)
    return {"order": _masked_mean(bce, outputs["order_valid"])}


def compute(outputs: dict, loss_config: ml_collections.ConfigDict
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted total loss and every unweighted term.

    Args:
      outputs: ``SLN(..., train=True)`` outputs (see ``sln_jax.models.sln``), leading [B].
      loss_config: ``config.loss`` with one weight per term of ``TERMS``.

    Returns:
      (total float32 [], metrics dict 'loss/<term>' -> float32 [] and 'loss/total').
    """
    terms = {}
    terms.update(_rpn_terms(outputs))
    terms.update(_box_terms(outputs))
    if "layer_logits" in outputs:
        terms.update(_layer_terms(outputs, float(loss_config.occluded_pixel_weight),
                                  loss_config.layers_form))
    if "semdist" in outputs:
        terms.update(_semdist_terms(outputs))
    if "global_logits" in outputs:
        terms.update(_glm_terms(outputs))
    if "semantic_logits" in outputs:
        terms.update(_semantic_terms(outputs))
    if "order_logits" in outputs:
        terms.update(_order_terms(outputs))
    total = jnp.zeros((), jnp.float32)
    for name, value in terms.items():
        total = total + float(loss_config[name]) * value
    metrics = {f"loss/{name}": value for name, value in terms.items()}
    metrics["loss/total"] = total
    return total, metrics
