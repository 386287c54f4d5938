"""The pairwise depth-order head: pair helpers, the head, its targets, loss and decoding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from model_test_config import loss_config, model_config, scene_batch
from sln_jax import depth_order, losses, postprocess
from sln_jax.models import sln as sln_lib
from sln_jax.models.roi_heads import OrderHead
from sln_jax.ops import pairs

ORDER = dict(order_head=True, order_dim=8, order_pool_size=7, order_pairs=4,
             order_pairs_eval=6, order_rule="head")


def test_upper_pairs_lists_each_unordered_pair_once():
    first, second = pairs.upper_pairs(4)
    assert sorted(zip(first.tolist(), second.tolist())) == [
        (0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]


def test_union_intersection_and_indicator():
    a = jnp.array([[0.0, 0.0, 10.0, 10.0]])
    b = jnp.array([[5.0, 8.0, 20.0, 12.0]])
    np.testing.assert_allclose(pairs.union_boxes(a, b), [[0, 0, 20, 12]])
    np.testing.assert_allclose(pairs.intersection_boxes(a, b), [[5, 8, 10, 10]])
    assert bool(pairs.boxes_intersect(a, b)[0])
    assert not bool(pairs.boxes_intersect(a, b + 100.0)[0])
    # Cell centres of a 4 x 4 grid over [0, 20) x [0, 12): rows 2.5, 7.5, 12.5, 17.5 and
    # columns 1.5, 4.5, 7.5, 10.5; box a holds rows < 10 and columns < 10.
    ind = np.asarray(pairs.box_indicator(a, pairs.union_boxes(a, b), 4))[0]
    expected = np.zeros((4, 4))
    expected[:2, :3] = 1
    np.testing.assert_array_equal(ind, expected)


def _disc_crop(size=14):
    yy, xx = np.mgrid[:size, :size] + 0.5
    inside = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= (size / 2) ** 2
    return np.where(inside, 0, -1).astype(np.int8)


def test_masks_overlap_needs_overlapping_masks_not_only_boxes():
    crop = _disc_crop()
    # Two discs of diameter 10 whose boxes overlap in a 2 x 2 corner that neither disc
    # reaches, then two whose centres are 5 apart (their masks overlap).
    boxes_a = jnp.array([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    boxes_b = jnp.array([[8.0, 8.0, 18.0, 18.0], [0.0, 5.0, 10.0, 15.0]])
    crops = jnp.asarray(np.stack([crop, crop]))
    overlap = pairs.masks_overlap(boxes_a, boxes_b, crops, crops)
    assert overlap.tolist() == [False, True]
    far = pairs.masks_overlap(boxes_a, boxes_b + 50.0, crops, crops)
    assert far.tolist() == [False, False]


def test_choose_takes_eligible_pairs_of_highest_priority():
    priority = jnp.array([0.9, 0.1, 0.8, 0.7, 0.95])
    eligible = jnp.array([True, True, False, True, False])
    index, valid = pairs.choose(priority, eligible, 3)
    assert index.tolist() == [0, 3, 1]
    assert valid.tolist() == [True, True, True]
    index, valid = pairs.choose(priority, eligible, 5)
    assert sorted(index[valid].tolist()) == [0, 1, 3]
    assert valid.tolist() == [True, True, True, False, False]


def test_resample_maps_equals_a_numpy_nearest_reference():
    rng = np.random.default_rng(0)
    maps = rng.random((2, 8, 8, 3)).astype(np.float32)
    boxes = np.array([[10.0, 20.0, 42.0, 36.0], [0.0, 0.0, 16.0, 16.0]], np.float32)
    targets = np.array([[0.0, 10.0, 50.0, 60.0], [4.0, 4.0, 12.0, 12.0]], np.float32)
    got = np.asarray(pairs.resample_maps(jnp.asarray(maps), jnp.asarray(boxes),
                                         jnp.asarray(targets), 5))
    for p in range(2):
        y1, x1, y2, x2 = boxes[p]
        t1, l1, t2, l2 = targets[p]
        for i in range(5):
            for j in range(5):
                cy = t1 + (i + 0.5) * (t2 - t1) / 5
                cx = l1 + (j + 0.5) * (l2 - l1) / 5
                gy = (cy - y1) * 8 / (y2 - y1)
                gx = (cx - x1) * 8 / (x2 - x1)
                want = (maps[p, int(np.floor(gy)), int(np.floor(gx))]
                        if 0 <= gy < 8 and 0 <= gx < 8 else np.zeros(3))
                np.testing.assert_allclose(got[p, i, j], want, rtol=1e-6)


def test_order_head_is_antisymmetric():
    rng = np.random.default_rng(1)
    pooled = jnp.asarray(rng.normal(size=(5, 7, 7, 6)), jnp.float32)
    cues_a = jnp.asarray(rng.random((5, 7, 7, 4)), jnp.float32)
    cues_b = jnp.asarray(rng.random((5, 7, 7, 4)), jnp.float32)
    head = OrderHead(8)
    params = head.init(jax.random.PRNGKey(0), pooled, cues_a, cues_b)
    # A non-zero final layer, so the test does not pass on an all-zero output.
    params = jax.tree.map(lambda x: x + 0.1, params)
    ab = head.apply(params, pooled, cues_a, cues_b)
    ba = head.apply(params, pooled, cues_b, cues_a)
    assert ab.shape == (5,)
    assert float(jnp.max(jnp.abs(ab))) > 1e-3
    np.testing.assert_allclose(ab, -ba, rtol=1e-4, atol=1e-5)  # float reordering only


def _cue_task(rng, n):
    """Pairs of boxes in a 7 x 7 union grid; on their overlap the front object's cue says
    'seen' (channel 1) and the back one's 'hidden' (channel 2), with noise: the head must
    compare the two ROIs' cues on the overlap."""
    cues = np.zeros((2, n, 7, 7, 3), np.float32)
    labels = rng.random(n) < 0.5  # True: a in front
    for k in range(n):
        boxes = []
        for _ in range(2):
            y, x = rng.integers(0, 4, size=2)
            boxes.append((y, x, y + rng.integers(3, 7 - y + 1), x + rng.integers(3, 7 - x + 1)))
        front = 0 if labels[k] else 1
        for side, (y1, x1, y2, x2) in enumerate(boxes):
            cues[side, k, y1:y2, x1:x2, 0] = 1.0
            cues[side, k, y1:y2, x1:x2, 1] = 1.0
        (ay1, ax1, ay2, ax2), (by1, bx1, by2, bx2) = boxes
        oy1, ox1, oy2, ox2 = max(ay1, by1), max(ax1, bx1), min(ay2, by2), min(ax2, bx2)
        back = 1 - front
        cues[back, k, oy1:oy2, ox1:ox2, 1] = 0.0
        cues[back, k, oy1:oy2, ox1:ox2, 2] = 1.0
    cues[..., 1:] += rng.normal(0, 0.1, cues[..., 1:].shape).astype(np.float32)
    return cues[0], cues[1], labels.astype(np.float32)


