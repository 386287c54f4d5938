"""Where a trained SLN's errors are: classification, duplicates, layering or decoding.

    python benchmarks/diagnose.py --workdir W [--batch 8] [--split train --limit 400]

On a trained workdir (the main job's, ``python -m sln_jax.demo --workdir W``: its
``config.json``, latest checkpoint, val records and val annotations) this runs the model on
the val split twice: as the evaluation does (the detector's boxes), and with the
ground-truth boxes fed to the layering head in place of the detector's (scored by the box
head's probability of the true class), which separates detection errors from layering
errors. For each it prints:

* the evaluator's headline metrics (``sln_jax.evaluation.evaluate``, the training's
  evaluation), class-agnostic AP and AP after a mask NMS across classes;
* the class confusion of detections matched to GT at amodal IoU >= 0.5 class-agnostically
  (the evaluator's greedy matching, ``fmt='cocoa'``), GT that no detection matches, and for
  GT boxes the box head's own classification of them;
* duplicates: detections whose amodal mask overlaps a higher-scoring one's at IoU > 0.5,
  of the same class and of another class, per image;
* the per-pixel layer confusion (visible / hidden once / hidden twice or more / background,
  truth vs prediction) over the union of the GT and predicted amodal masks of matched
  detections, and how the front and back object of each GT overlap are labelled there;
* occlusion classification (occluded vs not), what a minimum predicted rate would do, and
  occlusion read from the amodal overlaps and a depth order instead of hidden pixels;
* depth-order accuracy under several decoding rules (argmax layers, the current one; mean
  expected layer; mean P(hidden) on the predicted overlap; "seen where the other is
  hidden"; higher score in front; P(hidden), else the score; see ``rule_orders``; for
  head 'semdist' argmax is the floor of the map) with the
  evaluator's matching (per class, its ``order/*`` metrics) and class-agnostic matching,
  and by the GT occlusion level of the pair's back object.

The layering head is run on given boxes by applying the model's own submodules (backbone,
FPN, GLM, box head, layering head) to the checkpoint's variables, exactly as ``SLN`` wires
them; on the detector's boxes this reproduces the model's layer outputs (checked, printed).
Metrics and matching reuse ``sln_jax.evaluation``; masks, layers and the current depth
order come from ``sln_jax.postprocess``.

``--split train`` runs all of it on (the first ``--limit`` images of) the train split, with
the annotations the converter recorded for it: choose a decoding rule or threshold there,
then check it once on val, so that val stays a test set.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sln_jax import canvas, layering, postprocess, semdist  # noqa: E402
from sln_jax.evaluation import ground_truth  # noqa: E402
from sln_jax.evaluation import metrics as evaluation  # noqa: E402
from sln_jax.evaluation import results as eval_results  # noqa: E402

LAYER_CLASSES = ("visible", "hidden 1", "hidden 2+", "backgr.")
BACKGROUND = len(LAYER_CLASSES) - 1
DUPLICATE_IOU = 0.5
RULES = ("argmax layers", "expected layer", "P(hidden)", "seen vs hidden (soft)",
         "higher score", "P(hidden), else score")
# The model's own order head (results' order), when it has one.
ORDER_HEAD = "order head"
SEMDIST_RULES = ("argmax layers", "expected layer", "higher score", "expected, else score")
# Occlusion level of a pair's back object (GT rate), as the evaluator's bins.
PAIR_LEVELS = (("none", 0.0, evaluation.OCCLUDED_RATE),
               ("partial", evaluation.OCCLUDED_RATE, 0.25), ("heavy", 0.25, 1.0))


# ------------------------------------------------------------------ core (NumPy, tested)

def layer_class(layers: np.ndarray) -> np.ndarray:
    """int [...] class of each pixel: 0 visible, 1 hidden once, 2 hidden twice or more,
    3 background (layer -1)."""
    layers = np.asarray(layers)
    return np.where(layers < 0, BACKGROUND, np.minimum(layers, BACKGROUND - 1)).astype(np.int64)


def layer_confusion(gt_layers: np.ndarray, pred_layers: np.ndarray) -> np.ndarray:
    """int64 [4, 4] pixel counts [truth class, predicted class] (``layer_class``) over the
    pixels where the truth or the prediction is on the amodal mask (layer >= 0)."""
    gt_layers, pred_layers = np.asarray(gt_layers), np.asarray(pred_layers)
    on = (gt_layers >= 0) | (pred_layers >= 0)
    n = len(LAYER_CLASSES)
    index = layer_class(gt_layers[on]) * n + layer_class(pred_layers[on])
    return np.bincount(index, minlength=n * n).reshape(n, n)


def class_confusion(matches: list[dict[int, int]], gt_classes: list[np.ndarray],
                    det_classes: list[np.ndarray], categories: list[int]) -> np.ndarray:
    """int64 [C, C + 1]: [true class, predicted class] of matched (GT, detection) pairs, the
    last column counting GT matched by no detection.

    Args:
      matches: per image {GT index: detection index}.
      gt_classes, det_classes: per image the category ids of GT and detections.
      categories: the category ids, in row / column order.
    """
    index = {c: k for k, c in enumerate(categories)}
    out = np.zeros((len(categories), len(categories) + 1), np.int64)
    for match, gt, det in zip(matches, gt_classes, det_classes):
        for g, category in enumerate(gt):
            column = index[det[match[g]]] if g in match else len(categories)
            out[index[category], column] += 1
    return out


def duplicates(scores: np.ndarray, classes: np.ndarray, ious: np.ndarray,
               threshold: float = DUPLICATE_IOU) -> tuple[np.ndarray, np.ndarray]:
    """Which detections duplicate a higher-scoring one (mask IoU > threshold).

    "Higher-scoring" is earlier in a stable sort by decreasing score (as the evaluator
    ranks detections).

    Returns:
      (same, other): bool [D], a higher-scoring detection of the same class / of another
      class overlaps it by IoU > threshold (both can hold).
    """
    scores, classes = np.asarray(scores), np.asarray(classes)
    d = len(scores)
    rank = np.empty(d, np.int64)
    rank[np.argsort(-scores, kind="mergesort")] = np.arange(d)
    above = rank[None, :] < rank[:, None]  # [d, e]: e ranks above d
    hit = above & (np.asarray(ious).reshape(d, d) > threshold)
    same_class = classes[:, None] == classes[None, :]
    return (hit & same_class).any(axis=1), (hit & ~same_class).any(axis=1)


def mask_nms(scores: np.ndarray, ious: np.ndarray, threshold: float = DUPLICATE_IOU
             ) -> np.ndarray:
    """bool [D] kept by greedy NMS across classes on mask IoU (a suppressed detection
    suppresses nothing)."""
    d = len(scores)
    keep = np.zeros(d, bool)
    ious = np.asarray(ious).reshape(d, d)
    for i in np.argsort(-np.asarray(scores), kind="mergesort"):
        keep[i] = not (keep & (ious[i] > threshold)).any()
    return keep


def soft_cues(probs: np.ndarray) -> dict[str, np.ndarray]:
    """Per-pixel cues of the layering head from its per-layer probabilities.

    Args:
      probs: float [..., K] ``postprocess.layer_probs`` (P(layer c); their sum is
        P(object)).

    Returns:
      dict of float32 [...]: conditioned on the pixel being on the object (0 where
      P(object) is 0), ``expected`` (expected layer), ``hidden`` (P(layer >= 1)); not
      conditioned, ``joint_visible`` (P(object and layer 0)) and ``joint_hidden``
      (P(object and layer >= 1)).
    """
    probs = np.asarray(probs, np.float32)
    total = probs.sum(axis=-1)
    safe = np.where(total > 0, total, 1.0)
    layers = np.arange(probs.shape[-1], dtype=np.float32)
    hidden = probs[..., 1:].sum(axis=-1)
    return {"expected": (probs @ layers) / safe, "hidden": hidden / safe,
            "joint_visible": probs[..., 0], "joint_hidden": hidden}


def _front_if_lower(values: np.ndarray, on: np.ndarray) -> np.ndarray:
    """int8 [D, D]: +1 where the mean of values_i over the overlap of i and j is below the
    mean of values_j (i in front), -1 above, 0 tie or no overlap."""
    on = on.astype(np.float64)
    sums = (values * on) @ on.T  # [i, j]: sum of values_i over the overlap of i and j
    overlap = on @ on.T
    order = np.sign(sums.T - sums) * (overlap > 0)
    np.fill_diagonal(order, 0)
    return order.astype(np.int8)


def rule_orders(layers: np.ndarray, cues: dict[str, np.ndarray] | None,
                scores: np.ndarray) -> dict[str, np.ndarray]:
    """The depth order of one image's detections under each decoding rule.

    Rules (i in front of j when ...):
    * argmax layers: i's mean argmax layer over the predicted overlap is lower (the
      post-processing's rule; for head 'semdist' the floor of the map);
    * expected layer / P(hidden): i's mean expected layer / mean P(hidden | object) over
      the predicted overlap (amodal masks of both) is lower;
    * seen vs hidden (soft): sum over all pixels of P(i seen) P(j hidden) exceeds the
      converse (joint probabilities, so it needs no hard overlap);
    * higher score: i's detection score is higher (every pair);
    * P(hidden), else score (semdist: expected, else score): the soft rule where it
      orders the pair, else the score.

    Args:
      layers: int [D, P] decoded layers (-1 off the amodal mask), any pixel layout.
      cues: ``soft_cues`` [D, P] (head 'layers'); for head 'semdist' only ``expected``
        (the continuous layer K - M); None: only argmax and score.
      scores: float [D] detection scores.

    Returns:
      {rule: int8 [D, D]} (+1: i in front of j, -1 behind, 0 unordered), the rules of
      ``RULES`` (``SEMDIST_RULES`` when ``cues`` has no ``hidden``).
    """
    layers = np.asarray(layers)
    d = layers.shape[0]
    on = layers >= 0
    scores = np.asarray(scores, np.float64)
    by_score = np.sign(scores[:, None] - scores[None, :]).astype(np.int8)
    out = {"argmax layers": semdist.depth_order(layers.reshape(d, 1, layers.shape[1])),
           "higher score": by_score}
    if cues is None:
        return out
    out["expected layer"] = _front_if_lower(np.asarray(cues["expected"], np.float64), on)
    soft, name = out["expected layer"], "expected, else score"
    if "hidden" in cues:
        out["P(hidden)"] = _front_if_lower(np.asarray(cues["hidden"], np.float64), on)
        evidence = (np.asarray(cues["joint_visible"], np.float64)
                    @ np.asarray(cues["joint_hidden"], np.float64).T)  # [i, j]: i seen, j hidden
        out["seen vs hidden (soft)"] = np.sign(evidence - evidence.T).astype(np.int8)
        soft, name = out["P(hidden)"], "P(hidden), else score"
    out[name] = np.where(soft != 0, soft, by_score).astype(np.int8)
    return out


def occluded_by_order(order: np.ndarray, intersection: np.ndarray, eligible: np.ndarray,
                      min_pixels: float = 1.0) -> np.ndarray:
    """bool [D]: detection d is occluded when an eligible other detection whose amodal mask
    meets d's on at least ``min_pixels`` pixels is in front of it (order[j, d] = +1)."""
    front = (np.asarray(order) == 1) & (np.asarray(intersection) >= min_pixels)
    front &= np.asarray(eligible, bool)[:, None]
    np.fill_diagonal(front, False)
    return front.any(axis=0)


