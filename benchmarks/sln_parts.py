"""SLN's training step taken apart: each part jitted alone, with XLA's cost analysis and time.

``measure(config, state, batch, steps)`` returns one dict per part, ``name``, ``gflops`` and
``gb`` (XLA cost analysis of the part's compiled function, whole batch) and ``ms`` (median
milliseconds per image). Parts with parameters run forward + backward (the gradient of the
sum of their outputs' means), as in the step; parameter-free parts run forward (sampling,
targets) or forward + backward to their inputs (ROIAlign, losses). The parts' inputs are the
real intermediate values of the same batch, computed once beforehand. Used by
``bench_vs_torchvision.py``.
"""

from __future__ import annotations

import functools
import statistics
import time

import jax
import jax.numpy as jnp

from sln_jax import losses
from sln_jax.models import sln as sln_lib
from sln_jax.models.roi_heads import pool_glm, pool_rois
from sln_jax.ops import pairs, sampling
from sln_jax.models.rpn import proposals
from sln_jax.ops.anchors import generate_anchors


def _mean_sum(tree) -> jax.Array:
    return sum(jnp.mean(x.astype(jnp.float32)) for x in jax.tree_util.tree_leaves(tree)
               if jnp.issubdtype(x.dtype, jnp.floating))


def cost(compiled) -> dict:
    """{'flops', 'bytes'} of a compiled function from XLA's cost analysis (whole call)."""
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return {"flops": float(analysis.get("flops", 0.0)),
            "bytes": float(analysis.get("bytes accessed", 0.0))}


def _time_and_cost(fn, args, steps: int, batch: int) -> dict:
    compiled = jax.jit(fn).lower(*args).compile()
    analysis = cost(compiled)
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return {"gflops": analysis["flops"] / 1e9, "gb": analysis["bytes"] / 1e9,
            "ms": 1e3 * statistics.median(times) / batch}