def test_order_head_learns_to_compare_the_two_rois_cues():
    rng = np.random.default_rng(0)
    head = OrderHead(8)
    pooled = jnp.zeros((64, 7, 7, 4), jnp.float32)
    a, b, _ = _cue_task(rng, 64)
    params = head.init(jax.random.PRNGKey(0), pooled, jnp.asarray(a), jnp.asarray(b))
    tx = optax.adam(1e-2)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, a, b, y):
        def loss(p):
            return optax.sigmoid_binary_cross_entropy(head.apply(p, pooled, a, b), y).mean()
        value, grads = jax.value_and_grad(loss)(params)
        updates, opt = tx.update(grads, opt)
        return optax.apply_updates(params, updates), opt, value

    for _ in range(300):
        a, b, y = _cue_task(rng, 64)
        params, opt, _ = step(params, opt, jnp.asarray(a), jnp.asarray(b), jnp.asarray(y))
    a, b, y = _cue_task(rng, 256)
    pooled = jnp.zeros((256, 7, 7, 4), jnp.float32)
    logits = head.apply(params, pooled, jnp.asarray(a), jnp.asarray(b))
    accuracy = float(np.mean((np.asarray(logits) > 0) == (y > 0.5)))
    assert accuracy > 0.95


@pytest.fixture(scope="module")
def order_model():
    """(config, model, variables, jitted train apply (variables, images, gt, key))."""
    cfg = model_config(**ORDER)
    model = sln_lib.SLN(cfg)
    images = jnp.asarray(scene_batch(size=128, max_instances=4, num_images=2)["image"])
    variables = jax.jit(model.init)({"params": jax.random.PRNGKey(0)}, images)
    train = jax.jit(lambda v, im, gt, key: model.apply(v, im, gt, train=True,
                                                       rngs={"sampling": key}))
    return cfg, model, variables, train


