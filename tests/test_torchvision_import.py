"""The torchvision Mask R-CNN importer against torchvision's own outputs.

The fixture (tests/fixtures/torchvision_maskrcnn, made by
benchmarks/make_torchvision_fixture.py with torch 2.14 / torchvision 0.29) is torchvision's
Mask R-CNN with the ResNet-50-FPN structure at reduced width (ResNet base width 8, FPN and mask
head 32, box head 128, 91 classes), random weights, a random 256 x 256 input and torchvision's
outputs. Here the state dict goes through ``load_torchvision_maskrcnn`` into the Flax modules
SLN is built from (named as in SLN), and their outputs must equal torchvision's to float32
rounding: backbone C2..C5, FPN P2..P6, RPN objectness and deltas of every anchor, box-head
logits and deltas, mask-head features (through the transposed conv) and mask logits.
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sln_jax.models import sln as sln_model
from sln_jax.models import torchvision_import
from sln_jax.models.backbone import FPN, ResNet
from sln_jax.models.roi_heads import BoxHead, LayeringHead, pool_rois
from sln_jax.models.rpn import RPNHead
from sln_jax.ops.anchors import generate_anchors
from model_test_config import model_config

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "torchvision_maskrcnn")
STATE = os.path.join(FIXTURE, "maskrcnn_tiny_state.npz")
OUTPUTS = os.path.join(FIXTURE, "maskrcnn_tiny_outputs.npz")
WIDTH, FPN_DIM, MASK_DIM, CLASSES, MASK_KEPT = 8, 32, 32, 91, 8
YX = [1, 0, 3, 2]  # (x, y, w, h) -> (y, x, h, w)


class TorchvisionLike(nn.Module):
    """SLN's own modules, under SLN's names, at the fixture's widths."""

    @nn.compact
    def __call__(self, images, boxes, box_pooled, mask_pooled):
        features = ResNet("resnet50", "frozen_bn", WIDTH, name="backbone")(images)
        pyramid = FPN(FPN_DIM, name="fpn")(features)
        rpn_logits, rpn_deltas = RPNHead(3, FPN_DIM, name="rpn")(pyramid)
        box_head = BoxHead(CLASSES - 1, 4 * FPN_DIM, name="box_head")
        logits, deltas = box_head(box_pooled)
        aligned = pool_rois(pyramid, boxes, 7)
        logits_aligned, deltas_aligned = box_head(aligned)
        mask_logits = LayeringHead("layers", MASK_KEPT, CLASSES - 1, True, MASK_DIM,
                                   name="layer_head")(mask_pooled, jnp.ones(boxes.shape[:2],
                                                                            jnp.int32))
        return dict(features=features, pyramid=pyramid, rpn_logits=rpn_logits,
                    rpn_deltas=rpn_deltas, box_logits=logits, box_deltas=deltas,
                    aligned=aligned, box_logits_aligned=logits_aligned,
                    box_deltas_aligned=deltas_aligned, mask_logits=mask_logits)


def nhwc(x):
    return np.asarray(x).transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def run():
    ref = dict(np.load(OUTPUTS))
    state = dict(np.load(STATE))
    image = nhwc(ref["image"])
    boxes = ref["boxes"][:, YX][None]  # (y1, x1, y2, x2)
    box_pooled = nhwc(ref["box_pooled"])[None]
    mask_pooled = nhwc(ref["mask_pooled"])[None]
    model = TorchvisionLike()
    abstract = jax.eval_shape(model.init, jax.random.key(0), image, boxes, box_pooled,
                              mask_pooled)
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
    variables, report = torchvision_import.load_torchvision_maskrcnn(STATE, variables)
    # The 1x1 mask predictor is not imported (SLN predicts K layer logits); to check the
    # convs and the transposed conv before it, this test maps it (its first 8 classes).
    predictor = variables["params"]["layer_head"]["predictor"]
    predictor["kernel"] = state["roi_heads.mask_predictor.mask_fcn_logits.weight"][
        :MASK_KEPT].transpose(2, 3, 1, 0)
    predictor["bias"] = state["roi_heads.mask_predictor.mask_fcn_logits.bias"][:MASK_KEPT]
    outputs = jax.jit(model.apply)(variables, image, boxes, box_pooled, mask_pooled)
    return ref, jax.device_get(outputs), report


