"""Start SLN from a COCO-trained torchvision Mask R-CNN (``maskrcnn_resnet50_fpn``) state dict.

A pure parameter mapping (no torch needed): a ``.safetensors`` or ``.npz`` state dict in, the
SLN variables with every matching tensor replaced out. Export the file once where torch is::

    python -c "import numpy as np, torchvision as tv; m = tv.models.detection.maskrcnn_resnet50_fpn(weights='COCO_V1'); np.savez('maskrcnn_r50_fpn_coco.npz', **{k: v.numpy() for k, v in m.state_dict().items()})"

then set ``config.model.pretrained_maskrcnn`` to it (with ``backbone='resnet50'``,
``norm='frozen_bn'``, ``fpn_dim=256``, ``mask_head_dim=256``), or call
``load_torchvision_maskrcnn(path, variables)``. Both key spellings load: torchvision's
current one (``backbone.fpn.inner_blocks.0.0.weight``, ``rpn.head.conv.0.0.weight``,
``roi_heads.mask_head.0.0.weight``) and the one of the checkpoints published before
torchvision 0.13 (``backbone.fpn.inner_blocks.0.weight``, ``rpn.head.conv.weight``,
``roi_heads.mask_head.mask_fcn1.weight``), as the official download still is.

What goes where (torchvision -> SLN ``params`` / ``batch_stats``), and why it is the same
function. ``tests/test_torchvision_import.py`` checks each numerically against torchvision
(fixture made by ``benchmarks/make_torchvision_fixture.py``):

* ``backbone.body.*`` -> ``backbone/*``: ``sln_jax.models.pretrained.flax_path`` (the
  ResNet importer's mapping). Same architecture: ResNet v1.5 (stride on the 3x3 conv), 7x7
  stem with padding 3, max pool 3x3 / 2 padded with -inf, FrozenBatchNorm with eps 1e-5
  (torchvision's ``FrozenBatchNorm2d`` default; Flax ``BatchNorm`` in inference mode).
* ``backbone.fpn.inner_blocks.i`` / ``layer_blocks.i`` -> ``fpn/lateral{i+2}`` /
  ``fpn/output{i+2}`` (i = 0 is C2 / P2 in both). Same: nearest top-down upsampling (equal to
  torchvision's ``interpolate(size=...)`` since SLN's canvas sides divide by 64), 3x3 output
  convs, P6 = stride-2 subsampling of P5 (``LastLevelMaxPool``: max pool k=1 s=2).
* ``rpn.head.conv`` / ``cls_logits`` / ``bbox_pred`` -> ``rpn/conv`` / ``objectness`` /
  ``deltas``. Output layout is the same (per level, row-major cell, then anchor = aspect
  ratio h/w in (0.5, 1, 2) order; channel a * 4 + coordinate). The deltas differ in two
  conventions, both folded into the 1x1 conv (exact): torchvision codes (dx, dy, dw, dh)
  with weights (1, 1, 1, 1) in its RPN, SLN (dy, dx, dh, dw) with (10, 10, 5, 5) everywhere,
  so the rows are permuted and scaled by (10, 10, 5, 5).
* ``roi_heads.box_head.fc6`` / ``fc7`` -> ``box_head/fc1`` / ``fc2``: fc6's input is
  torchvision's (C, 7, 7) flattening, SLN's is (7, 7, C): its columns are permuted.
* ``roi_heads.box_predictor.cls_score`` / ``bbox_pred`` -> ``box_head/cls`` / ``deltas``,
  only when SLN has the same number of classes (91 for COCO: class 0 background in both, the
  other indices in torchvision's COCO category order); the deltas' rows are permuted to
  (dy, dx, dh, dw) per class (weights (10, 10, 5, 5) in both). With another class count
  (COCOA's 1 class, D2SA's 60) both keep their fresh initialisation, as the reference
  does (``amodal_train.py`` replaces ``linear_class`` / ``linear_bbox``).
* ``roi_heads.mask_head.i`` (4 convs 3x3 + ReLU) -> ``layer_head/conv{i+1}``. When the GLM
  is on, SLN's first conv also reads the K ROI-aligned GLM channels after the FPN ones: the
  FPN part of its kernel comes from the file, the GLM part keeps its initialisation (the
  reference, whose first conv reads 439 = 256 + 183 channels, re-creates that conv instead).
* ``roi_heads.mask_predictor.conv5_mask`` (2x2 stride-2 transposed conv + ReLU) ->
  ``layer_head/upsample``, SLN's 1x1 conv + depth-to-space form of the same map: kernel
  ``[Cin, Cout, 2, 2]`` -> ``[1, 1, Cin, (dy, dx, Cout)]``, bias repeated per sub-pixel.

Not mapped (they keep their fresh initialisation, and are listed in the returned report):
``mask_predictor.mask_fcn_logits`` (per-class binary mask logits; SLN predicts K layer logits,
a different output), the GLM (no counterpart in Mask R-CNN), the class-specific box layers
when the class count differs.

Where torchvision's Mask R-CNN computes differently from SLN (the weights map, the functions
around them differ; both are SLN design choices documented elsewhere, unchanged here):

* anchors: torchvision centres a level's anchors at (i * stride, j * stride) and rounds their
  corners to integers; SLN (``sln_jax.ops.anchors``) centres them at ((i + 0.5) * stride, ...),
  unrounded. The same anchor index means the same cell and shape, shifted by stride / 2
  (2 px on P2 ... 32 px on P6), so imported RPN proposals move by that much;
* ROIAlign: torchvision's ``MultiScaleRoIAlign`` uses ``aligned=False`` (no half-pixel
  offset, boxes at least 1 cell); SLN's is ``aligned=True`` (``sln_jax.ops.roi_align``). The
  level rule (k0 = 4, canonical 224) is the same;
* input size: torchvision resizes the short side to 800 (max 1333); SLN fits the long side
  to ``data.image_size`` on a square canvas; both normalize with ImageNet mean / std;
* the mask head's ROI size: 14 -> 28 in torchvision, ``mask_pool_size`` -> ``mask_size``
  (16 -> 32 in the paper configs); convolutions do not depend on it.
Fine-tuning (as the reference does from its COCO checkpoint) absorbs these shifts.
"""