def pair_records(matches: list[dict[int, int]], images: list, dets: list) -> list[tuple]:
    """(image index, front GT, back GT, predicted order of the front one's detection relative
    to the back one's: +1 right, -1 wrong, 0 none) for every matched pair of overlapping GT
    with a known order: the pairs of the evaluator's ``order/accuracy``, predicted as it
    reads them (``evaluation._predicted_order``)."""
    out = []
    for i, (match, img, det) in enumerate(zip(matches, images, dets)):
        if len(img.ann_ids) < 2 or len(match) < 2:
            continue
        usable = ~img.crowd & ~np.isnan(img.order)
        overlap = evaluation._overlaps(img.amodal)
        rel = evaluation._predicted_order(det, sorted(set(match.values())))
        gts = sorted(match)
        for x, a in enumerate(gts):
            for b in gts[x + 1:]:
                if not (overlap[a, b] and usable[a] and usable[b]
                        and img.order[a] != img.order[b]):
                    continue
                front, back = (a, b) if img.order[a] < img.order[b] else (b, a)
                out.append((i, front, back, rel.get((match[front], match[back]), 0)))
    return out


def accuracy_by_level(records: list[tuple], images: list) -> dict[str, tuple[int, int, int]]:
    """{level: (pairs, right, ordered)} of ``pair_records`` by the GT occlusion rate of the
    pair's back object (``PAIR_LEVELS``, lower edge exclusive except for 'none')."""
    out = {name: [0, 0, 0] for name, _, _ in PAIR_LEVELS}
    for i, _, back, predicted in records:
        rate = images[i].occlusion[back]
        for name, low, high in PAIR_LEVELS:
            if (low < rate or (name == "none" and rate >= low)) and rate <= high:
                out[name][0] += 1
                out[name][1] += predicted == 1
                out[name][2] += predicted != 0
                break
    return {k: tuple(v) for k, v in out.items()}


