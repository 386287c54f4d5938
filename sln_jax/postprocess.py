"""Host-side post-processing (NumPy): detections -> per-instance masks -> COCO results.

``to_instances`` takes the inference outputs of one image (``SLN(..., train=False)``, batch
axis removed), maps the boxes from the canvas to the original image, pastes every ROI's
prediction back at the original resolution (``sln_jax.layering.paste``) and decodes it:

* head 'layers': pasted per-layer probabilities p_c = softmax(0, z_0..z_K-1)[c + 1] (the
  background has the fixed logit 0, as ``sln_jax.losses`` trains); amodal mask
  ``sum_c p_c > 0.5`` (= 1 - P(background)); on the amodal mask the layer is
  ``argmax_c p_c``; visible = layer 0. Outside its box a detection's pasted p_c are 0.
* head 'semdist': the pasted sem-dist map decoded by ``sln_jax.semdist.decode``.

Then the occlusion rate (1 - visible area / amodal area) and the depth order between
detections whose amodal masks overlap: head 'layers' compares the joint probabilities (i in
front of j when sum_p P_i(visible) P_j(hidden) exceeds the converse, ``_soft_pair_orders``);
head 'semdist' the decoded levels (``sln_jax.semdist.depth_order`` on the pair's window).
``config.model.order_rule`` 'hidden_else_score' puts in front the detection with the lower
mean P(hidden | object) over the overlap (a tie: the higher score); 'head' takes the sign of
the order head's logit on the pairs it scored (``order_known``), the soft rule on the others. Last, with
``config.model.occlusion`` 'layers_and_order' or 'order', each instance's hidden part is
made to agree with that order (``_hidden_behind_occluders``). Then a hidden part smaller
than ``config.model.min_hidden_fraction`` of its amodal mask is called visible
(``_drop_hidden_slivers``).
``to_coco_results`` writes the entries of ARCHITECTURE.md's "Results JSON".
"""

from __future__ import annotations

import ml_collections
import numpy as np

from sln_jax import canvas, depth_order, layering, semdist
from sln_jax.detections import Detections

__all__ = ["to_instances", "to_coco_results", "layer_probs", "decode_layer_probs",
           "check_config"]

