"""The Semantics Layering Network: ResNet-FPN, RPN, box head, GLM and layering head.

``SLN(config.model)`` is a Flax linen module (see ``docs/interfaces.md``):

    SLN(cfg).__call__(images [B, S, S, 3] float32, gt: dict | None = None, train: bool = False,
                      semantic: [B, S/s, S/s, S_sem] float32 | None = None)

``semantic`` (when ``semantic_channels`` = S_sem > 0, and only then): a per-pixel S_sem-class
probability map of each image on its canvas grid at an integer stride s (the input
pipeline's ``semantic`` batch key: class fractions at s = 4, ``sln_jax.canvas``). The
layering head ROI-aligns it like the GLM probabilities and concatenates it to its input
(the reference's DeepLab class probabilities, ``docs/SLN.md`` section 3); the stride is read
from its shape. ``model.init`` without it initialises with zeros; ``apply`` needs it. With
``semantic_head`` the GLM predicts that map instead (``GlobalLayeringModule``): the given map
is then only the training target (``gt['semantic']``), and inference needs none.

Everything is static-shape and jittable: the batch is vmapped, sampling draws from the
``'sampling'`` rng stream, and no Python loop runs over instances.

**train=True** (``gt`` = the per-device batch of ``docs/interfaces.md``) returns predictions
together with their sampled targets, for ``sln_jax.losses.compute``:

=====================  =========================================  ==========================
key                    shape, dtype                               meaning
=====================  =========================================  ==========================
rpn_logits             float32 [B, A]                             objectness of every anchor
rpn_deltas             float32 [B, A, 4]                          box deltas of every anchor
rpn_labels             int32 [B, A]                               1 fg, 0 bg, -1 not sampled
rpn_box_targets        float32 [B, A, 4]                          encoded GT deltas
box_logits             float32 [B, N, C + 1]                      sampled ROIs' class logits
box_deltas             float32 [B, N, 4]                          deltas of the ROI's GT class
roi_classes            int32 [B, N]                               GT class, 0 = background
roi_box_targets        float32 [B, N, 4]                          encoded GT deltas
roi_is_positive        bool [B, N]                                foreground ROI
roi_valid              bool [B, N]                                sampled (not padding)
mask_valid             bool [B, Np]                               positive ROI in mask slot
layer_logits           float32 [B, Np, R, R, K]                   head 'layers' only
layer_targets          int32 [B, Np, R, R]                        -1 outside the amodal mask
semdist                float32 [B, Np, R, R]                      head 'semdist' only
semdist_targets        float32 [B, Np, R, R]                      head 'semdist' only
global_logits          float32 [B, S/4, S/4, K]                   when ``glm``
global_targets         int32 [B, S/4, S/4]                        stride-4 samples of the map
global_valid           bool [B, S/4, S/4]                         inside the image content
semantic_logits        float32 [B, S/4, S/4, S_sem]               when ``semantic_head``
semantic_targets       float32 [B, S/4, S/4, S_sem]               ``gt['semantic']`` fractions
semantic_valid         bool [B, S/4, S/4]                         cells with a class
order_logits           float32 [B, Po]                            when ``order_head``
order_targets          float32 [B, Po]                            1: first slot in front
order_valid            bool [B, Po]                               pair chosen and labelled
order_gt               int32 [B, Po, 2]                           the pair's two GT indices
=====================  =========================================  ==========================

N = ``roi_batch_per_image``; Np = ``num_mask_rois(config.model)`` mask slots: the layering
head only runs on positive ROIs (a random subset of at most Np of them), not on all N.
Po = ``order_pairs``: pairs of mask slots (matched to two different GT objects whose amodal
masks overlap) drawn at random for the order head, labelled by the GT depth ranks.

**train=False** returns ``max_detections`` (D) detections per image: ``boxes`` f32 [B, D, 4]
(canvas pixels), ``scores`` f32 [B, D], ``classes`` i32 [B, D], ``valid`` bool [B, D],
``layer_logits`` f32 [B, D, R, R, K] (head 'layers') or ``semdist`` f32 [B, D, R, R] (head
'semdist'), and ``global_logits`` f32 [B, S/4, S/4, K] (zeros when ``glm`` is off); with
``order_head``, ``order_logits`` f32 [B, D, D] (antisymmetric: logit that detection i is in
front of j) and ``order_known`` bool [B, D, D] on the ``order_pairs_eval`` pairs of valid
detections with overlapping boxes and the highest score products (0 / False elsewhere).

Variables: ``params``, and ``batch_stats`` for the frozen BatchNorm statistics (never updated:
the norm always runs in inference mode). ``model.init(rng, images)`` (train=False) creates
every parameter.

Config fields read (``config.model``):
  backbone: 'resnet_tiny' | 'resnet18' | 'resnet50' | 'resnet101'.
  norm: 'frozen_bn' | 'group_norm' (backbone normalization).
  backbone_width: base width of 'resnet_tiny' (the others use 64).
  fpn_dim: FPN channels; also the RPN conv width; the box head's FC width is 4 * fpn_dim
    (1024 at the paper's 256).
  mask_head_dim: layering-head conv width (256 in the paper; the head dominates the CPU
    train step, so small configs shrink it).
  num_classes: C foreground classes (1..C; 0 = background).
  num_layers: K layer classes.
  anchor_sizes: one anchor side (pixels) per RPN level from P2 up: 5 sizes use P2..P6
    (strides 4..64, the paper's 32..512), 4 sizes use P2..P5.
  anchor_ratios: aspect ratios height / width, e.g. (0.5, 1.0, 2.0).
  rpn_pre_nms_topk: candidates kept before the proposal NMS (training and inference).
  rpn_post_nms_topk: P proposals per image after NMS; also the number of class-specific
    candidates kept before the detection NMS.
  rpn_nms_threshold: proposal NMS IoU (0.7).
  rpn_batch_per_image, rpn_positive_fraction: anchors sampled per image for the RPN loss.
  roi_batch_per_image, roi_positive_fraction, roi_positive_iou: ROI sampling for the heads.
  mask_rois_per_image: Np, layering-head slots per image in training; positives beyond it
    are not used by the layering losses (at most roi_batch_per_image * roi_positive_fraction
    positives exist).
    The sampler orders positives at random, so the Np slots hold a uniform random subset of
    them and the layering losses stay unbiased. Sizing the slots to each batch's positives
    with ``lax.switch`` over a few slot counts was tried and measured 5-6x slower per step
    on XLA:CPU (1.4 s vs 0.24 s on the main job's config): a fixed, smaller Np is the lever.
  box_pool_size: ROIAlign side of the box head (7).
  mask_pool_size: ROIAlign side of the layering head (R / 2).
  mask_size: R, the layering head's output side; must equal 2 * mask_pool_size.
  head: 'layers' | 'semdist'.
  class_agnostic_masks: one layering output shared by all classes.
  instance_context: the layering head compares each pixel with a descriptor of its ROI's
    object (``sln_jax.models.roi_heads.InstanceContext``; our addition to the paper).
  order_head: the pairwise depth-order head (``sln_jax.models.roi_heads.OrderHead``; our
    addition to the paper); order_dim its width, order_pool_size its ROIAlign side on the
    pair's union box, order_pairs (Po) pairs per image in training, order_pairs_eval per
    image at inference.
  glm: use the global layering module (its loss, and its maps in the layering head).
  glm_dim: GLM conv width.
  semantic_channels: S_sem, classes of the semantic map input of the layering head; 0 = no
    such input (absent = 0). A reference to ``config.data.semantic_channels``.
  semantic_head: the GLM predicts that map (needs ``glm`` and S_sem >= 2; the records' maps
    are its training target; absent = False).
  score_threshold: detections below this class probability are dropped (inference).
  nms_threshold: per-class detection NMS IoU (inference).
  max_detections: D.
  dtype: 'float32' | 'bfloat16' compute dtype (parameters and outputs stay float32).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from sln_jax.models.backbone import FPN, ResNet
from sln_jax.models.glm import GlobalLayeringModule
from sln_jax.models.roi_heads import (BoxHead, LayeringHead, OrderHead, pool_dense, pool_glm,
                                      pool_rois)
from sln_jax.models.rpn import RPNHead, proposals
from sln_jax.ops import boxes as box_ops
from sln_jax.ops import pairs
from sln_jax.ops import sampling
from sln_jax.ops.anchors import generate_anchors

__all__ = ["SLN", "FPN_STRIDES", "GLM_STRIDE", "num_mask_rois", "check_config",
           "semantic_channels", "semantic_head_on", "order_head_on", "layer_cues"]

FPN_STRIDES = (4, 8, 16, 32, 64)
GLM_STRIDE = 4


def num_mask_rois(cfg: ml_collections.ConfigDict) -> int:
    """Np: layering-head slots per image in training (``mask_rois_per_image``, capped at the
    most positives sampling yields)."""
    most = max(1, int(round(cfg.roi_batch_per_image * cfg.roi_positive_fraction)))
    return max(1, min(int(cfg.mask_rois_per_image), most))


def check_config(cfg: ml_collections.ConfigDict) -> None:
    """Raise ValueError naming the first inconsistent ``config.model`` field."""
    if cfg.mask_size != 2 * cfg.mask_pool_size:
        raise ValueError(f"config.model.mask_size ({cfg.mask_size}) must be 2 * mask_pool_size "
                         f"({cfg.mask_pool_size}): the layering head upsamples 2x")
    if not 1 <= len(cfg.anchor_sizes) <= len(FPN_STRIDES):
        raise ValueError(f"config.model.anchor_sizes needs 1 to {len(FPN_STRIDES)} sizes (one "
                         f"per level from P2 up), got {tuple(cfg.anchor_sizes)}")
    if cfg.head not in ("layers", "semdist"):
        raise ValueError(f"config.model.head must be 'layers' or 'semdist', got {cfg.head!r}")
    if cfg.num_layers < 2:
        raise ValueError(f"config.model.num_layers must be >= 2, got {cfg.num_layers}")
    if order_head_on(cfg):
        for field in ("order_dim", "order_pool_size", "order_pairs", "order_pairs_eval"):
            if int(cfg[field]) < 1:
                raise ValueError(f"config.model.{field} must be >= 1 with the order head, "
                                 f"got {cfg[field]}")
        if num_mask_rois(cfg) < 2 or int(cfg.max_detections) < 2:
            raise ValueError("config.model.order_head needs pairs: mask_rois_per_image and "
                             "max_detections must be >= 2")
    if semantic_channels(cfg) < 0:
        raise ValueError(f"config.model.semantic_channels must be >= 0 (0 = no semantic "
                         f"input), got {semantic_channels(cfg)}")
    if semantic_head_on(cfg) and (not cfg.glm or semantic_channels(cfg) < 2):
        raise ValueError("config.model.semantic_head predicts the semantic map with the GLM: "
                         "it needs config.model.glm and config.data.semantic_channels >= 2 "
                         f"(the records' class maps, its targets); got glm = {cfg.glm}, "
                         f"semantic_channels = {semantic_channels(cfg)}")


def semantic_head_on(cfg: ml_collections.ConfigDict) -> bool:
    """Whether the GLM predicts the semantic map (configs saved before the field: no)."""
    return bool(cfg.get("semantic_head", False))


def order_head_on(cfg: ml_collections.ConfigDict) -> bool:
    """Whether the model has the order head (configs saved before the field existed: no)."""
    return bool(cfg.get("order_head", False))


def layer_cues(prediction: jax.Array, head: str, num_layers: int) -> jax.Array:
    """What the order head reads of each ROI's layering output, not differentiated.

    Args:
      prediction: head 'layers': float32 [..., R, R, K] logits; 'semdist': [..., R, R].

    Returns:
      float32 [..., R, R, Q]: head 'layers' the K layer probabilities (softmax with the fixed
      background logit 0, as ``sln_jax.losses``), Q = K; head 'semdist' the map / (K + 1),
      Q = 1.
    """
    prediction = jax.lax.stop_gradient(prediction)
    if head == "layers":
        logits = jnp.concatenate([jnp.zeros_like(prediction[..., :1]), prediction], axis=-1)
        return jax.nn.softmax(logits, axis=-1)[..., 1:]
    return prediction[..., None] / (num_layers + 1)


def semantic_channels(cfg: ml_collections.ConfigDict) -> int:
    """S_sem of ``config.model`` (configs saved before the field existed: 0)."""
    return int(cfg.get("semantic_channels", 0) or 0)


def _take(values: jax.Array, index: jax.Array) -> jax.Array:
    """Gather along axis 1: values [B, M, ...], index int [B, N] -> [B, N, ...]."""
    return jax.vmap(lambda v, i: v[i])(values, index)


class SLN(nn.Module):
    """The whole network; see the module docstring for inputs, outputs and config fields."""
    config: ml_collections.ConfigDict

    def setup(self):
        cfg = self.config
        check_config(cfg)
        dtype = jnp.dtype(cfg.dtype)
        width = cfg.backbone_width if cfg.backbone == "resnet_tiny" else 64
        self.backbone = ResNet(cfg.backbone, cfg.norm, width, dtype=dtype)
        self.fpn = FPN(cfg.fpn_dim, dtype=dtype)
        self.rpn = RPNHead(len(cfg.anchor_ratios), cfg.fpn_dim, dtype=dtype)
        if cfg.glm:
            self.glm = GlobalLayeringModule(
                cfg.num_layers, cfg.glm_dim,
                semantic_channels(cfg) if semantic_head_on(cfg) else 0, dtype=dtype)
        self.box_head = BoxHead(cfg.num_classes, 4 * cfg.fpn_dim, dtype=dtype)
        self.layer_head = LayeringHead(cfg.head, cfg.num_layers, cfg.num_classes,
                                       cfg.class_agnostic_masks, cfg.mask_head_dim,
                                       instance_context=cfg.instance_context, dtype=dtype)
        if order_head_on(cfg):
            self.order_head = OrderHead(cfg.order_dim, dtype=dtype)

    def pyramid(self, images: jax.Array) -> list[jax.Array]:
        """FPN levels [P2..P6] of normalized images [B, S, S, 3]: P_l [B, S/2^l, S/2^l, F]."""
        return self.fpn(self.backbone(images))

    def global_layers(self, pyramid: list[jax.Array]) -> jax.Array | None:
        """GLM logits float32 [B, S/4, S/4, K] (with ``semantic_head``, [..., K + S_sem]: the
        semantic map's logits last), or None when ``glm`` is off."""
        return self.glm(pyramid) if self.config.glm else None

    def layer_head_on(self, pyramid: list[jax.Array], global_logits: jax.Array | None,
                      rois: jax.Array, classes: jax.Array,
                      semantic: jax.Array | None = None) -> jax.Array:
        """The layering head on given boxes.

        Args:
          pyramid: ``pyramid(images)``; global_logits: ``global_layers(pyramid)`` (with
            ``semantic_head`` the semantic map is its softmax over the last S_sem logits).
          rois: float32 [B, N, 4] (y1, x1, y2, x2) canvas pixels, e.g. detections or GT boxes.
          classes: int32 [B, N] class (1..C) of each box.
          semantic: the semantic map of ``__call__`` (needed when ``semantic_channels`` > 0
            without ``semantic_head``).

        Returns:
          head 'layers': float32 [B, N, R, R, K] logits; head 'semdist': float32 [B, N, R, R].
        """
        cfg = self.config
        pooled = pool_rois(pyramid, rois, cfg.mask_pool_size)
        glm_pooled = semantic_pooled = None
        if global_logits is not None:
            glm_pooled = pool_glm(jax.nn.softmax(global_logits[..., :cfg.num_layers], axis=-1),
                                  rois, cfg.mask_pool_size)
        if semantic_channels(cfg):
            canvas_side = pyramid[0].shape[1] * FPN_STRIDES[0]
            if semantic_head_on(cfg):
                semantic = jax.nn.softmax(global_logits[..., cfg.num_layers:], axis=-1)
            else:
                semantic = self._check_semantic(semantic, pyramid[0].shape[0], canvas_side)
            semantic_pooled = pool_dense(semantic, rois, cfg.mask_pool_size,
                                         semantic.shape[1] / canvas_side)
        return self.layer_head(pooled, classes, glm_pooled, semantic_pooled)

    def order_on(self, pyramid: list[jax.Array], rois: jax.Array, prediction: jax.Array,
                 first: jax.Array, second: jax.Array) -> jax.Array:
        """The order head on pairs of ROIs.

        Args:
          pyramid: ``pyramid(images)``.
          rois: float32 [B, N, 4] canvas pixels; prediction: the layering head's output on
            them (``layer_head_on``).
          first, second: int32 [B, P] the two ROIs of each pair.

        Returns:
          float32 [B, P] logit that ROI ``first`` is in front of ROI ``second``.
        """
        cfg = self.config
        size = cfg.order_pool_size
        boxes_a, boxes_b = _take(rois, first), _take(rois, second)
        union = pairs.union_boxes(boxes_a, boxes_b)
        pooled = pool_rois(pyramid, union, size)
        maps = layer_cues(prediction, cfg.head, cfg.num_layers)

        def cues(index, boxes):
            resampled = jax.vmap(functools.partial(pairs.resample_maps, output_size=size))(
                _take(maps, index), boxes, union)
            inside = jax.vmap(functools.partial(pairs.box_indicator, output_size=size))(
                boxes, union)
            return jnp.concatenate([inside[..., None], resampled], axis=-1)

        b, p = first.shape
        flat = lambda x: x.reshape((b * p,) + x.shape[2:])  # noqa: E731
        logits = self.order_head(flat(pooled), flat(cues(first, boxes_a)),
                                 flat(cues(second, boxes_b)))
        return logits.reshape(b, p)

    def _check_semantic(self, semantic: jax.Array | None, batch: int, size: int) -> jax.Array:
        """The semantic map, checked against the config and the canvas (ValueError)."""
        channels = semantic_channels(self.config)
        if semantic is None:
            if self.is_initializing():  # parameter shapes only; apply needs the real map
                cells = size // FPN_STRIDES[0]
                return jnp.zeros((batch, cells, cells, channels), jnp.float32)
            raise ValueError(f"config.model.semantic_channels = {channels}: SLN needs the "
                             f"semantic map, semantic=[B, S/s, S/s, {channels}] (the batch's "
                             "'semantic', or sln_jax.canvas.semantic_canvas of each image)")
        shape = tuple(semantic.shape)
        if (len(shape) != 4 or shape[0] != batch or shape[1] != shape[2] or shape[1] < 1
                or size % shape[1] or shape[3] != channels):
            raise ValueError(f"SLN expects the semantic map [{batch}, S/s, S/s, {channels}] "
                             f"for canvas side S = {size} (integer stride s), got {shape}")
        return jnp.asarray(semantic, jnp.float32)

    def __call__(self, images: jax.Array, gt: dict | None = None, train: bool = False,
                 semantic: jax.Array | None = None) -> dict:
        """images: float32 [B, S, S, 3] normalized, S divisible by 64; gt: the batch (train);
        semantic: the semantic map when ``semantic_channels`` > 0 (module docstring).

        Returns the dict of predictions (and targets when training) described above.
        """
        cfg = self.config
        if images.ndim != 4 or images.shape[1] != images.shape[2] or images.shape[1] % 64:
            raise ValueError(f"SLN expects images [B, S, S, 3] with S divisible by 64, got "
                             f"{images.shape}")
        if train and gt is None:
            raise ValueError("SLN(train=True) needs the ground-truth batch `gt`")
        if semantic is not None and not semantic_channels(cfg):
            raise ValueError("SLN got a semantic map but config.model.semantic_channels is 0; "
                             "set it to the map's number of classes")
        size = images.shape[1]
        if semantic_head_on(cfg):
            semantic = None  # predicted by the GLM; a given map is only the training target
        elif semantic_channels(cfg):
            semantic = self._check_semantic(semantic, images.shape[0], size)
        pyramid = self.pyramid(images)

        rpn_levels = len(cfg.anchor_sizes)
        anchors_np, _ = generate_anchors(size, FPN_STRIDES[:rpn_levels],
                                         tuple(cfg.anchor_sizes), tuple(cfg.anchor_ratios))
        anchors = jnp.asarray(anchors_np)
        rpn_logits, rpn_deltas = self.rpn(pyramid[:rpn_levels])
        propose = functools.partial(
            proposals, anchors=anchors, canvas_size=size, pre_nms_topk=cfg.rpn_pre_nms_topk,
            post_nms_topk=cfg.rpn_post_nms_topk, nms_threshold=cfg.rpn_nms_threshold)
        prop_boxes, _, prop_valid = jax.vmap(propose)(rpn_logits, rpn_deltas)
        glm_out = self.global_layers(pyramid)
        global_logits = None if glm_out is None else glm_out[..., :cfg.num_layers]

        if train:
            outputs = self._train_outputs(gt, anchors, rpn_logits, rpn_deltas, prop_boxes,
                                          prop_valid, pyramid, glm_out, semantic)
            if global_logits is not None:
                outputs.update(_global_targets(gt, global_logits))
            if semantic_head_on(cfg):
                outputs.update(_semantic_targets(gt, glm_out[..., cfg.num_layers:]))
            return outputs
        outputs = self._detect(prop_boxes, prop_valid, pyramid, glm_out, size, semantic)
        if global_logits is None:
            global_logits = jnp.zeros((images.shape[0], size // GLM_STRIDE, size // GLM_STRIDE,
                                       cfg.num_layers), jnp.float32)
        outputs["global_logits"] = global_logits
        return outputs

    def _train_outputs(self, gt, anchors, rpn_logits, rpn_deltas, prop_boxes, prop_valid,
                       pyramid, global_logits, semantic) -> dict:
        cfg = self.config
        batch = rpn_logits.shape[0]
        gt_boxes = jnp.asarray(gt["boxes"], jnp.float32)
        gt_classes = jnp.asarray(gt["classes"], jnp.int32)
        gt_valid = jnp.asarray(gt["valid"], bool)
        keys = jax.random.split(self.make_rng("sampling"), 2 * batch)
        rpn_keys, roi_keys = keys[:batch], keys[batch:]

        def rpn_one(boxes, valid, key):
            return sampling.rpn_targets(anchors, boxes, valid, key, cfg.rpn_batch_per_image,
                                        cfg.rpn_positive_fraction)

        rpn_t = jax.vmap(rpn_one)(gt_boxes, gt_valid, rpn_keys)

        def roi_one(props, pvalid, boxes, classes, valid, key):
            return sampling.sample_rois(props, pvalid, boxes, classes, valid, key,
                                        cfg.roi_batch_per_image, cfg.roi_positive_fraction,
                                        positive_iou=cfg.roi_positive_iou)

        rois = jax.vmap(roi_one)(prop_boxes, prop_valid, gt_boxes, gt_classes, gt_valid,
                                 roi_keys)
        roi_boxes = jax.lax.stop_gradient(rois["rois"])
        box_logits, box_deltas = self.box_head(pool_rois(pyramid, roi_boxes, cfg.box_pool_size))
        roi_classes = rois["classes"].astype(jnp.int32)
        class_deltas = jnp.take_along_axis(box_deltas, roi_classes[:, :, None, None],
                                           axis=2)[:, :, 0]
        is_positive = rois["is_positive"] & rois["valid"]
        outputs = {
            "rpn_logits": rpn_logits,
            "rpn_deltas": rpn_deltas,
            "rpn_labels": rpn_t["labels"].astype(jnp.int32),
            "rpn_box_targets": rpn_t["box_targets"],
            "box_logits": box_logits,
            "box_deltas": class_deltas,
            "roi_classes": roi_classes,
            "roi_box_targets": rois["box_targets"],
            "roi_is_positive": is_positive,
            "roi_valid": rois["valid"].astype(bool),
        }

        # The layering head sees positives only: gather them into Np fixed slots.
        slots = num_mask_rois(cfg)
        first = jnp.argsort(jnp.logical_not(is_positive).astype(jnp.int32), axis=1,
                            stable=True)[:, :slots]
        mask_rois = _take(roi_boxes, first)
        mask_valid = _take(is_positive, first)
        mask_classes = _take(roi_classes, first)
        matched = _take(rois["matched_gt"].astype(jnp.int32), first)
        matched_boxes = _take(gt_boxes, matched)
        outputs["mask_valid"] = mask_valid
        prediction = self.layer_head_on(pyramid, global_logits, mask_rois, mask_classes,
                                        semantic)
        if cfg.head == "layers":
            targets = jax.vmap(functools.partial(sampling.roi_layer_targets,
                                                 output_size=cfg.mask_size))(
                mask_rois, matched_boxes, _take(jnp.asarray(gt["layers"]), matched))
            outputs["layer_logits"] = prediction
            outputs["layer_targets"] = targets.astype(jnp.int32)
        else:
            targets = jax.vmap(functools.partial(sampling.roi_semdist_targets,
                                                 output_size=cfg.mask_size))(
                mask_rois, matched_boxes, _take(jnp.asarray(gt["semdist"]), matched))
            outputs["semdist"] = prediction
            outputs["semdist_targets"] = targets.astype(jnp.float32)
        if order_head_on(cfg):
            outputs.update(self._order_targets(gt, pyramid, mask_rois, mask_valid, matched,
                                               prediction))
        return outputs

    def _order_targets(self, gt, pyramid, mask_rois, mask_valid, matched, prediction) -> dict:
        """Order logits and labels of ``order_pairs`` random slot pairs per image whose GT
        objects differ and overlap (amodal masks); label 1 when the first is in front (lower
        GT depth rank)."""
        cfg = self.config
        first_np, second_np = pairs.upper_pairs(mask_rois.shape[1])
        gt_boxes = jnp.asarray(gt["boxes"], jnp.float32)
        crops = jnp.asarray(gt["layers"])
        ranks = jnp.asarray(gt["order"], jnp.int32)
        gt_a, gt_b = matched[:, first_np], matched[:, second_np]  # [B, C]
        overlap = jax.vmap(pairs.masks_overlap)(_take(gt_boxes, gt_a), _take(gt_boxes, gt_b),
                                                _take(crops, gt_a), _take(crops, gt_b))
        eligible = (mask_valid[:, first_np] & mask_valid[:, second_np] & (gt_a != gt_b)
                    & overlap)
        priority = jax.random.uniform(self.make_rng("sampling"), eligible.shape)
        index, valid = jax.vmap(functools.partial(pairs.choose, count=cfg.order_pairs))(
            priority, eligible)
        first = jnp.asarray(first_np)[index]
        second = jnp.asarray(second_np)[index]
        front = (jnp.take_along_axis(_take(ranks, gt_a), index, axis=1)
                 < jnp.take_along_axis(_take(ranks, gt_b), index, axis=1))
        pair_gt = jnp.stack([jnp.take_along_axis(gt_a, index, axis=1),
                             jnp.take_along_axis(gt_b, index, axis=1)], axis=-1)
        return {"order_logits": self.order_on(pyramid, mask_rois, prediction, first, second),
                "order_targets": front.astype(jnp.float32),
                "order_valid": valid,
                "order_gt": pair_gt}

    def _detect(self, prop_boxes, prop_valid, pyramid, global_logits, size: int,
                semantic) -> dict:
        cfg = self.config
        batch, num_props = prop_boxes.shape[:2]
        num_classes = cfg.num_classes
        logits, deltas = self.box_head(pool_rois(pyramid, prop_boxes, cfg.box_pool_size))
        probs = jax.nn.softmax(logits, axis=-1)[:, :, 1:]  # [B, P, C]
        fg_deltas = deltas[:, :, 1:]  # [B, P, C, 4]
        anchors = jnp.broadcast_to(prop_boxes[:, :, None], fg_deltas.shape)
        boxes = box_ops.decode(fg_deltas.reshape(-1, 4), anchors.reshape(-1, 4),
                               clip_to=(size, size)).reshape(batch, num_props * num_classes, 4)
        keep = (prop_valid[:, :, None] & (probs >= cfg.score_threshold)).reshape(batch, -1)
        scores = jnp.where(keep, probs.reshape(batch, -1), -jnp.inf)
        classes = jnp.broadcast_to(jnp.arange(1, num_classes + 1, dtype=jnp.int32),
                                   probs.shape).reshape(batch, -1)
        candidates = min(num_props * num_classes, max(cfg.rpn_post_nms_topk,
                                                      cfg.max_detections))

        def detect_one(image_boxes, image_scores, image_classes):
            top_scores, top = jax.lax.top_k(image_scores, candidates)
            top_boxes, top_classes = image_boxes[top], image_classes[top]
            keep_idx, _ = box_ops.batched_nms(top_boxes, top_scores, top_classes,
                                              cfg.nms_threshold, cfg.max_detections)
            valid = keep_idx >= 0
            safe = jnp.maximum(keep_idx, 0)
            return (jnp.where(valid[:, None], top_boxes[safe], 0.0),
                    jnp.where(valid, top_scores[safe], 0.0),
                    jnp.where(valid, top_classes[safe], 0), valid)

        det_boxes, det_scores, det_classes, det_valid = jax.vmap(detect_one)(
            boxes, scores, classes)
        det_boxes = jax.lax.stop_gradient(det_boxes)
        outputs = {"boxes": det_boxes, "scores": det_scores, "classes": det_classes,
                   "valid": det_valid}
        prediction = self.layer_head_on(pyramid, global_logits, det_boxes, det_classes,
                                        semantic)
        outputs["layer_logits" if cfg.head == "layers" else "semdist"] = prediction
        if order_head_on(cfg):
            outputs.update(self.detection_orders(pyramid, det_boxes, det_scores, det_valid,
                                                  prediction))
        return outputs

    def detection_orders(self, pyramid: list[jax.Array], boxes: jax.Array, scores: jax.Array,
                         valid: jax.Array, prediction: jax.Array) -> dict:
        """The order head on the ``order_pairs_eval`` pairs of valid boxes that overlap, of
        highest score product (detections, or GT boxes in ``benchmarks/diagnose.py``).

        Args:
          pyramid: ``pyramid(images)``; boxes: float32 [B, D, 4] canvas pixels; scores:
            float32 [B, D]; valid: bool [B, D]; prediction: ``layer_head_on`` of the boxes.

        Returns:
          ``order_logits`` float32 [B, D, D] (antisymmetric; 0 off the scored pairs) and
          ``order_known`` bool [B, D, D].
        """
        cfg = self.config
        batch, num = scores.shape
        first_np, second_np = pairs.upper_pairs(num)
        eligible = (valid[:, first_np] & valid[:, second_np]
                    & pairs.boxes_intersect(boxes[:, first_np], boxes[:, second_np]))
        priority = scores[:, first_np] * scores[:, second_np]
        index, known = jax.vmap(functools.partial(pairs.choose, count=cfg.order_pairs_eval))(
            priority, eligible)
        first = jnp.asarray(first_np)[index]
        second = jnp.asarray(second_np)[index]
        logits = jnp.where(known, self.order_on(pyramid, boxes, prediction, first, second), 0.0)
        rows = jnp.arange(batch)[:, None]
        matrix = jnp.zeros((batch, num, num), jnp.float32)
        matrix = matrix.at[rows, first, second].set(logits).at[rows, second, first].set(-logits)
        known_matrix = jnp.zeros((batch, num, num), bool)
        known_matrix = known_matrix.at[rows, first, second].set(known)
        known_matrix = known_matrix.at[rows, second, first].set(known)
        return {"order_logits": matrix, "order_known": known_matrix}


def _semantic_targets(gt: dict, semantic_logits: jax.Array) -> dict:
    """The GLM's semantic logits with their targets: the batch's class fractions at stride 4
    (``sln_jax.canvas.class_fractions``), valid on the cells that hold a class."""
    if "semantic" not in gt:
        raise ValueError("config.model.semantic_head trains on the records' class maps: the "
                         "batch needs 'semantic' (convert with --semantic_dir and set "
                         "config.data.semantic_channels)")
    targets = jnp.asarray(gt["semantic"], jnp.float32)
    if targets.shape != semantic_logits.shape:
        raise ValueError(f"semantic_head: the batch's semantic map {targets.shape} must match "
                         f"the GLM's grid {semantic_logits.shape} (stride {GLM_STRIDE})")
    return {"semantic_logits": semantic_logits, "semantic_targets": targets,
            "semantic_valid": targets.sum(axis=-1) > 0}


def _global_targets(gt: dict, global_logits: jax.Array) -> dict:
    """Stride-4 GLM targets: the canvas map sampled at the pixel nearest each cell centre
    (cell i covers pixels 4i..4i+3), valid inside the image content (not canvas padding)."""
    h, w = global_logits.shape[1:3]
    offset = GLM_STRIDE // 2
    layers = jnp.asarray(gt["global_layers"])[:, offset::GLM_STRIDE, offset::GLM_STRIDE]
    layers = layers[:, :h, :w].astype(jnp.int32)
    rows = jnp.arange(h) * GLM_STRIDE + offset
    cols = jnp.arange(w) * GLM_STRIDE + offset
    image_size = jnp.asarray(gt["image_size"], jnp.int32)
    valid = ((rows[None, :, None] < image_size[:, 0, None, None])
             & (cols[None, None, :] < image_size[:, 1, None, None]))
    return {"global_logits": global_logits, "global_targets": layers, "global_valid": valid}