@pytest.fixture(scope="module")
def trained_outputs(order_model):
    cfg, model, variables, train = order_model
    batch = scene_batch(size=128, max_instances=4, num_images=2)
    images = jnp.asarray(batch["image"])
    gt = {k: jnp.asarray(v) for k, v in batch.items() if k != "amodal"}
    out = train(variables, images, gt, jax.random.PRNGKey(1))
    infer = jax.jit(model.apply)(variables, images)
    return cfg, batch, jax.device_get(out), jax.device_get(infer)


def test_train_pairs_are_labelled_by_the_gt_ranks(trained_outputs):
    cfg, batch, out, _ = trained_outputs
    assert out["order_logits"].shape == (2, cfg.order_pairs)
    valid = out["order_valid"]
    assert valid.any()
    ranks = batch["order"]
    for b, p in zip(*np.nonzero(valid)):
        g, h = out["order_gt"][b, p]
        assert g != h and batch["valid"][b, g] and batch["valid"][b, h]
        # The pair's GT amodal masks overlap, and the label is the lower rank in front.
        assert np.any(batch["amodal"][b, g] & batch["amodal"][b, h])
        assert out["order_targets"][b, p] == float(ranks[b, g] < ranks[b, h])
    terms = losses.compute(out, loss_config(order=1.0))[1]
    assert np.isfinite(float(terms["loss/order"])) and float(terms["loss/order"]) > 0


def test_train_pairs_skip_gt_pairs_whose_masks_do_not_overlap(order_model):
    _, _, variables, train = order_model
    batch = scene_batch(size=128, max_instances=4, num_images=2)
    # Move the third shape's box (and so its mask crop) away from the others: its pairs
    # must never be chosen, though the other two still are.
    batch["boxes"][:, 2] = np.array([100.0, 100.0, 127.0, 127.0])
    images = jnp.asarray(batch["image"])
    gt = {k: jnp.asarray(v) for k, v in batch.items() if k != "amodal"}
    for seed in range(3):
        out = train(variables, images, gt, jax.random.PRNGKey(seed))
        assert np.asarray(out["order_valid"]).any()
        chosen = np.asarray(out["order_gt"])[np.asarray(out["order_valid"])]
        assert not np.any(chosen == 2)


def test_order_loss_is_the_masked_mean_binary_cross_entropy():
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]], np.float32)
    targets = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]], np.float32)
    valid = np.array([[True, True, False], [False, True, True]])
    bce = np.logaddexp(0, logits) - logits * targets
    got = losses._order_terms({"order_logits": logits, "order_targets": targets,
                               "order_valid": valid})["order"]
    np.testing.assert_allclose(float(got), bce[valid].mean(), rtol=1e-6)
    none = losses._order_terms({"order_logits": logits, "order_targets": targets,
                                "order_valid": np.zeros_like(valid)})["order"]
    assert float(none) == 0.0