OCCLUSION_RULES = ("layers", "layers_and_order", "order")
ORDER_RULES = depth_order.PROBABILITY_RULES + ("head",)


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raise ValueError naming the first bad decoding field of ``config.model``.

    Training and ``sln_jax.infer`` call it when they start, so a mistyped
    ``--config.model.occlusion`` fails at once, not after training at the first evaluation.
    """
    occlusion = config.get("occlusion", "layers")
    if occlusion not in OCCLUSION_RULES:
        raise ValueError(f"config.model.occlusion must be one of {OCCLUSION_RULES}, got "
                         f"{occlusion!r}")
    rule = config.get("order_rule", "soft")
    if rule not in ORDER_RULES:
        raise ValueError(f"config.model.order_rule must be one of {ORDER_RULES}, got {rule!r}")
    if rule == "head" and not config.get("order_head", False):
        raise ValueError("config.model.order_rule 'head' needs config.model.order_head")
    fraction = float(config.get("min_hidden_fraction", 0.0))
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"config.model.min_hidden_fraction must be in [0, 1), got {fraction}")


def layer_probs(layer_logits: np.ndarray) -> np.ndarray:
    """Per-layer probabilities of the layering head.

    Args:
      layer_logits: float [..., K] logits (background has the fixed logit 0).

    Returns:
      float32 [..., K] p_c = P(layer c), summing to 1 - P(background) <= 1.
    """
    z = np.asarray(layer_logits, np.float32)
    top = np.maximum(z.max(axis=-1, keepdims=True), 0.0)
    e = np.exp(z - top)
    return (e / (np.exp(-top) + e.sum(axis=-1, keepdims=True))).astype(np.float32)


def decode_layer_probs(probs: np.ndarray) -> dict[str, np.ndarray]:
    """Masks and layers from per-layer probabilities.

    Args:
      probs: float [..., K] ``layer_probs`` (possibly pasted / interpolated).

    Returns:
      dict: ``amodal`` bool [...] (sum_c p_c > 0.5), ``layers`` int32 [...] (argmax channel on
      the amodal mask, -1 elsewhere), ``visible`` bool [...] (layer 0).
    """
    probs = np.asarray(probs, np.float32)
    amodal = probs.sum(axis=-1) > 0.5
    layers = np.where(amodal, np.argmax(probs, axis=-1), -1).astype(np.int32)
    return {"amodal": amodal, "layers": layers, "visible": layers == 0}


def to_instances(outputs: dict, image_size, orig_size,
                 config: ml_collections.ConfigDict) -> list[dict]:
    """Decoded instances of one image.

    Args:
      outputs: inference outputs of one image (NumPy or JAX arrays, no batch axis):
        ``boxes`` f32 [D, 4] canvas pixels, ``scores`` f32 [D], ``classes`` i32 [D],
        ``valid`` bool [D], and ``layer_logits`` f32 [D, R, R, K] or ``semdist`` f32 [D, R, R];
        optionally ``order_logits`` f32 [D, D] and ``order_known`` bool [D, D] (order head).
      image_size: (h, w) of the resized content inside the canvas.
      orig_size: (H, W) of the original image.
      config: ``config.model`` (reads ``head``, ``num_layers``, ``order_head``,
        ``order_rule``, ``occlusion``, ``occluder_score`` and ``min_hidden_fraction``).

    Returns:
      One dict per valid detection, in detection order: ``box`` (x, y, w, h) float original
      pixels, ``category_id`` int, ``score`` float, ``amodal`` bool [H, W], ``visible`` bool
      [H, W], ``layers`` int32 [H, W] (-1 outside the amodal mask), ``occlude_rate`` float in
      [0, 1], ``depth_order`` {index of another instance: +1 in front of it / -1 behind}.
    """
    check_config(config)
    valid = np.asarray(outputs["valid"], bool)
    if config.head == "layers":
        if "layer_logits" not in outputs:
            raise ValueError("to_instances: head 'layers' needs outputs['layer_logits']")
        roi_maps = layer_probs(outputs["layer_logits"])
    elif config.head == "semdist":
        if "semdist" not in outputs:
            raise ValueError("to_instances: head 'semdist' needs outputs['semdist']")
        roi_maps = np.asarray(outputs["semdist"], np.float32)
    else:
        raise ValueError(f"to_instances: unknown head {config.head!r}")
    keep = np.flatnonzero(valid)
    oh, ow = int(orig_size[0]), int(orig_size[1])
    boxes = canvas.boxes_to_original(np.asarray(outputs["boxes"])[keep], image_size, (oh, ow))
    scores = np.asarray(outputs["scores"], np.float32)[keep]
    classes = np.asarray(outputs["classes"], np.int64)[keep]
    instances, all_layers, windows = [], [], []
    for k, index in enumerate(keep):
        # Decoded on the box's window only: outside it the pasted maps are 0, which decodes
        # to background; image-sized float maps per detection cost ~5 ms each at 512 px.
        top, left, pasted = layering.paste_window(roi_maps[index], boxes[k], (oh, ow))
        if config.head == "layers":
            decoded = decode_layer_probs(pasted)
            visible_key = "visible"
            windows.append((top, left, pasted))
        else:
            decoded = semdist.decode(pasted, config.num_layers)
            visible_key = "modal"
        window = (slice(top, top + pasted.shape[0]), slice(left, left + pasted.shape[1]))
        amodal, visible = np.zeros((oh, ow), bool), np.zeros((oh, ow), bool)
        layers = np.full((oh, ow), -1, np.int32)
        amodal[window], visible[window] = decoded["amodal"], decoded[visible_key]
        layers[window] = decoded["layers"]
        amodal_area = int(amodal.sum())
        occlude_rate = 1.0 - visible.sum() / amodal_area if amodal_area else 0.0
        y1, x1, y2, x2 = boxes[k]
        instances.append({
            "box": (float(x1), float(y1), float(x2 - x1), float(y2 - y1)),
            "category_id": int(classes[k]),
            "score": float(scores[k]),
            "amodal": amodal,
            "visible": visible,
            "layers": layers,
            "occlude_rate": float(occlude_rate),
        })
        all_layers.append(layers)
    learned = _learned_order(outputs, keep, config)
    if config.head == "layers":
        order = depth_order.from_probability_windows(
            windows, [instance["amodal"] for instance in instances], boxes, learned,
            rule="soft" if learned is not None else config.get("order_rule", "soft"),
            scores=scores)
    else:
        order = depth_order.from_layer_windows(all_layers, boxes, learned)
    for instance, relation in zip(instances, depth_order.to_relations(order)):
        instance["depth_order"] = relation
    _hidden_behind_occluders(instances, order, config)
    _drop_hidden_slivers(instances, float(config.get("min_hidden_fraction", 0.0)))
    return instances


def _hidden_behind_occluders(instances: list[dict], order: np.ndarray,
                             config: ml_collections.ConfigDict) -> None:
    """Makes each instance's hidden part agree with the depth order (in place).

    ``config.occlusion`` (configs saved before it: 'layers'):

    * 'layers': the layering head's own hidden pixels (the paper's decoding);
    * 'layers_and_order': those hidden pixels only where a detection in front of the
      instance (``order[j, i] = +1``) with score >= ``config.occluder_score`` covers them
      with its amodal mask; other hidden pixels become visible. A part is hidden only
      behind something: a hidden pixel no occluder explains is a decoding error (on the
      main job, stray hidden pixels made 94 false "occluded" calls against 3 misses);
    * 'order': every amodal pixel such a detection covers is hidden, the others visible
      (occlusion from the amodal masks and the order alone).

    ``visible``, ``layers`` (0 where a pixel becomes visible, 1 where 'order' hides a pixel
    the head called visible) and ``occlude_rate`` are updated together.
    """
    rule = config.get("occlusion", "layers")
    if rule == "layers" or not instances:
        return
    threshold = float(config.occluder_score)
    shape = instances[0]["amodal"].shape
    for i, instance in enumerate(instances):
        covered = np.zeros(shape, bool)
        for j, other in enumerate(instances):
            if order[j, i] > 0 and other["score"] >= threshold:
                covered |= other["amodal"]
        amodal, layers = instance["amodal"], instance["layers"]
        hidden = amodal & covered
        if rule == "layers_and_order":
            hidden &= ~instance["visible"]
        layers = np.where(amodal & ~hidden, 0, layers)
        instance["layers"] = np.where(hidden & (layers == 0), 1, layers).astype(np.int32)
        instance["visible"] = amodal & ~hidden
        area = int(amodal.sum())
        instance["occlude_rate"] = float(hidden.sum() / area) if area else 0.0


def _drop_hidden_slivers(instances: list[dict], min_fraction: float) -> None:
    """Calls an instance's hidden part visible when it is under ``min_fraction`` of its
    amodal area (in place: ``visible``, ``layers`` and ``occlude_rate``).

    "Occluded or not" is read off the hidden area (``sln_jax.evaluation``: any hidden pixel
    at all), so a few stray hidden pixels at a mask's rim make an unoccluded object
    occluded. Datasets rarely annotate such slivers (the synthetic generator hides at least
    ``min_occluded_fraction`` = 2 % of an occluded object); on the main job's checkpoint,
    dropping hidden parts under 2 % turned 27 of 81 false "occluded" calls right and 10 of
    102 right ones wrong (``benchmarks/diagnose.py``). 0 keeps every hidden pixel.
    """
    if min_fraction == 0.0:
        return
    for instance in instances:
        # occlude_rate is already the hidden share of the amodal area (visible is a subset
        # of amodal for both heads): no second pass over the image-sized masks.
        if 0.0 < instance["occlude_rate"] < min_fraction:
            amodal = instance["amodal"]
            instance["visible"] = amodal.copy()
            instance["layers"] = np.where(amodal, 0, -1).astype(np.int32)
            instance["occlude_rate"] = 0.0


def _learned_order(outputs: dict, keep: np.ndarray,
                   config: ml_collections.ConfigDict) -> np.ndarray | None:
    """int8 [n, n] signs of the order head's logits between the kept detections (0 where it
    did not score the pair) when ``config.order_rule`` is 'head', else None."""
    if config.get("order_rule", "soft") != "head":
        return None
    if "order_logits" not in outputs or "order_known" not in outputs:
        raise ValueError("to_instances: config.model.order_rule 'head' needs "
                         "outputs['order_logits'] and outputs['order_known']")
    logits = np.asarray(outputs["order_logits"], np.float32)[np.ix_(keep, keep)]
    known = np.asarray(outputs["order_known"], bool)[np.ix_(keep, keep)]
    return np.where(known, np.sign(logits), 0).astype(np.int8)


def to_coco_results(instances: list[dict], image_id: int) -> list[dict]:
    """COCO results entries (one per instance) of ARCHITECTURE.md's "Results JSON".

    The one encoder is ``sln_jax.detections.Detections.to_results``; this is it for
    ``to_instances`` output.

    Args:
      instances: ``to_instances`` output of one image.
      image_id: the image's id in the GT JSON.

    Returns:
      list of dicts with ``image_id``, ``category_id``, ``score``, ``bbox`` [x, y, w, h],
      ``segmentation`` (amodal, RLE), ``visible_mask`` (RLE), ``occlude_rate`` and
      ``depth_order`` {detection index in the image: +1 / -1}.
    """
    if not instances:
        return []
    height, width = np.asarray(instances[0]["amodal"]).shape
    return Detections.from_instances(instances, height, width).to_results(image_id)