# ------------------------------------------------------------------------- the model

def model_with_features(model, variables: dict, images):
    """The model's inference outputs, its FPN pyramid [P2..P6] and its GLM logits (None
    without GLM), captured from the same ``apply`` (flax ``capture_intermediates``)."""
    wanted = ("fpn", "glm")
    outputs, state = model.apply(variables, images, None, train=False, mutable=["intermediates"],
                                 capture_intermediates=lambda m, _: m.name in wanted)
    captured = state["intermediates"]
    glm = captured["glm"]["__call__"][0] if "glm" in captured else None
    return outputs, captured["fpn"]["__call__"][0], glm


def heads_on_boxes(model_config, variables: dict, pyramid, glm_logits, boxes, classes,
                   valid=None):
    """The layering head's outputs, the box head's class probabilities [B, N, C + 1] and,
    with the order head and ``valid`` [B, N] given, its ``order_logits`` / ``order_known``
    (else an empty dict) on given boxes [B, N, 4] (canvas pixels) of classes [B, N], from
    the model's pyramid and GLM logits (``model_with_features``), through the model's own
    ``SLN.layer_head_on``, box head and ``SLN.detection_orders`` (scores: the box head's
    probability of each box's class)."""
    import jax
    import jax.numpy as jnp

    from sln_jax.models.roi_heads import pool_rois
    from sln_jax.models.sln import SLN, order_head_on

    def run(module):
        layer_out = module.layer_head_on(pyramid, glm_logits, boxes, classes)
        box_logits, _ = module.box_head(pool_rois(pyramid, boxes, model_config.box_pool_size))
        probs = jax.nn.softmax(box_logits, axis=-1)
        orders = {}
        if valid is not None and order_head_on(model_config):
            scores = jnp.take_along_axis(probs, classes[..., None], axis=-1)[..., 0]
            orders = module.detection_orders(pyramid, boxes, scores, valid, layer_out)
        return layer_out, probs, orders

    return SLN(model_config).apply(variables, method=run)