def test_detection_orders_are_antisymmetric_on_scored_pairs(trained_outputs):
    cfg, _, _, out = trained_outputs
    logits, known = out["order_logits"], out["order_known"]
    d = cfg.max_detections
    assert logits.shape == known.shape == (2, d, d)
    np.testing.assert_allclose(logits, -np.transpose(logits, (0, 2, 1)))
    np.testing.assert_array_equal(known, np.transpose(known, (0, 2, 1)))
    assert known.any()
    for b in range(2):
        assert known[b].sum() // 2 <= cfg.order_pairs_eval
        assert not np.any(np.diag(known[b]))
        boxes, valid = out["boxes"][b], out["valid"][b]
        for i, j in zip(*np.nonzero(known[b])):
            assert valid[i] and valid[j]
            inter = np.minimum(boxes[i, 2:], boxes[j, 2:]) - np.maximum(boxes[i, :2],
                                                                         boxes[j, :2])
            assert np.all(inter > 0)
        assert np.all(logits[b][~known[b]] == 0)


def _two_instance_outputs(order_logit: float, known: bool, shift: int = 0) -> dict:
    """Two detections on a 32-px canvas whose layer logits say 0 is in front of 1."""
    r, k = 8, 3
    logits = np.full((2, r, r, k), -10.0, np.float32)
    logits[0, :, :, 0] = 10.0  # detection 0 visible everywhere
    logits[1, :, :, 1] = 10.0  # detection 1 hidden once everywhere
    matrix = np.zeros((2, 2), np.float32)
    matrix[0, 1], matrix[1, 0] = order_logit, -order_logit
    return {"boxes": np.array([[0, 0, 16, 16], [8 + shift, 8 + shift, 24 + shift, 24 + shift]],
                              np.float32),
            "scores": np.array([0.9, 0.8], np.float32),
            "classes": np.array([1, 1], np.int32),
            "valid": np.array([True, True]),
            "layer_logits": logits,
            "order_logits": matrix,
            "order_known": np.full((2, 2), known)}


def test_postprocess_orders_scored_pairs_by_the_order_head():
    cfg = model_config(**ORDER)
    rule = postprocess.to_instances(_two_instance_outputs(0.0, False), (32, 32), (32, 32), cfg)
    assert rule[0]["depth_order"] == {1: 1} and rule[1]["depth_order"] == {0: -1}
    learned = postprocess.to_instances(_two_instance_outputs(-2.0, True), (32, 32), (32, 32),
                                       cfg)
    assert learned[0]["depth_order"] == {1: -1} and learned[1]["depth_order"] == {0: 1}
    # Without the head in the config its outputs are ignored (older models' decoding), and
    # so they are with the head when another rule is asked for.
    plain = postprocess.to_instances(_two_instance_outputs(-2.0, True), (32, 32), (32, 32),
                                     model_config())
    assert plain[0]["depth_order"] == {1: 1}
    other = postprocess.to_instances(_two_instance_outputs(-2.0, True), (32, 32), (32, 32),
                                     model_config(**dict(ORDER, order_rule="soft")))
    assert other[0]["depth_order"] == {1: 1}
    with pytest.raises(ValueError, match="order_head"):
        postprocess.to_instances(_two_instance_outputs(-2.0, True), (32, 32), (32, 32),
                                 model_config(order_rule="head"))
    # Disjoint masks: no order, whatever the head says.
    apart = postprocess.to_instances(_two_instance_outputs(-2.0, True, shift=10), (40, 40),
                                     (40, 40), cfg)
    assert apart[0]["depth_order"] == {} and apart[1]["depth_order"] == {}


def test_postprocess_refuses_an_order_head_config_without_its_outputs():
    outputs = _two_instance_outputs(1.0, True)
    del outputs["order_known"]
    with pytest.raises(ValueError, match="order_known"):
        postprocess.to_instances(outputs, (32, 32), (32, 32), model_config(**ORDER))