def assert_close(name, got, want, rel=2e-5):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    scale = max(1.0, float(np.abs(want).max()))
    diff = float(np.abs(got - want).max())
    print(f"{name}: max abs diff {diff:.2e} (max |value| {scale:.3g})")
    assert diff <= rel * scale, (name, diff, scale)


def test_report_lists_what_was_and_was_not_imported(run):
    _, _, report = run
    assert "params/backbone/conv1/kernel" in report["loaded"]
    assert "batch_stats/backbone/layer3_5/bn2/bn/var" in report["loaded"]
    assert "params/box_head/cls/kernel" in report["loaded"]  # 91 classes: same count
    assert "params/layer_head/upsample/kernel" in report["loaded"]
    assert report["unused"] == ["roi_heads.mask_predictor.mask_fcn_logits.bias",
                                "roi_heads.mask_predictor.mask_fcn_logits.weight"]
    assert report["kept"] == ["params/layer_head/predictor/bias",
                              "params/layer_head/predictor/kernel"]
    assert not report["reinitialised"] and not report["partial"]


def test_backbone_and_fpn_equal_torchvision(run):
    ref, out, _ = run
    for level in range(4):
        assert_close(f"C{level + 2}", out["features"][level], nhwc(ref[f"body_{level}"]))
    for level, key in enumerate(["0", "1", "2", "3", "pool"]):
        assert_close(f"P{level + 2}", out["pyramid"][level], nhwc(ref[f"fpn_{key}"]))


def test_rpn_equals_torchvision_in_anchor_order(run):
    ref, out, _ = run
    assert_close("rpn objectness", out["rpn_logits"][0], ref["rpn_objectness"][:, 0])
    # SLN's deltas: (dy, dx, dh, dw) with weights (10, 10, 5, 5); torchvision's RPN: (dx,
    # dy, dw, dh) with weights 1.
    want = ref["rpn_deltas"][:, YX] * np.array([10, 10, 5, 5], np.float32)
    assert_close("rpn deltas", out["rpn_deltas"][0], want)


def test_anchor_order_matches_torchvision_up_to_the_documented_half_stride():
    ref = np.load(OUTPUTS)
    strides, sizes = (4, 8, 16, 32, 64), (32, 64, 128, 256, 512)
    anchors, counts = generate_anchors(256, strides, sizes, (0.5, 1.0, 2.0))
    torchvision = ref["anchors"][:, YX]
    assert anchors.shape == torchvision.shape
    half_stride = np.repeat(np.asarray(strides, np.float32) / 2, counts)[:, None]
    # torchvision centres anchors on i * stride and rounds corners; SLN on (i + 0.5) * stride.
    np.testing.assert_allclose(anchors, torchvision + half_stride, atol=0.5 + 1e-4)


def test_box_head_equals_torchvision_on_the_same_pooled_features(run):
    ref, out, _ = run
    n = ref["boxes"].shape[0]
    assert_close("box logits", out["box_logits"][0], ref["box_logits"])
    assert_close("box deltas", out["box_deltas"][0],
                 ref["box_deltas"].reshape(n, CLASSES, 4)[:, :, YX])


def test_pool_rois_and_box_head_equal_torchvision_roi_align_aligned(run):
    """SLN pools with aligned=True at torchvision's levels (2, 3 and 4 here)."""
    ref, out, _ = run
    n = ref["boxes"].shape[0]
    assert sorted(set(ref["box_levels"].tolist())) == [2, 3, 4]
    assert_close("pooled (aligned=True)", out["aligned"][0], nhwc(ref["box_pooled_aligned"]))
    assert_close("box logits (aligned)", out["box_logits_aligned"][0],
                 ref["box_logits_aligned"])
    assert_close("box deltas (aligned)", out["box_deltas_aligned"][0],
                 ref["box_deltas_aligned"].reshape(n, CLASSES, 4)[:, :, YX])
    # torchvision's Mask R-CNN pools with aligned=False: the documented difference.
    assert np.abs(out["aligned"][0] - nhwc(ref["box_pooled"])).max() > 1e-2