def run_model(config, variables: dict, batch: int, limit: int | None = None):
    """Yields per val image: (image_id, image_size, orig_size, detector outputs, GT-box
    outputs, max |heads on the detector's boxes - model outputs| (first batch, else 0))."""
    import functools

    import jax

    from sln_jax import input_pipeline
    from sln_jax.models.sln import SLN

    cfg = config.model
    key = "layer_logits" if cfg.head == "layers" else "semdist"
    model = SLN(cfg)
    heads = jax.jit(functools.partial(heads_on_boxes, cfg))

    @jax.jit
    def forward(variables, images, gt_boxes, gt_classes, gt_valid):
        det, pyramid, glm_logits = model_with_features(model, variables, images)
        gt_layers, gt_probs, gt_orders = heads_on_boxes(cfg, variables, pyramid, glm_logits,
                                                        gt_boxes, gt_classes, gt_valid)
        return det, gt_layers, gt_probs, gt_orders, pyramid, glm_logits

    variables = jax.device_put(variables)
    seen = 0
    for number, host_batch in enumerate(input_pipeline.create_dataset(
            config.data, config.data.eval_split, batch_dims=(1, batch), train=False,
            seed=int(config.seed))):
        meta = {k: v.reshape((-1,) + v.shape[2:]) for k, v in host_batch.items()}
        det, gt_layers, gt_probs, gt_orders, pyramid, glm_logits = forward(
            variables, meta["image"], meta["boxes"], meta["classes"].astype(np.int32),
            meta["valid"].astype(bool))
        diff = 0.0
        if number == 0:  # the heads on the detector's boxes are the model's heads
            again, _, _ = heads(variables, pyramid, glm_logits, det["boxes"],
                                           det["classes"], det["valid"])
            diff = float(np.abs(np.asarray(again) - np.asarray(det[key])).max())
        det, gt_layers, gt_probs, gt_orders = jax.device_get((det, gt_layers, gt_probs,
                                                              gt_orders))
        for i in np.flatnonzero(meta["image_valid"]):
            if limit is not None and seen >= limit:
                return
            seen += 1
            classes = meta["classes"][i].astype(np.int64)
            valid = meta["valid"][i].astype(bool)
            probs = gt_probs[i]
            gt_out = {"boxes": meta["boxes"][i], "classes": classes, "valid": valid,
                      "scores": probs[np.arange(len(classes)), classes].astype(np.float32),
                      key: gt_layers[i], "box_probs": probs,
                      **{k: v[i] for k, v in gt_orders.items()}}
            yield (int(meta["image_id"][i]), meta["image_size"][i], meta["orig_size"][i],
                   {k: np.asarray(v[i]) for k, v in det.items()}, gt_out, diff)


