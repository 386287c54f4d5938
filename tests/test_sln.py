"""The whole SLN: output shapes (train and inference), gradients, and the overfit test."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from model_test_config import loss_config, model_config, scene_batch
from sln_jax import losses
from sln_jax import postprocess
from sln_jax.models.sln import SLN, check_config, num_mask_rois

S = 128


def _gt(batch: dict) -> dict:
    return {k: jnp.asarray(v) for k, v in batch.items() if k != "amodal"}


@pytest.fixture(scope="module")
def setup():
    cfg = model_config()
    batch = scene_batch(S, num_layers=cfg.num_layers, mask_target_size=14)
    model = SLN(cfg)
    images = jnp.asarray(batch["image"])
    variables = jax.jit(model.init)(jax.random.key(0), images)
    return cfg, batch, model, variables


@pytest.fixture(scope="module")
def train_result(setup):
    cfg, batch, model, variables = setup
    gt = _gt(batch)

    def loss_fn(params, key):
        outputs = model.apply({"params": params}, jnp.asarray(batch["image"]), gt, train=True,
                              rngs={"sampling": key})
        total, metrics = losses.compute(outputs, loss_config())
        return total, (metrics, outputs)

    step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    (total, (metrics, outputs)), grads = step(variables["params"], jax.random.key(1))
    return total, metrics, outputs, grads


@pytest.mark.slow
def test_train_output_shapes(setup, train_result):
    cfg, _, _, variables = setup
    _, _, outputs, _ = train_result
    b, n, np_, r, k = 2, cfg.roi_batch_per_image, num_mask_rois(cfg), cfg.mask_size, 3
    anchors = sum((S // s) ** 2 * 3 for s in (4, 8, 16, 32))
    expected = {
        "rpn_logits": (b, anchors), "rpn_deltas": (b, anchors, 4), "rpn_labels": (b, anchors),
        "rpn_box_targets": (b, anchors, 4), "box_logits": (b, n, cfg.num_classes + 1),
        "box_deltas": (b, n, 4), "roi_classes": (b, n), "roi_box_targets": (b, n, 4),
        "roi_is_positive": (b, n), "roi_valid": (b, n), "mask_valid": (b, np_),
        "layer_logits": (b, np_, r, r, k), "layer_targets": (b, np_, r, r),
        "global_logits": (b, S // 4, S // 4, k), "global_targets": (b, S // 4, S // 4),
        "global_valid": (b, S // 4, S // 4),
    }
    assert {key: tuple(v.shape) for key, v in outputs.items()} == expected
    # Sampling found the GT: every image has positives, and all of them got a mask slot.
    assert int(outputs["roi_is_positive"].sum()) >= 6
    assert (outputs["mask_valid"].sum(1) == np.minimum(outputs["roi_is_positive"].sum(1),
                                                         np_)).all()
    # Canvas padding of image 1 (right quarter) is not a GLM target.
    assert outputs["global_valid"][0].all()
    assert not outputs["global_valid"][1, :, 24:].any() and outputs["global_valid"][1, :, :24].all()
    assert "batch_stats" not in variables  # group_norm: no statistics


@pytest.mark.slow
def test_loss_terms_finite_and_gradients_nonzero_for_every_parameter_group(train_result):
    total, metrics, _, grads = train_result
    assert np.isfinite(float(total))
    assert set(metrics) == {f"loss/{t}" for t in ("rpn_cls", "rpn_box", "box_cls", "box_reg",
                                                   "layers", "amodal", "glm", "total")}
    assert all(np.isfinite(float(v)) and float(v) > 0 for v in metrics.values())
    flat = jax.tree_util.tree_leaves_with_path(grads)
    groups = {}
    for path, g in flat:
        g = np.asarray(g)
        assert np.isfinite(g).all(), jax.tree_util.keystr(path)
        # Group = top module and its first submodule (e.g. backbone/layer3_0, rpn/conv).
        key = "/".join(str(p.key) for p in path[:2])
        groups[key] = groups.get(key, 0.0) + float(np.abs(g).sum())
    assert {k.split("/")[0] for k in groups} == {"backbone", "fpn", "rpn", "glm", "box_head",
                                                 "layer_head"}
    zero = [k for k, v in groups.items() if not v > 0]
    assert not zero, f"parameter groups without gradient: {zero}"


def test_inference_output_shapes_and_decoding(setup):
    cfg, batch, model, variables = setup
    outputs = jax.jit(model.apply)(variables, jnp.asarray(batch["image"]))
    d, r = cfg.max_detections, cfg.mask_size
    assert {k: tuple(v.shape) for k, v in outputs.items()} == {
        "boxes": (2, d, 4), "scores": (2, d), "classes": (2, d), "valid": (2, d),
        "layer_logits": (2, d, r, r, 3), "global_logits": (2, S // 4, S // 4, 3)}
    valid = np.asarray(outputs["valid"])
    classes = np.asarray(outputs["classes"])
    boxes = np.asarray(outputs["boxes"])
    assert ((classes >= 1) & (classes <= cfg.num_classes))[valid].all()
    assert (classes[~valid] == 0).all()
    assert ((boxes >= 0) & (boxes <= S)).all()
    one = jax.tree_util.tree_map(lambda x: np.asarray(x)[0], outputs)
    instances = postprocess.to_instances(one, (S, S), (S, S), cfg)
    assert len(instances) == int(valid[0].sum())


def test_semdist_head_and_frozen_bn_variant_shapes():
    cfg = model_config(head="semdist", norm="frozen_bn", class_agnostic_masks=True, glm=False)
    batch = scene_batch(64, num_layers=cfg.num_layers)
    model = SLN(cfg)
    images = jnp.asarray(batch["image"])
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    assert "batch_stats" in variables and "glm" not in variables["params"]
    outputs = jax.eval_shape(functools.partial(model.apply, train=True), variables, images,
                             _gt(batch), rngs={"sampling": jax.random.key(1)})
    np_, r = num_mask_rois(cfg), cfg.mask_size
    assert outputs["semdist"].shape == (2, np_, r, r)
    assert outputs["semdist_targets"].shape == (2, np_, r, r)
    assert "layer_logits" not in outputs and "global_logits" not in outputs
    detections = jax.eval_shape(model.apply, variables, images)
    assert detections["semdist"].shape == (2, cfg.max_detections, r, r)
    assert detections["global_logits"].shape == (2, 16, 16, cfg.num_layers)


def test_bad_config_and_inputs_are_rejected():
    with pytest.raises(ValueError, match="mask_size"):
        check_config(model_config(mask_size=20))
    with pytest.raises(ValueError, match="head"):
        check_config(model_config(head="masks"))
    model = SLN(model_config())
    with pytest.raises(ValueError, match="divisible by 64"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 100, 100, 3)))


def _best_iou(gt_mask: np.ndarray, instances: list[dict]) -> float:
    ious = [(gt_mask & inst["amodal"]).sum() / max((gt_mask | inst["amodal"]).sum(), 1)
            for inst in instances]
    return max(ious, default=0.0)


@pytest.mark.slow
@pytest.mark.parametrize("head,dtype", [("layers", "float32"), ("semdist", "float32"),
                                        ("layers", "bfloat16")])
def test_overfit_two_images(head, dtype):
    """2 drawn 128 x 128 scenes, tiny backbone, 125 Adam steps: loss down >= 5x and every GT
    amodal mask recovered with IoU >= 0.7 by the decoded detections; in float32 and in mixed
    precision (bfloat16 compute, float32 parameters, losses and optimizer state).

    Measured at 125 steps (layers-float32, semdist-float32, layers-bfloat16): loss down 26x,
    59x, 50x; worst IoU 0.92, 0.92, 0.90 (at 100 steps already 18x, 29x, 33x and 0.86, 0.90,
    0.86; at 200, 48x, 51x, 51x and 0.94, 0.92, 0.92)."""
    cfg = model_config(fpn_dim=32, backbone_width=8, head=head, score_threshold=0.3,
                       dtype=dtype)
    batch = scene_batch(S, num_layers=cfg.num_layers)
    model = SLN(cfg)
    images = jnp.asarray(batch["image"])
    gt = _gt(batch)
    params = jax.jit(model.init)(jax.random.key(0), images)["params"]
    tx = optax.chain(optax.clip_by_global_norm(5.0), optax.adam(2e-3))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, key):
        def loss_fn(p):
            outputs = model.apply({"params": p}, images, gt, train=True, rngs={"sampling": key})
            return losses.compute(outputs, loss_config())[0]

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    history = []
    for i in range(125):
        params, opt_state, loss = step(params, opt_state, jax.random.key(i + 1))
        history.append(float(loss))
    assert history[0] / np.mean(history[-10:]) >= 5, history[::20]

    outputs = jax.jit(model.apply)({"params": params}, images)
    for b in range(2):
        one = jax.tree_util.tree_map(lambda x: np.asarray(x)[b], outputs)
        instances = postprocess.to_instances(one, (S, S), (S, S), cfg)
        for g in np.flatnonzero(batch["valid"][b]):
            assert _best_iou(batch["amodal"][b, g], instances) >= 0.7, (b, g)


def test_layer_head_slots_hold_a_random_subset_of_the_positives(setup):
    """With more positives than Np slots, every slot holds a positive, and another sampling
    key picks another subset (the slots are not the first positives in proposal order)."""
    _, batch, _, _ = setup
    gt = _gt(batch)
    cfg = model_config(mask_rois_per_image=2, roi_batch_per_image=32, roi_positive_fraction=0.5)
    assert num_mask_rois(cfg) == 2
    model = SLN(cfg)
    images = jnp.asarray(batch["image"])
    params = jax.jit(model.init)(jax.random.key(0), images)["params"]
    run = jax.jit(lambda p, key: model.apply({"params": p}, images, gt, train=True,
                                             rngs={"sampling": key}))
    picked = []
    for seed in range(6):
        outputs = run(params, jax.random.key(seed))
        assert outputs["layer_logits"].shape[1] == 2
        assert np.all(outputs["mask_valid"]), seed  # the GT boxes alone give >= 2 positives
        picked.append(np.asarray(outputs["layer_targets"]).tobytes())
    assert len(set(picked)) > 1


def test_layer_head_on_given_boxes_matches_inference(setup):
    """``SLN.layer_head_on`` with the detections' boxes reproduces the inference outputs (the
    hook that runs the head on ground-truth boxes for diagnosis)."""
    cfg, batch, model, variables = setup
    images = jnp.asarray(batch["image"])
    outputs = jax.jit(model.apply)(variables, images)

    def on_boxes(module, images, boxes, classes):
        pyramid = module.pyramid(images)
        return module.layer_head_on(pyramid, module.global_layers(pyramid), boxes, classes)

    again = jax.jit(functools.partial(model.apply, method=on_boxes))(
        variables, images, outputs["boxes"], outputs["classes"])
    np.testing.assert_allclose(again, outputs["layer_logits"], rtol=1e-5, atol=1e-6)


def test_bfloat16_outputs_stay_close_to_float32(setup):
    """Mixed precision on the same float32 parameters: the FPN levels, the GLM logits and the
    layering head's logits on the GT boxes agree with float32 to bfloat16 precision (relative
    error of a few 1e-2), the outputs come back float32, and the parameters stay float32."""
    cfg, batch, _, variables = setup
    images = jnp.asarray(batch["image"])
    boxes = jnp.asarray(batch["boxes"], jnp.float32)
    classes = jnp.maximum(jnp.asarray(batch["classes"], jnp.int32), 1)

    def parts(module, images):
        pyramid = module.pyramid(images)
        glm = module.global_layers(pyramid)
        return pyramid, glm, module.layer_head_on(pyramid, glm, boxes, classes)

    results = {}
    for dtype in ("float32", "bfloat16"):
        model = SLN(model_config(dtype=dtype))
        results[dtype] = jax.jit(functools.partial(model.apply, method=parts))(
            variables, images)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(variables))
    (pyr32, glm32, head32), (pyr16, glm16, head16) = results["float32"], results["bfloat16"]
    assert glm16.dtype == head16.dtype == jnp.float32
    for level32, level16 in zip(pyr32, pyr16):
        assert level16.dtype == jnp.bfloat16
        err = jnp.linalg.norm(level16.astype(jnp.float32) - level32) / jnp.linalg.norm(level32)
        assert float(err) < 0.05, float(err)
    for a16, a32 in ((glm16, glm32), (head16, head32)):
        err = jnp.linalg.norm(a16 - a32) / jnp.maximum(jnp.linalg.norm(a32), 1e-6)
        assert float(err) < 0.05, float(err)


def test_semantic_input_widens_the_layering_head_and_reaches_its_output():
    """semantic_channels = 4: the head's first conv takes 4 more input channels, the
    ROI-aligned map changes the head's logits (gradient nonzero, where the ROIs are), and
    inference and training both take the map."""
    channels = 4
    cfg = model_config(semantic_channels=channels)
    batch = scene_batch(64, num_layers=cfg.num_layers)
    images = jnp.asarray(batch["image"])
    model = SLN(cfg)
    plain = jax.eval_shape(SLN(model_config()).init, jax.random.key(0), images)
    widths = {}
    for name, variables in (("plain", plain),
                            ("semantic", jax.eval_shape(model.init, jax.random.key(0), images))):
        widths[name] = variables["params"]["layer_head"]["conv1"]["kernel"].shape[2]
    assert widths["semantic"] == widths["plain"] + channels

    variables = jax.jit(model.init)(jax.random.key(0), images)
    boxes = jnp.asarray([[[8.0, 8.0, 40.0, 40.0]], [[20.0, 24.0, 60.0, 56.0]]])
    classes = jnp.ones((2, 1), jnp.int32)
    semantic = jax.random.uniform(jax.random.key(1), (2, 16, 16, channels))

    def head(module, images, semantic):
        pyramid = module.pyramid(images)
        return module.layer_head_on(pyramid, module.global_layers(pyramid), boxes, classes,
                                    semantic)

    def total(semantic):
        return jnp.sum(model.apply(variables, images, semantic, method=head) ** 2)

    grad = np.asarray(jax.jit(jax.grad(total))(semantic))
    assert np.abs(grad).sum() > 0
    # Only cells under the boxes matter: image 0's box covers cells 2..9 (stride 4).
    assert np.abs(grad[0, 12:]).sum() == 0 and np.abs(grad[0, :, 12:]).sum() == 0
    assert np.abs(grad[0, 3:9, 3:9]).sum() > 0
    # Inference and training outputs of the whole model with the map.
    shapes = jax.eval_shape(functools.partial(model.apply, semantic=semantic), variables,
                            images)
    assert shapes["layer_logits"].shape[:2] == (2, cfg.max_detections)
    trained = jax.eval_shape(functools.partial(model.apply, train=True, semantic=semantic,
                                               rngs={"sampling": jax.random.key(2)}),
                             variables, images, _gt(batch))
    assert trained["layer_logits"].shape[1] == num_mask_rois(cfg)


def test_semantic_input_is_required_exactly_when_configured():
    batch = scene_batch(64, num_layers=3)
    images = jnp.asarray(batch["image"])
    model = SLN(model_config(semantic_channels=4))
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    with pytest.raises(ValueError, match=r"semantic_channels = 4: SLN needs the semantic map"):
        jax.eval_shape(model.apply, variables, images)
    with pytest.raises(ValueError, match=r"semantic map \[2, S/s, S/s, 4\] for canvas side "
                                         r"S = 64 .* got \(2, 16, 16, 3\)"):
        jax.eval_shape(functools.partial(model.apply, semantic=jnp.zeros((2, 16, 16, 3))),
                       variables, images)
    plain = SLN(model_config())
    with pytest.raises(ValueError, match="semantic_channels is 0"):
        jax.eval_shape(functools.partial(plain.init, semantic=jnp.zeros((2, 16, 16, 4))),
                       jax.random.key(0), images)
    with pytest.raises(ValueError, match="semantic_channels must be >= 0"):
        check_config(model_config(semantic_channels=-1))


def test_semantic_head_predicts_the_map_trains_on_it_and_infers_without_it():
    """semantic_head: the GLM grows S_sem logits, whose softmax feeds the layering head
    (changing the GLM's semantic conv changes the head's logits); training reads the batch's
    map as the target of a 'semantic' loss term with gradients into that conv; inference
    takes no map."""
    channels = 4
    cfg = model_config(semantic_channels=channels, semantic_head=True)
    batch = scene_batch(64, num_layers=cfg.num_layers)
    images = jnp.asarray(batch["image"])
    model = SLN(cfg)
    variables = jax.jit(model.init)(jax.random.key(0), images)
    glm = variables["params"]["glm"]
    assert glm["semantic"]["kernel"].shape[-1] == channels
    assert glm["logits"]["kernel"].shape[-1] == cfg.num_layers
    plain = jax.eval_shape(SLN(model_config()).init, jax.random.key(0), images)
    assert (variables["params"]["layer_head"]["conv1"]["kernel"].shape[2]
            == plain["params"]["layer_head"]["conv1"]["kernel"].shape[2] + channels)

    outputs = jax.jit(model.apply)(variables, images)  # no semantic map needed
    assert outputs["global_logits"].shape == (2, 16, 16, cfg.num_layers)
    shifted = jax.tree_util.tree_map(lambda x: x, variables)
    shifted["params"]["glm"]["semantic"]["bias"] = jnp.arange(channels, dtype=jnp.float32) * 3
    moved = jax.jit(model.apply)(shifted, images)
    valid = np.asarray(outputs["valid"])
    assert valid.any()
    assert not np.allclose(np.asarray(moved["layer_logits"])[valid],
                           np.asarray(outputs["layer_logits"])[valid])

    rng = np.random.default_rng(3)
    fractions = rng.dirichlet(np.ones(channels), (2, 16, 16)).astype(np.float32)
    fractions[:, 12:] = 0.0  # canvas padding: no class, not scored
    gt = dict(_gt(batch), semantic=jnp.asarray(fractions))

    def loss_fn(params):
        out = model.apply({"params": params}, images, gt, train=True,
                          rngs={"sampling": jax.random.key(1)})
        return losses.compute(out, loss_config(semantic=1.0))[0], out

    (_, out), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"])
    assert out["semantic_logits"].shape == (2, 16, 16, channels)
    np.testing.assert_array_equal(np.asarray(out["semantic_valid"])[:, 12:], False)
    assert np.asarray(out["semantic_valid"])[:, :12].all()
    log_p = jax.nn.log_softmax(out["semantic_logits"], axis=-1)
    expected = float(np.mean(-np.sum(fractions * np.asarray(log_p), -1)[:, :12]))
    metrics = losses.compute(out, loss_config(semantic=1.0))[1]
    assert float(metrics["loss/semantic"]) == pytest.approx(expected, rel=1e-5)
    assert np.abs(np.asarray(grads["glm"]["semantic"]["kernel"])).sum() > 0
    with pytest.raises(ValueError, match="batch needs 'semantic'"):
        jax.eval_shape(functools.partial(model.apply, train=True,
                                         rngs={"sampling": jax.random.key(1)}),
                       variables, images, _gt(batch))


def test_semantic_head_needs_the_glm_and_a_map():
    with pytest.raises(ValueError, match="semantic_head predicts the semantic map"):
        check_config(model_config(semantic_channels=4, semantic_head=True, glm=False))
    with pytest.raises(ValueError, match="semantic_head predicts the semantic map"):
        check_config(model_config(semantic_head=True))