def test_mask_head_convs_and_transposed_conv_equal_torchvision(run):
    ref, out, _ = run
    assert_close("mask logits", out["mask_logits"][0], nhwc(ref["mask_logits"]))


def test_old_key_spelling_and_safetensors_load_the_same(tmp_path, run):
    from safetensors.numpy import save_file

    state = dict(np.load(STATE))
    old = {}
    for key, value in state.items():
        key = key.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        for kind in ("inner", "layer"):
            for i in range(4):
                key = key.replace(f"fpn.{kind}_blocks.{i}.0.", f"fpn.{kind}_blocks.{i}.")
        for i in range(4):
            key = key.replace(f"roi_heads.mask_head.{i}.0.", f"roi_heads.mask_head.mask_fcn{i + 1}.")
        old[key] = value
    assert "roi_heads.mask_head.mask_fcn4.weight" in old and "rpn.head.conv.weight" in old
    save_file(old, str(tmp_path / "old.safetensors"))
    model = TorchvisionLike()
    ref = np.load(OUTPUTS)
    shapes = jax.eval_shape(model.init, jax.random.key(0), nhwc(ref["image"]),
                            ref["boxes"][None], nhwc(ref["box_pooled"])[None],
                            nhwc(ref["mask_pooled"])[None])
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    new, _ = torchvision_import.load_torchvision_maskrcnn(STATE, zeros)
    loaded, report = torchvision_import.load_torchvision_maskrcnn(
        str(tmp_path / "old.safetensors"), zeros)
    assert len(report["loaded"]) == len(jax.tree.leaves(new)) - 2
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(a, b)


def synthetic_maskrcnn_state(cfg, num_classes: int, seed: int = 0) -> dict:
    """A state dict shaped as torchvision's Mask R-CNN over SLN's tiny test model."""
    from test_pretrained import torchvision_state_dict

    rng = np.random.default_rng(seed)
    body = torchvision_state_dict("basic", (1, 1, 1, 1), width=cfg.backbone_width, seed=seed)
    state = {f"backbone.body.{k}": v for k, v in body.items() if not k.startswith("fc.")}
    c, m, a = cfg.fpn_dim, cfg.mask_head_dim, len(cfg.anchor_ratios)

    def put(name, *shape):
        state[f"{name}.weight"] = rng.normal(0, 0.1, shape).astype(np.float32)
        state[f"{name}.bias"] = rng.normal(0, 0.1, shape[:1]).astype(np.float32)

    for i in range(4):
        put(f"backbone.fpn.inner_blocks.{i}.0", c, cfg.backbone_width * 2 ** i, 1, 1)
        put(f"backbone.fpn.layer_blocks.{i}.0", c, c, 3, 3)
    put("rpn.head.conv.0.0", c, c, 3, 3)
    put("rpn.head.cls_logits", a, c, 1, 1)
    put("rpn.head.bbox_pred", 4 * a, c, 1, 1)
    p = cfg.box_pool_size
    put("roi_heads.box_head.fc6", 4 * c, c * p * p)
    put("roi_heads.box_head.fc7", 4 * c, 4 * c)
    put("roi_heads.box_predictor.cls_score", num_classes + 1, 4 * c)
    put("roi_heads.box_predictor.bbox_pred", 4 * (num_classes + 1), 4 * c)
    for i in range(4):
        put(f"roi_heads.mask_head.{i}.0", m, c if i == 0 else m, 3, 3)
    state["roi_heads.mask_predictor.conv5_mask.weight"] = rng.normal(
        0, 0.1, (m, m, 2, 2)).astype(np.float32)
    state["roi_heads.mask_predictor.conv5_mask.bias"] = rng.normal(0, 0.1, m).astype(np.float32)
    put("roi_heads.mask_predictor.mask_fcn_logits", num_classes + 1, m, 1, 1)
    return state


def sln_variables(cfg):
    model = sln_model.SLN(cfg)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)), None)
    return jax.tree.map(lambda s: np.full(s.shape, 7.0, s.dtype), shapes)