@dataclasses.dataclass
class Source:
    """One way of choosing the boxes (detector / GT), decoded for every val image."""
    name: str
    results: list = dataclasses.field(default_factory=list)
    layers: dict = dataclasses.field(default_factory=dict)  # image id -> int8 [D, H, W]
    orders: dict = dataclasses.field(default_factory=dict)  # image id -> {rule: [D, D]}
    box_head: list = dataclasses.field(default_factory=list)  # (GT class, argmax) GT boxes
    mismatched_argmax: int = 0
    # Detections that can occlude others in "occlusion from order" (and mask NMS keeps).
    min_score: float = 0.5


def decode_into(source: Source, outputs: dict, image_id: int, image_size, orig_size,
                model_config) -> None:
    """Decodes one image's outputs the evaluation's way and adds them to ``source``."""
    instances = postprocess.to_instances(outputs, image_size, orig_size, model_config)
    source.results.extend(postprocess.to_coco_results(instances, image_id))
    h, w = int(orig_size[0]), int(orig_size[1])
    d = len(instances)
    layers = np.stack([inst["layers"] for inst in instances]) if d else np.zeros((0, h, w))
    source.layers[image_id] = layers.astype(np.int8)
    keep = np.flatnonzero(np.asarray(outputs["valid"], bool))
    boxes = canvas.boxes_to_original(np.asarray(outputs["boxes"])[keep], image_size, (h, w))
    cues = None
    if d and model_config.head == "layers":
        probs = postprocess.layer_probs(np.asarray(outputs["layer_logits"])[keep])
        pasted = np.zeros((d, h, w, probs.shape[-1]), np.float32)
        for k in range(d):
            top, left, values = layering.paste_window(probs[k], boxes[k], (h, w))
            pasted[k, top:top + values.shape[0], left:left + values.shape[1]] = values
        cues = {k: v.reshape(d, -1) for k, v in soft_cues(pasted).items()}
    elif d:
        maps = np.stack([layering.paste(np.asarray(outputs["semdist"])[keep][k:k + 1],
                                        boxes[k:k + 1], (h, w))[0] for k in range(d)])
        cues = {"expected": np.clip(model_config.num_layers - maps, 0,
                                    model_config.num_layers - 1).reshape(d, -1)}
    scores = np.array([inst["score"] for inst in instances], np.float64)
    orders = rule_orders(layers.reshape(d, h * w), cues, scores)
    # The argmax rule must be what the post-processing wrote into the results.
    current = np.zeros((d, d), np.int8)
    for i, inst in enumerate(instances):
        for j, v in inst["depth_order"].items():
            current[i, j] = v
    if "order_logits" in outputs:
        # The results' order: the order head's sign on the pairs it scored.
        orders[ORDER_HEAD] = current
    else:
        source.mismatched_argmax += int((current != orders["argmax layers"]).sum())
    source.orders[image_id] = orders
    if "box_probs" in outputs:
        probs = np.asarray(outputs["box_probs"])[keep]
        source.box_head.extend(zip(np.asarray(outputs["classes"])[keep].tolist(),
                                   probs.argmax(axis=-1).tolist()))


# ----------------------------------------------------------------------------- report

def _matrix(title: str, rows: list[str], columns: list[str], values: np.ndarray,
            row_share: bool = True) -> list[str]:
    width = max(9, max(len(c) for c in columns) + 1)
    label = max(len(r) for r in rows + [title[:12]]) + 1
    lines = [f"  {'':<{label}}" + "".join(f"{c:>{width}}" for c in columns)
             + ("   right" if row_share else "")]
    for r, row in zip(rows, values):
        line = f"  {r:<{label}}" + "".join(f"{int(v):>{width}}" for v in row)
        if row_share:
            k = rows.index(r)
            total = row.sum()
            line += f"   {row[k] / total:5.3f}" if total and k < len(row) else "       -"
        lines.append(line)
    return lines


def _share(num: float, den: float) -> str:
    return f"{num / den:.3f}" if den else "  -  "