from __future__ import annotations

import os
import re
from typing import Callable

import flax
import numpy as np

from sln_jax.models.pretrained import flax_path as resnet_flax_path
from sln_jax.models.pretrained import read_state_dict

__all__ = ["canonical_key", "load_torchvision_maskrcnn", "is_maskrcnn_state_dict"]

# (dx, dy, dw, dh) -> (dy, dx, dh, dw)
_YX_ORDER = np.array([1, 0, 3, 2])
_RPN_SCALE = np.array([10.0, 10.0, 5.0, 5.0], np.float32)

_OLD_KEYS = [
    (re.compile(r"^backbone\.fpn\.(inner|layer)_blocks\.(\d+)\.(weight|bias)$"),
     r"backbone.fpn.\1_blocks.\2.0.\3"),
    (re.compile(r"^rpn\.head\.conv\.(weight|bias)$"), r"rpn.head.conv.0.0.\1"),
    (re.compile(r"^roi_heads\.mask_head\.mask_fcn(\d)\.(weight|bias)$"),
     lambda m: f"roi_heads.mask_head.{int(m.group(1)) - 1}.0.{m.group(2)}"),
]


def canonical_key(key: str) -> str:
    """torchvision's current key for a key of either spelling (see the module docstring)."""
    key = key.removeprefix("module.")
    for pattern, replacement in _OLD_KEYS:
        if pattern.match(key):
            return pattern.sub(replacement, key)
    return key


def is_maskrcnn_state_dict(state: dict) -> bool:
    """Whether the keys are a torchvision detection model's (``backbone.body.*``)."""
    return any(canonical_key(k).startswith("backbone.body.") for k in state)


def _conv(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 3, 1, 0)  # OIHW -> HWIO


def _rpn_deltas(value: np.ndarray) -> np.ndarray:
    """bbox_pred weight [4A, C, 1, 1] or bias [4A] -> SLN's order and scale."""
    anchors = value.shape[0] // 4
    rows = (np.arange(anchors)[:, None] * 4 + _YX_ORDER[None, :]).reshape(-1)
    scale = np.tile(_RPN_SCALE, anchors)  # [4A]
    value = value[rows] * scale.reshape((-1,) + (1,) * (value.ndim - 1))
    return _conv(value) if value.ndim == 4 else value


def _box_deltas(value: np.ndarray) -> np.ndarray:
    """bbox_pred weight [4K, D] or bias [4K] -> (dy, dx, dh, dw) per class, Dense layout."""
    classes = value.shape[0] // 4
    rows = (np.arange(classes)[:, None] * 4 + _YX_ORDER[None, :]).reshape(-1)
    value = value[rows]
    return value.T if value.ndim == 2 else value