def measure(config, state, batch: dict, steps: int) -> list[dict]:
    cfg = config.model
    model = sln_lib.SLN(cfg)
    params, batch_stats = state.params, state.batch_stats
    images = batch["image"]
    b, size = images.shape[0], images.shape[1]
    apply = model.apply

    def call(method, p, *args):
        return apply({"params": p, "batch_stats": batch_stats}, *args, method=method)

    # Intermediate values of this batch, computed once.
    features = jax.jit(lambda p, x: call(lambda m, x: m.backbone(x), p, x))(params, images)
    pyramid = jax.jit(lambda p, f: call(lambda m, f: m.fpn(f), p, f))(params, features)
    levels = len(cfg.anchor_sizes)
    anchors = jnp.asarray(generate_anchors(size, sln_lib.FPN_STRIDES[:levels],
                                           tuple(cfg.anchor_sizes),
                                           tuple(cfg.anchor_ratios))[0])
    outputs = jax.jit(lambda p, x, g: apply({"params": p, "batch_stats": batch_stats}, x, g,
                                            train=True, rngs={"sampling": jax.random.key(0)}))(
        params, images, batch)
    n = outputs["mask_valid"].shape[1]  # Np layering-head slots per image
    gt_boxes, gt_valid = batch["boxes"], batch["valid"].astype(bool)
    rpn_logits, rpn_deltas = jax.jit(lambda p, pyr: call(lambda m, q: m.rpn(q), p, pyr))(
        params, pyramid[:levels])
    propose = functools.partial(proposals, anchors=anchors, canvas_size=size,
                                pre_nms_topk=cfg.rpn_pre_nms_topk,
                                post_nms_topk=cfg.rpn_post_nms_topk,
                                nms_threshold=cfg.rpn_nms_threshold)
    prop_boxes, _, prop_valid = jax.jit(jax.vmap(propose))(rpn_logits, rpn_deltas)
    keys = jax.random.split(jax.random.key(0), b)
    roi_boxes = jnp.broadcast_to(gt_boxes[:, :1], (b, cfg.roi_batch_per_image, 4))
    mask_boxes = jnp.broadcast_to(gt_boxes[:, :1], (b, n, 4))
    classes = jnp.ones((b, n), jnp.int32)
    glm_logits = outputs.get("global_logits")

    parts = []

    def add(name, fn, *args):
        parts.append({"name": name, **_time_and_cost(fn, args, steps, b)})

    add("backbone (ResNet)", jax.grad(lambda p: _mean_sum(
        call(lambda m, x: m.backbone(x), p, images))), params)
    add("FPN", jax.grad(lambda p, f: _mean_sum(call(lambda m, f: m.fpn(f), p, f))),
        params, features)

    def rpn(p, pyr):
        logits, deltas = call(lambda m, q: m.rpn(q), p, pyr)
        return _mean_sum((logits, deltas)), jax.vmap(propose)(
            jax.lax.stop_gradient(logits), jax.lax.stop_gradient(deltas))

    add("RPN + proposals (top-k, NMS)", jax.grad(rpn, has_aux=True), params, pyramid[:levels])

    def sample(props, pvalid, boxes, classes_, valid, layers):
        rpn_t = jax.vmap(lambda g, v, k: sampling.rpn_targets(
            anchors, g, v, k, cfg.rpn_batch_per_image, cfg.rpn_positive_fraction))(
            boxes, valid, keys)
        rois = jax.vmap(lambda pr, pv, g, c, v, k: sampling.sample_rois(
            pr, pv, g, c, v, k, cfg.roi_batch_per_image, cfg.roi_positive_fraction,
            positive_iou=cfg.roi_positive_iou))(props, pvalid, boxes, classes_, valid, keys)
        targets = jax.vmap(functools.partial(sampling.roi_layer_targets,
                                             output_size=cfg.mask_size))(
            rois["rois"][:, :n], boxes[:, :n] if boxes.shape[1] >= n else
            jnp.broadcast_to(boxes[:, :1], (b, n, 4)),
            jnp.broadcast_to(layers[:, :1], (b, n) + layers.shape[2:]))
        return rpn_t, rois, targets

    add("ROI sampling + targets", sample, prop_boxes, prop_valid, gt_boxes,
        batch["classes"], gt_valid, batch["layers"])

    def align(pyr, glm):
        pooled = (pool_rois(pyr, roi_boxes, cfg.box_pool_size),
                  pool_rois(pyr, mask_boxes, cfg.mask_pool_size))
        if glm is not None:
            pooled += (pool_glm(jax.nn.softmax(glm, -1), mask_boxes, cfg.mask_pool_size),)
        return _mean_sum(pooled)

    add("ROIAlign (box + mask + GLM)", jax.grad(align, argnums=(0, 1) if glm_logits is not None
                                                else 0), pyramid, glm_logits)
    box_pooled = pool_rois(pyramid, roi_boxes, cfg.box_pool_size)
    add("box head", jax.grad(lambda p, x: _mean_sum(call(lambda m, x: m.box_head(x), p, x))),
        params, box_pooled)
    if cfg.glm:
        add("GLM", jax.grad(lambda p, pyr: _mean_sum(call(lambda m, q: m.glm(q), p, pyr))),
            params, pyramid)
    mask_pooled = pool_rois(pyramid, mask_boxes, cfg.mask_pool_size)
    glm_pooled = (pool_glm(jax.nn.softmax(glm_logits, -1), mask_boxes, cfg.mask_pool_size)
                  if glm_logits is not None else None)
    add(f"layering head ({n} slots/image)", jax.grad(lambda p, x, g: _mean_sum(call(
        lambda m, x, g: m.layer_head(x, classes, g), p, x, g))), params, mask_pooled,
        glm_pooled)
    if sln_lib.order_head_on(cfg):
        # Po pairs per image among the mask slots (union pooling, cues, head), with the
        # layering head's outputs on the same slots as cues.
        first, second = pairs.upper_pairs(n)
        count = min(int(cfg.order_pairs), len(first))
        first = jnp.broadcast_to(jnp.asarray(first[:count]), (b, count))
        second = jnp.broadcast_to(jnp.asarray(second[:count]), (b, count))
        prediction = outputs["layer_logits" if cfg.head == "layers" else "semdist"]
        add(f"order head ({count} pairs/image)", jax.grad(lambda p, pyr: _mean_sum(call(
            lambda m, q: m.order_on(q, mask_boxes + jnp.arange(n)[None, :, None],
                                    prediction, first, second), p, pyr))), params, pyramid)
    floats = {k: v for k, v in outputs.items() if jnp.issubdtype(v.dtype, jnp.floating)}
    others = {k: v for k, v in outputs.items() if k not in floats}
    add("losses", jax.grad(lambda f: losses.compute({**f, **others}, config.loss)[0]), floats)
    return parts