def report(source: Source, gt_data: dict, categories: dict[int, str], head: str) -> str:
    """The printed diagnosis of one source."""
    out = [f"=== {source.name} ==="]
    t0 = time.perf_counter()
    metrics = evaluation.evaluate(gt_data, source.results)
    out.append("evaluator: " + ", ".join(
        f"{k} {metrics[k]:.3f}" for k in ("amodal/AP", "amodal/AP50", "amodal/AP75",
                                          "modal/AP50", "amodal/AR100_none",
                                          "amodal/AR100_partial", "amodal/AR100_heavy",
                                          "occlusion/accuracy", "occlusion/f1",
                                          "order/accuracy", "order/accuracy_decided",
                                          "order/recall"))
        + f", order/pairs {int(metrics['order/pairs'])}")
    images, category_ids = ground_truth.load_coco_gt(gt_data, "val")
    dets = eval_results.load_results(source.results, images, "results")
    per_class = evaluation._evaluate_variant(images, dets, category_ids, "amodal", "coco")
    agnostic = evaluation._evaluate_variant(images, dets, [0], "amodal", "cocoa")
    agnostic_metrics = evaluation._variant_metrics(agnostic, "amodal", "cocoa")
    matches = evaluation._matched_pairs(per_class, images)
    matches_ca = evaluation._matched_pairs(agnostic, images)

    # --- detection: classes and duplicates
    ious = [np.asarray(mask_utils.iou(d.amodal, d.amodal, [0] * len(d.amodal))).reshape(
        len(d.amodal), len(d.amodal)) if len(d.amodal) else np.zeros((0, 0)) for d in dets]
    nms_results, dup_same, dup_other, dup_same_hi, dup_other_hi = [], [], [], [], []
    start = 0
    for det, iou in zip(dets, ious):
        same, other = duplicates(det.scores, det.categories, iou)
        high = det.scores >= 0.5
        dup_same.append(int(same.sum()))
        dup_other.append(int((other & ~same).sum()))
        dup_same_hi.append(int((same & high).sum()))
        dup_other_hi.append(int((other & ~same & high).sum()))
        keep = mask_nms(det.scores, iou)
        nms_results.extend(source.results[start + k] for k in np.flatnonzero(keep))
        start += len(det.scores)
    nms_metrics = evaluation.evaluate(gt_data, nms_results, iou_types=("amodal",))
    nms_dets = eval_results.load_results(nms_results, images, "nms")
    nms_ca = evaluation._variant_metrics(
        evaluation._evaluate_variant(images, nms_dets, [0], "amodal", "cocoa"), "amodal",
        "cocoa")
    out.append(f"amodal AP / AP50: per class {metrics['amodal/AP']:.3f} / "
               f"{metrics['amodal/AP50']:.3f}; class-agnostic {agnostic_metrics['amodal/AP']:.3f}"
               f" / {agnostic_metrics['amodal/AP50']:.3f}; after mask NMS across classes "
               f"(IoU > {DUPLICATE_IOU}): per class {nms_metrics['amodal/AP']:.3f} / "
               f"{nms_metrics['amodal/AP50']:.3f}, class-agnostic {nms_ca['amodal/AP']:.3f} / "
               f"{nms_ca['amodal/AP50']:.3f}")
    ids = sorted(categories)
    names = [categories[c][:10] for c in ids]
    confusion = class_confusion(matches_ca, [img.categories for img in images],
                                [d.categories for d in dets], ids)
    matched = confusion[:, :-1].sum()
    out.append(f"class confusion of GT matched at amodal IoU >= 0.5 class-agnostically "
               f"(rows truth, columns prediction; {matched} of {confusion.sum()} GT matched, "
               f"{np.trace(confusion)} with the right class = "
               f"{_share(np.trace(confusion), matched)}):")
    out += _matrix("truth", names, names + ["missed"], confusion)
    if source.box_head:
        pairs = np.array(source.box_head)
        box = np.zeros((len(ids), len(ids) + 1), np.int64)
        index = {c: k for k, c in enumerate(ids)}
        for truth, predicted in pairs:
            box[index[truth], index[predicted] if predicted in index else len(ids)] += 1
        out.append(f"box head's class on the GT boxes (argmax over background + classes; "
                   f"right {_share(np.trace(box), box.sum())}):")
        out += _matrix("truth", names, names + ["backgr."], box)
    num_dets = np.array([len(d.scores) for d in dets])
    high = np.array([int((d.scores >= 0.5).sum()) for d in dets])
    for label, same, other, count in (("all", dup_same, dup_other, num_dets),
                                      ("score >= 0.5", dup_same_hi, dup_other_hi, high)):
        same, other = np.array(same), np.array(other)
        out.append(f"duplicates ({label}; {count.sum()} detections, {count.mean():.1f} per image): "
                   f"same class {same.sum()} ({same.mean():.2f} per image, max {same.max()}), "
                   f"other class only {other.sum()} ({other.mean():.2f} per image, max "
                   f"{other.max()}); images with any: {int(((same + other) > 0).sum())} of "
                   f"{len(dets)}")

    # --- layers, on class-agnostic matches
    total = np.zeros((len(LAYER_CLASSES),) * 2, np.int64)
    front_back = np.zeros((2, 3))  # [front, back] x [GT visible, predicted visible, pixels]
    for img, match in zip(images, matches_ca):
        if not match:
            continue
        gt_amodal = mask_utils.decode(img.amodal).transpose(2, 0, 1).astype(bool)
        order = img.order
        if np.isnan(order).any():
            visible = mask_utils.decode(img.visible).transpose(2, 0, 1).astype(bool)
            order = layering.order_from_visibility(gt_amodal, visible)
        gt_layers = layering.instance_layers(gt_amodal, order)
        pred = source.layers[img.image_id]
        for g, d in match.items():
            total += layer_confusion(gt_layers[g], pred[d])
        for a in match:
            for b in match:
                if a == b or not order[a] < order[b]:
                    continue
                overlap = gt_amodal[a] & gt_amodal[b]
                n = overlap.sum()
                if not n:
                    continue
                for k, (g, d) in enumerate(((a, match[a]), (b, match[b]))):
                    front_back[k] += (np.sum(gt_layers[g][overlap] == 0),
                                      np.sum(pred[d][overlap] == 0), n)
    out.append("per-pixel layers of class-agnostically matched detections, over the union of GT "
               "and predicted amodal masks (rows truth, columns prediction):")
    out += _matrix("truth", list(LAYER_CLASSES), list(LAYER_CLASSES), total)
    out.append(f"on the GT overlap of matched pairs: front object visible on "
               f"{_share(front_back[0, 1], front_back[0, 2])} of the pixels (truth "
               f"{_share(front_back[0, 0], front_back[0, 2])}), back object visible on "
               f"{_share(front_back[1, 1], front_back[1, 2])} (truth "
               f"{_share(front_back[1, 0], front_back[1, 2])}); {int(front_back[0, 2])} pixels")

    # --- occlusion classification (the evaluator's matches)
    gt_rate = np.array([img.occlusion[g] for img, m in zip(images, matches) for g in m])
    dt_rate = np.array([d.occlusion[k] for d, m in zip(dets, matches) for k in m.values()])
    if len(gt_rate):
        gt_occ = gt_rate > evaluation.OCCLUDED_RATE
        parts = []
        for threshold in (evaluation.OCCLUDED_RATE, 0.02, 0.05, 0.1):
            dt_occ = dt_rate > threshold
            tp, fp = int(np.sum(gt_occ & dt_occ)), int(np.sum(~gt_occ & dt_occ))
            fn = int(np.sum(gt_occ & ~dt_occ))
            parts.append(f"rate > {threshold:g}: TP {tp} FP {fp} FN {fn} "
                         f"TN {len(gt_occ) - tp - fp - fn}"
                         f" F1 {_share(2 * tp, 2 * tp + fp + fn)}")
        out.append(f"occlusion on {len(gt_occ)} matched GT ({int(gt_occ.sum())} occluded), "
                   f"predicted occluded when: " + "; ".join(parts))

    # --- occlusion from amodal overlaps and a depth order instead of hidden pixels
    parts = []
    gt_occ_of = {}
    for img, match in zip(images, matches):
        for g, d in match.items():
            gt_occ_of[img.image_id, d] = img.occlusion[g] > evaluation.OCCLUDED_RATE
    for rule in ("argmax layers", "seen vs hidden (soft)", "higher score", ORDER_HEAD,
                 "GT order"):
        tp = fp = fn = 0
        for img, det, iou, match, match_ca in zip(images, dets, ious, matches, matches_ca):
            d = len(det.scores)
            if not d or not match:
                continue
            if rule == "GT order":  # the order of the GT each detection matches
                order = np.zeros((d, d), np.int8)
                for g, a in match_ca.items():
                    for h, b in match_ca.items():
                        if img.order[g] < img.order[h]:
                            order[a, b], order[b, a] = 1, -1
            elif rule in source.orders[img.image_id]:
                order = source.orders[img.image_id][rule]
            else:
                continue
            area = mask_utils.area(det.amodal).astype(np.float64)
            intersection = iou / (1.0 + iou) * (area[:, None] + area[None, :])
            eligible = mask_nms(det.scores, iou) & (det.scores >= source.min_score)
            occluded = occluded_by_order(order, intersection, eligible)
            for d_index in match.values():
                truth = gt_occ_of[img.image_id, d_index]
                tp += truth and occluded[d_index]
                fp += (not truth) and occluded[d_index]
                fn += truth and not occluded[d_index]
        parts.append(f"{rule}: TP {tp} FP {fp} FN {fn} F1 {_share(2 * tp, 2 * tp + fp + fn)}")
    out.append(f"occlusion from the amodal overlaps and a depth order (occluded when a detection "
               f"in front overlaps it; occluders: kept by mask NMS, score >= "
               f"{source.min_score:g}): "
               + "; ".join(parts))

    # --- depth order under each rule
    rules = RULES if head == "layers" else SEMDIST_RULES
    if any(ORDER_HEAD in orders for orders in source.orders.values()):
        rules = rules + (ORDER_HEAD,)
    out.append("depth order by decoding rule (accuracy over matched pairs, unordered = wrong | "
               "over ordered pairs | recall), evaluator's matching; class-agnostic matching; "
               "accuracy by the GT occlusion of the back object (pairs):")
    levels_header = None
    for rule in rules:
        depth = []
        for d, img in zip(dets, images):
            order = source.orders[img.image_id][rule]
            depth.append([{str(j): int(order[i, j]) for j in np.flatnonzero(order[i])}
                          for i in range(len(d.scores))])
        ruled = [dataclasses.replace(d, depth_order=o) for d, o in zip(dets, depth)]
        m = evaluation._order_metrics(matches, images, ruled)
        m_ca = evaluation._order_metrics(matches_ca, images, ruled)
        records = pair_records(matches, images, ruled)
        right = sum(r[3] == 1 for r in records)
        assert len(records) == m["order/pairs"] and (
            not records or abs(right / len(records) - m["order/accuracy"]) < 1e-9), rule
        levels = accuracy_by_level(records, images)
        if levels_header is None:
            levels_header = "  ".join(f"{k:>12}" for k in levels)
            out.append(f"  {'rule':<24} {'per class':>20}   {'class-agnostic':>20}   "
                       + levels_header)
        by_level = "  ".join(f"{_share(v[1], v[0]):>6} ({v[0]:>3})" for v in levels.values())
        out.append(f"  {rule:<24} {m['order/accuracy']:.3f} {m['order/accuracy_decided']:.3f} "
                   f"{m['order/recall']:.3f}   {m_ca['order/accuracy']:.3f} "
                   f"{m_ca['order/accuracy_decided']:.3f} {m_ca['order/recall']:.3f}   {by_level}")
    out.append(f"  pairs: {int(m['order/pairs'])} per class, {int(m_ca['order/pairs'])} "
               f"class-agnostic; argmax-rule orders differing from the results': "
               f"{source.mismatched_argmax}; report {time.perf_counter() - t0:.1f} s")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a trained workdir (the main job's)")
    parser.add_argument("--batch", type=int, default=8, help="images per model call")
    parser.add_argument("--limit", type=int, default=None,
                        help="only the first N images (the GT is cut to them)")
    parser.add_argument("--split", default=None,
                        help="the records split to diagnose (default: the config's eval "
                             "split, val); its annotations are those the converter recorded")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    from sln_jax import checkpoints, train

    config = checkpoints.load_config(args.workdir)
    checkpoint = checkpoints.load_checkpoint(args.workdir)
    if args.split is not None and args.split != config.data.eval_split:
        config.data.eval_split = args.split
        config.eval.gt_json = ""  # the split's annotations from the records' metadata
    variables = {"params": checkpoint["params"], "batch_stats": checkpoint["batch_stats"]}
    gt_json = train._eval_gt_json(config)
    gt_data = ground_truth.load_json(gt_json)
    categories = {c["id"]: c.get("name", str(c["id"])) for c in gt_data["categories"]}
    print(f"workdir {args.workdir}: step {checkpoint['step']}, head {config.model.head}, "
          f"K = {config.model.num_layers}, {config.data.eval_split} {gt_json}")
    detector, oracle = Source("detector boxes (the evaluation)"), Source(
        "ground-truth boxes fed to the layering head (score: box head's P(true class))",
        min_score=0.0)
    worst, count = 0.0, 0
    model_start = time.perf_counter()
    seen = set()
    for image_id, image_size, orig_size, det, gt, diff in run_model(config, variables,
                                                                     args.batch, args.limit):
        decode_into(detector, det, image_id, image_size, orig_size, config.model)
        decode_into(oracle, gt, image_id, image_size, orig_size, config.model)
        worst, count = max(worst, diff), count + 1
        seen.add(image_id)
    if args.limit is not None:
        gt_data = dict(gt_data, images=[i for i in gt_data["images"] if i["id"] in seen],
                       annotations=[a for a in gt_data["annotations"] if a["image_id"] in seen])
    print(f"{count} {config.data.eval_split} images, model + decoding "
          f"{time.perf_counter() - model_start:.1f} s; heads applied on the detector's boxes "
          f"vs the model's outputs (first batch): max |diff| {worst:.2e}")
    for source in (detector, oracle):
        print(report(source, gt_data, categories, config.model.head))
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