def _fc6(value: np.ndarray, channels: int) -> np.ndarray:
    """fc6 weight [D, C * p * p] ((C, p, p) flattening) -> Dense kernel [p * p * C, D]."""
    out_dim, in_dim = value.shape
    side = int(round((in_dim / channels) ** 0.5))
    if side * side * channels != in_dim:
        raise ValueError(f"fc6 takes {in_dim} inputs, not p * p * {channels} FPN channels")
    return value.reshape(out_dim, channels, side, side).transpose(2, 3, 1, 0).reshape(
        side * side * channels, out_dim)


def _upsample(value: np.ndarray) -> np.ndarray:
    """ConvTranspose2d(k=2, s=2) weight [Cin, Cout, 2, 2] or bias [Cout] -> 1x1 conv to
    (dy, dx, Cout) channels."""
    if value.ndim == 1:
        return np.tile(value, 4)
    cin, cout = value.shape[:2]
    return value.transpose(0, 2, 3, 1).reshape(1, 1, cin, 4 * cout)


def _same(value: np.ndarray) -> np.ndarray:
    return value


def _dense(value: np.ndarray) -> np.ndarray:
    return value.T


def _conv_or_bias(value: np.ndarray) -> np.ndarray:
    return _conv(value) if value.ndim == 4 else value


# canonical key pattern -> (SLN module path, transform of the tensor); "fc6" is resolved with
# the FPN width in _target.
_HEAD_RULES: list[tuple[re.Pattern, Callable[[re.Match], tuple[tuple[str, ...],
                                                               Callable | str]]]] = [
    (re.compile(r"^backbone\.fpn\.inner_blocks\.(\d)\.0\.(weight|bias)$"),
     lambda m: (("fpn", f"lateral{int(m.group(1)) + 2}"), _conv_or_bias)),
    (re.compile(r"^backbone\.fpn\.layer_blocks\.(\d)\.0\.(weight|bias)$"),
     lambda m: (("fpn", f"output{int(m.group(1)) + 2}"), _conv_or_bias)),
    (re.compile(r"^rpn\.head\.conv\.0\.0\.(weight|bias)$"),
     lambda m: (("rpn", "conv"), _conv_or_bias)),
    (re.compile(r"^rpn\.head\.cls_logits\.(weight|bias)$"),
     lambda m: (("rpn", "objectness"), _conv_or_bias)),
    (re.compile(r"^rpn\.head\.bbox_pred\.(weight|bias)$"),
     lambda m: (("rpn", "deltas"), _rpn_deltas)),
    (re.compile(r"^roi_heads\.box_head\.fc6\.(weight|bias)$"),
     lambda m: (("box_head", "fc1"), "fc6" if m.group(1) == "weight" else _same)),
    (re.compile(r"^roi_heads\.box_head\.fc7\.(weight|bias)$"),
     lambda m: (("box_head", "fc2"), _dense if m.group(1) == "weight" else _same)),
    (re.compile(r"^roi_heads\.box_predictor\.cls_score\.(weight|bias)$"),
     lambda m: (("box_head", "cls"), _dense if m.group(1) == "weight" else _same)),
    (re.compile(r"^roi_heads\.box_predictor\.bbox_pred\.(weight|bias)$"),
     lambda m: (("box_head", "deltas"), _box_deltas)),
    (re.compile(r"^roi_heads\.mask_head\.(\d)\.0\.(weight|bias)$"),
     lambda m: (("layer_head", f"conv{int(m.group(1)) + 1}"), _conv_or_bias)),
    (re.compile(r"^roi_heads\.mask_predictor\.conv5_mask\.(weight|bias)$"),
     lambda m: (("layer_head", "upsample"), _upsample)),
]

# Leaves that may legitimately keep their initialisation: class-specific layers.
_CLASS_SPECIFIC = {("box_head", "cls"), ("box_head", "deltas")}
# Model parts the file must fill completely.
_REQUIRED = ("backbone", "fpn", "rpn")


def _target(key: str, fpn_width: int) -> tuple[str, tuple[str, ...], Callable] | None:
    """(collection, path in the collection, transform) of a canonical key; None if unused.

    ``fpn_width``: the FPN's output channels (fc6 reads p * p of them per ROI).
    """
    if key.startswith("backbone.body."):
        found = resnet_flax_path(key.removeprefix("backbone.body."))
        if found is None:
            return None
        collection, path = found
        return collection, ("backbone",) + path, _conv_or_bias
    for pattern, rule in _HEAD_RULES:
        match = pattern.match(key)
        if match:
            module, transform = rule(match)
            if transform == "fc6":
                transform = lambda value: _fc6(value, fpn_width)  # noqa: E731
            leaf = "kernel" if key.endswith("weight") else "bias"
            return "params", module + (leaf,), transform
    return None