def test_sln_with_glm_and_another_class_count():
    cfg = model_config(norm="frozen_bn", class_agnostic_masks=True)
    variables = sln_variables(cfg)
    state = synthetic_maskrcnn_state(cfg, num_classes=90)  # COCO's 91 logits; SLN has 3 + 1
    loaded, report = torchvision_import.load_torchvision_maskrcnn(state, variables)
    params = loaded["params"]
    assert report["reinitialised"] == ["params/box_head/cls/bias", "params/box_head/cls/kernel",
                                       "params/box_head/deltas/bias",
                                       "params/box_head/deltas/kernel"]
    np.testing.assert_array_equal(params["box_head"]["cls"]["kernel"], 7.0)
    # The layering head's first conv: FPN channels from the file, GLM channels untouched.
    assert report["partial"] == ["params/layer_head/conv1/kernel"]
    kernel = params["layer_head"]["conv1"]["kernel"]
    assert kernel.shape[2] == cfg.fpn_dim + cfg.num_layers
    np.testing.assert_array_equal(
        kernel[:, :, :cfg.fpn_dim],
        state["roi_heads.mask_head.0.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(kernel[:, :, cfg.fpn_dim:], 7.0)
    assert any(p.startswith("params/glm/") for p in report["kept"])
    np.testing.assert_array_equal(loaded["batch_stats"]["backbone"]["bn1"]["bn"]["var"],
                                  state["backbone.body.bn1.running_var"])
    # Box fc6: the (C, p, p) columns land on the (p, p, C) rows.
    p, c = cfg.box_pool_size, cfg.fpn_dim
    fc6 = state["roi_heads.box_head.fc6.weight"].reshape(-1, c, p, p)
    np.testing.assert_array_equal(params["box_head"]["fc1"]["kernel"][(2 * p + 3) * c + 5],
                                  fc6[:, 5, 2, 3])


def test_errors_name_the_file_and_key(tmp_path):
    cfg = model_config(norm="frozen_bn")
    variables = sln_variables(cfg)
    state = synthetic_maskrcnn_state(cfg, num_classes=3)
    with pytest.raises(ValueError, match="not a torchvision Mask R-CNN"):
        torchvision_import.load_torchvision_maskrcnn(
            {k.removeprefix("backbone.body."): v for k, v in state.items()
             if k.startswith("backbone.body.")}, variables)
    wide = dict(state)
    wide["backbone.fpn.layer_blocks.0.0.weight"] = np.zeros((16, 16, 5, 5), np.float32)
    np.savez(tmp_path / "bad.npz", **wide)
    with pytest.raises(ValueError, match=r"bad\.npz.*layer_blocks\.0\.0\.weight.*shape"):
        torchvision_import.load_torchvision_maskrcnn(str(tmp_path / "bad.npz"), variables)
    partial = {k: v for k, v in state.items() if not k.startswith("rpn.")}
    with pytest.raises(ValueError, match="no weights for .* params/rpn/"):
        torchvision_import.load_torchvision_maskrcnn(partial, variables)
    with pytest.raises(ValueError, match="frozen_bn"):
        torchvision_import.load_torchvision_maskrcnn(state, sln_variables(model_config()))


def test_trainer_starts_from_a_configured_maskrcnn_file(tmp_path):
    from sln_jax import train
    from tiny_dataset import load_tiny_config

    config = load_tiny_config()
    config.model.norm = "frozen_bn"
    state_dict = synthetic_maskrcnn_state(config.model, num_classes=90)
    np.savez(tmp_path / "maskrcnn.npz", **state_dict)
    config.model.pretrained_maskrcnn = str(tmp_path / "maskrcnn.npz")
    trainer = train.Trainer(config)
    state = trainer.initial_state()
    np.testing.assert_allclose(
        state.params["rpn"]["objectness"]["kernel"],
        state_dict["rpn.head.cls_logits.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(state.batch_stats["backbone"]["bn1"]["bn"]["mean"],
                                  state_dict["backbone.body.bn1.running_mean"])
    config.model.pretrained_backbone = str(tmp_path / "maskrcnn.npz")
    with pytest.raises(ValueError, match="both"):
        train.Trainer(config).initial_state()
