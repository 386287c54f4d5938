"""Tiny model / loss configs and random batches for the model tests (seconds on CPU).

Fields are those of ``docs/interfaces.md`` (documented in ``sln_jax/models/sln.py``).
"""

from __future__ import annotations

import ml_collections
import numpy as np

from sln_jax import layering, semdist


def model_config(**overrides) -> ml_collections.ConfigDict:
    """A tiny ``config.model``: resnet_tiny width 8, fpn_dim 16, K = 3, 3 classes."""
    cfg = ml_collections.ConfigDict()
    cfg.backbone = "resnet_tiny"
    cfg.norm = "group_norm"
    cfg.backbone_width = 8
    cfg.fpn_dim = 16
    cfg.mask_head_dim = 16
    cfg.num_classes = 3
    cfg.num_layers = 3
    cfg.anchor_sizes = (16, 32, 64, 128)
    cfg.anchor_ratios = (0.5, 1.0, 2.0)
    cfg.rpn_pre_nms_topk = 200
    cfg.rpn_post_nms_topk = 32
    cfg.rpn_nms_threshold = 0.7
    cfg.rpn_batch_per_image = 64
    cfg.rpn_positive_fraction = 0.5
    cfg.roi_batch_per_image = 16
    cfg.roi_positive_fraction = 0.5
    cfg.mask_rois_per_image = 64
    cfg.roi_positive_iou = 0.5
    cfg.box_pool_size = 7
    cfg.mask_pool_size = 7
    cfg.mask_size = 14
    cfg.head = "layers"
    cfg.class_agnostic_masks = False
    cfg.glm = True
    cfg.glm_dim = 8
    cfg.instance_context = True
    cfg.score_threshold = 0.0
    cfg.nms_threshold = 0.5
    cfg.max_detections = 6
    cfg.dtype = "float32"
    cfg.update(overrides)
    return cfg


def loss_config(**overrides) -> ml_collections.ConfigDict:
    """``config.loss`` with every weight 1."""
    cfg = ml_collections.ConfigDict({name: 1.0 for name in (
        "rpn_cls", "rpn_box", "box_cls", "box_reg", "layers", "amodal", "semdist", "glm",
        "occluded_pixel_weight")})
    cfg.layers_form = "softmax"
    cfg.update(overrides)
    return cfg


def _disc(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy + 0.5 - cy) / ry) ** 2 + ((xx + 0.5 - cx) / rx) ** 2 <= 1.0


def _rect(h: int, w: int, y1: int, x1: int, y2: int, x2: int) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[y1:y2, x1:x2] = True
    return mask


def scene_batch(size: int = 128, max_instances: int = 4, mask_target_size: int = 14,
                num_layers: int = 3, num_images: int = 2, seed: int = 0) -> dict:
    """A batch of drawn scenes in the layout of ``docs/interfaces.md`` (leading [B]).

    Each image holds 3 overlapping shapes (a rectangle, a disc, a second rectangle) with
    depth ranks 0, 1, 2 and colours that tell them apart; the canvas content is the full
    ``size`` x ``size`` except in image 1, which is padded on the right by a quarter.
    Also returns ``amodal`` bool [B, M, S, S] for checking decoded masks.
    """
    rng = np.random.default_rng(seed)
    s, m, p = size, max_instances, mask_target_size
    out = {key: [] for key in ("image", "image_id", "image_size", "orig_size", "scale",
                               "boxes", "classes", "valid", "order", "occlusion", "layers",
                               "semdist", "global_layers", "amodal")}
    colors = np.array([[1.5, -1.0, -1.0], [-1.0, 1.5, -1.0], [-1.0, -1.0, 1.5]], np.float32)
    for b in range(num_images):
        content_w = s if b % 2 == 0 else s - s // 4
        jitter = rng.integers(-6, 7, size=6)
        shapes = [
            _rect(s, s, 20 + jitter[0], 14 + jitter[1], 70 + jitter[0], 58 + jitter[1]),
            _disc(s, s, 62 + jitter[2], 54 + jitter[3], 26, 26),
            _rect(s, s, 64 + jitter[4], 10 + jitter[5], 108 + jitter[4], 46 + jitter[5]),
        ]
        amodal = np.stack([mask & (np.arange(s) < content_w)[None]
                           for mask in shapes])
        order = np.array([0, 1, 2], np.int32)
        classes = np.array([1, 2, 3], np.int32)
        layers = layering.instance_layers(amodal, order)
        image = np.zeros((s, s, 3), np.float32)
        for i in reversed(range(len(shapes))):  # paint back to front
            image[amodal[i]] = colors[i]
        image[:, content_w:] = 0.0
        image += rng.normal(0, 0.05, image.shape).astype(np.float32)
        image[:, content_w:] = 0.0
        n = len(shapes)
        boxes = layering.masks_to_boxes(amodal)
        crops = layering.crop_to_boxes(layers, boxes, p, "nearest", fill=-1)
        sem = semdist.encode(layers, num_layers)
        sem_crops = layering.crop_to_boxes(sem, boxes, p, "bilinear", fill=0)
        visible = layers == 0
        occlusion = 1.0 - visible.sum((1, 2)) / amodal.sum((1, 2))

        def pad(x, fill, dtype):
            full = np.full((m,) + x.shape[1:], fill, dtype)
            full[:n] = x
            return full

        out["image"].append(image)
        out["image_id"].append(np.int32(b + 1))
        out["image_size"].append(np.array([s, content_w], np.int32))
        out["orig_size"].append(np.array([s, content_w], np.int32))
        out["scale"].append(np.float32(1.0))
        out["boxes"].append(pad(boxes, 0, np.float32))
        out["classes"].append(pad(classes, 0, np.int32))
        out["valid"].append(pad(np.ones(n, bool), False, bool))
        out["order"].append(pad(order, 2 ** 30, np.int32))
        out["occlusion"].append(pad(occlusion, 0, np.float32))
        out["layers"].append(pad(crops, -1, np.int8))
        out["semdist"].append(pad(sem_crops, 0, np.float32))
        out["global_layers"].append(layering.global_layers(amodal, num_layers).astype(np.int8))
        out["amodal"].append(pad(amodal, False, bool))
    return {key: np.stack(value) for key, value in out.items()}