def load_torchvision_maskrcnn(source: str | os.PathLike | dict, variables: dict
                              ) -> tuple[dict, dict[str, list[str]]]:
    """SLN variables with the weights of a torchvision Mask R-CNN state dict.

    Args:
      source: ``.npz`` / ``.safetensors`` path, or the state dict itself ({key: array}).
      variables: {'params': ..., 'batch_stats': ...} of ``SLN`` (e.g. ``SLN.init``; shapes
        are what matter, so ``jax.eval_shape`` output works too).

    Returns:
      (variables, report): a new variables dict of the same structure (float32 NumPy leaves
      where loaded), and ``report`` with lists of '/'-joined paths: ``loaded`` (SLN leaves
      filled from the file), ``partial`` (leaves whose GLM input rows kept their init),
      ``reinitialised`` (class-specific layers whose class count differs), ``kept`` (SLN
      leaves with no counterpart: GLM, layer predictor), ``unused`` (file keys not mapped).

    Raises:
      ValueError: naming the file and key when it is not a Mask R-CNN state dict, a shape
        does not fit (another depth or width), or a backbone / FPN / RPN / box-head leaf is
        missing from it.
    """
    name = "state dict" if isinstance(source, dict) else os.fspath(source)
    state = source if isinstance(source, dict) else read_state_dict(source)
    state = {canonical_key(k): np.asarray(v) for k, v in state.items()}
    if not is_maskrcnn_state_dict(state):
        raise ValueError(f"{name}: not a torchvision Mask R-CNN state dict (no "
                         "'backbone.body.*' keys); an ImageNet ResNet goes to "
                         "config.model.pretrained_backbone")
    flat = {c: flax.traverse_util.flatten_dict(flax.core.unfreeze(variables.get(c, {})))
            for c in ("params", "batch_stats")}
    if not flat["batch_stats"]:
        raise ValueError(f"{name}: the model has no BatchNorm statistics; torchvision weights "
                         "need config.model.norm = 'frozen_bn'")
    fpn_out = state.get("backbone.fpn.layer_blocks.0.0.weight")
    fpn_width = int(fpn_out.shape[0]) if fpn_out is not None else 256
    report: dict[str, list[str]] = {k: [] for k in (
        "loaded", "partial", "reinitialised", "kept", "unused")}
    done = set()
    for key in sorted(state):
        target = _target(key, fpn_width)
        if target is None:
            if not key.endswith("num_batches_tracked"):
                report["unused"].append(key)
            continue
        collection, path, transform = target
        if path not in flat[collection]:
            if path[0] == "layer_head":  # e.g. a model without a layering head
                report["unused"].append(key)
                continue
            raise ValueError(f"{name}: key {key!r} has no place in the model "
                             f"({collection}/{'/'.join(path)} does not exist)")
        expected = tuple(flat[collection][path].shape)
        value = np.asarray(transform(np.asarray(state[key], np.float32)), np.float32)
        label = "/".join((collection,) + path)
        if path[:2] in _CLASS_SPECIFIC and value.shape != expected:
            report["reinitialised"].append(label)
            done.add((collection, path))
            continue
        if (path == ("layer_head", "conv1", "kernel") and value.shape[:2] == expected[:2]
                and value.shape[3] == expected[3] and value.shape[2] < expected[2]):
            merged = np.array(flat[collection][path], np.float32)
            merged[:, :, :value.shape[2]] = value  # FPN channels first, then the GLM's
            value = merged
            report["partial"].append(label)
        elif value.shape != expected:
            raise ValueError(f"{name}: key {key!r} gives {label} the shape {value.shape} but "
                             f"the model has {expected} (another depth, width or "
                             "fpn_dim / mask_head_dim?)")
        else:
            report["loaded"].append(label)
        flat[collection][path] = value
        done.add((collection, path))
    missing = sorted("/".join((c,) + p) for c, tree in flat.items() for p in tree
                     if (c, p) not in done and (p[0] in _REQUIRED or p[:2] in (
                         ("box_head", "fc1"), ("box_head", "fc2"))))
    if missing:
        raise ValueError(f"{name}: no weights for {len(missing)} leaves, e.g. {missing[0]} "
                         "(is it the right ResNet depth?)")
    for field in ("loaded", "partial", "reinitialised", "unused"):
        report[field].sort()
    report["kept"] = sorted("/".join((c,) + p) for c, tree in flat.items() for p in tree
                            if (c, p) not in done)
    out = dict(variables)
    for collection, tree in flat.items():
        if tree:
            out[collection] = flax.traverse_util.unflatten_dict(tree)
    return out, report