def test_from_layer_windows_takes_the_learned_order_on_overlapping_pairs():
    layers = [np.full((10, 10), -1, np.int32), np.full((10, 10), -1, np.int32)]
    layers[0][:6, :6] = 0
    layers[1][3:9, 3:9] = 1
    boxes = np.array([[0, 0, 6, 6], [3, 3, 9, 9]], np.float32)
    assert depth_order.from_layer_windows(layers, boxes)[0, 1] == 1
    learned = np.array([[0, -1], [1, 0]], np.int8)
    order = depth_order.from_layer_windows(layers, boxes, learned)
    assert order[0, 1] == -1 and order[1, 0] == 1


def test_config_check_needs_pairs():
    with pytest.raises(ValueError, match="order_pairs"):
        sln_lib.check_config(model_config(**dict(ORDER, order_pairs=0)))
    with pytest.raises(ValueError, match="max_detections"):
        sln_lib.check_config(model_config(**dict(ORDER, max_detections=1)))


def _windows(probs_list, boxes):
    """(top, left, probs) windows of full-image per-layer probabilities."""
    out = []
    for probs, (y1, x1, y2, x2) in zip(probs_list, boxes.astype(int)):
        out.append((y1, x1, probs[y1:y2, x1:x2]))
    return out


def test_hidden_else_score_rule_compares_mean_hidden_then_scores():
    h = w = 12
    boxes = np.array([[0, 0, 8, 8], [4, 4, 12, 12]], np.float32)
    amodal = [np.zeros((h, w), bool), np.zeros((h, w), bool)]
    amodal[0][0:8, 0:8] = True
    amodal[1][4:12, 4:12] = True
    probs = [np.zeros((h, w, 2), np.float32), np.zeros((h, w, 2), np.float32)]
    # On the overlap (rows / cols 4..7): detection 0 is 0.3 hidden (of a P(object) of only
    # 0.1), detection 1 0.6 hidden: 0 is in front although 1 scores higher.
    probs[0][amodal[0]] = (0.7, 0.3)
    probs[0][4:8, 4:8] = (0.07, 0.03)
    probs[1][amodal[1]] = (0.4, 0.6)
    windows = _windows(probs, boxes)
    scores = np.array([0.2, 0.9])
    rule = depth_order.from_probability_windows(windows, amodal, boxes,
                                                rule="hidden_else_score", scores=scores)
    assert rule[0, 1] == 1 and rule[1, 0] == -1
    # Only the overlap counts: hiding more of 0 elsewhere changes nothing.
    probs[0][0:4, 0:4] = (0.0, 1.0)
    again = depth_order.from_probability_windows(_windows(probs, boxes), amodal, boxes,
                                                 rule="hidden_else_score", scores=scores)
    np.testing.assert_array_equal(again, rule)
    # Equal hidden shares: the higher score is in front.
    probs[1][4:8, 4:8] = (0.07, 0.03)
    probs[1][amodal[1] & ~amodal[0]] = (0.7, 0.3)
    tie = depth_order.from_probability_windows(_windows(probs, boxes), amodal, boxes,
                                               rule="hidden_else_score", scores=scores)
    assert tie[0, 1] == -1 and tie[1, 0] == 1
    # Boxes that overlap, masks that do not (0 shrunk to its top-left quarter): the score.
    small = [amodal[0] & (np.arange(h)[:, None] < 4) & (np.arange(w)[None] < 4), amodal[1]]
    apart = depth_order.from_probability_windows(_windows(probs, boxes), small, boxes,
                                                 rule="hidden_else_score", scores=scores)
    assert apart[0, 1] == -1 and apart[1, 0] == 1
    assert depth_order.from_probability_windows(_windows(probs, boxes), small, boxes)[0, 1] == 0
    with pytest.raises(ValueError, match="scores"):
        depth_order.from_probability_windows(windows, amodal, boxes, rule="hidden_else_score")
    with pytest.raises(ValueError, match="rule"):
        depth_order.from_probability_windows(windows, amodal, boxes, rule="argmax")
