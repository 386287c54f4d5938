"""Tests of benchmarks/diagnose.py's core functions on hand-made inputs with known answers."""

import importlib.util
import os
import sys

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from sln_jax import postprocess
from sln_jax.evaluation import ground_truth
from sln_jax.evaluation import metrics as evaluation
from sln_jax.evaluation import results as eval_results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "diagnose", os.path.join(REPO, "benchmarks", "diagnose.py"))
diagnose = importlib.util.module_from_spec(_spec)
sys.modules["diagnose"] = diagnose  # its dataclasses look their module up
_spec.loader.exec_module(diagnose)


def rle(mask):
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    r["counts"] = r["counts"].decode("ascii")
    return r


def box_mask(h, w, y1, x1, y2, x2):
    m = np.zeros((h, w), bool)
    m[y1:y2, x1:x2] = True
    return m


def test_class_confusion_counts_and_missed():
    # Image 0: GT classes 1, 2, 2; GT 0 -> det class 1, GT 1 -> det class 1, GT 2 missed.
    # Image 1: GT class 3 -> det class 3, GT class 1 -> det class 2.
    matches = [{0: 0, 1: 2}, {0: 1, 1: 0}]
    gt = [np.array([1, 2, 2]), np.array([3, 1])]
    det = [np.array([1, 3, 1]), np.array([2, 3])]
    c = diagnose.class_confusion(matches, gt, det, [1, 2, 3])
    np.testing.assert_array_equal(c, [[1, 1, 0, 0],
                                      [1, 0, 0, 1],
                                      [0, 0, 1, 0]])


def test_duplicates_same_and_other_class():
    scores = np.array([0.6, 0.9, 0.8, 0.7])  # rank: 1, 2, 3, 0
    classes = np.array([1, 1, 1, 2])
    ious = np.full((4, 4), 0.1)
    np.fill_diagonal(ious, 1.0)

    def link(a, b, v):
        ious[a, b] = ious[b, a] = v

    link(1, 2, 0.6)   # det 2 duplicates det 1, same class
    link(1, 3, 0.7)   # det 3 duplicates det 1, other class
    link(0, 3, 0.9)   # det 0 duplicates det 3 (other class), ranked below it
    link(0, 2, 0.5)   # not above the threshold
    same, other = diagnose.duplicates(scores, classes, ious)
    np.testing.assert_array_equal(same, [False, False, True, False])
    np.testing.assert_array_equal(other, [True, False, False, True])
    # Equal scores: the earlier detection ranks higher (stable, as the evaluator).
    same, _ = diagnose.duplicates(np.array([0.5, 0.5]), np.array([1, 1]),
                                  np.array([[1.0, 0.8], [0.8, 1.0]]))
    np.testing.assert_array_equal(same, [False, True])


def test_mask_nms_suppressed_detections_suppress_nothing():
    # A (0.9) ~ B (0.8) ~ C (0.7), A and C apart: B goes, C stays.
    ious = np.array([[1.0, 0.6, 0.1], [0.6, 1.0, 0.6], [0.1, 0.6, 1.0]])
    np.testing.assert_array_equal(diagnose.mask_nms(np.array([0.9, 0.8, 0.7]),
                                                    ious), [True, False, True])


def test_layer_confusion_counts_over_the_union_of_masks():
    gt = np.array([[0, 0, 1, 2, 3, -1, -1]])
    pred = np.array([[0, 1, 1, 0, -1, 2, -1]])
    c = diagnose.layer_confusion(gt, pred)
    expected = np.zeros((4, 4), np.int64)
    expected[0, 0] = 1  # visible, right
    expected[0, 1] = 1  # visible called hidden
    expected[1, 1] = 1
    expected[2, 0] = 1  # hidden twice called visible
    expected[2, 3] = 1  # layer 3 is "hidden 2+", predicted background
    expected[3, 2] = 1  # background called hidden twice
    np.testing.assert_array_equal(c, expected)  # the pixel background in both is left out
    assert c.sum() == 6


def _pair_probs(front_hidden, back_hidden, third=None):
    """Two detections on pixels 0..2 and 1..3 (overlap 1, 2), K = 3; on the overlap each has
    P(visible) = 0.5 and P(hidden once) = the given value, elsewhere P(visible) = 0.9."""
    probs = np.zeros((2, 4, 3), np.float32)
    probs[0, 0:3, 0] = 0.9
    probs[1, 1:4, 0] = 0.9
    probs[0, 1:3] = (0.5, front_hidden, 0.0)
    probs[1, 1:3] = (0.5, back_hidden, 0.0)
    return probs


def test_rule_orders_on_a_constructed_pair():
    probs = _pair_probs(0.35, 0.45)
    layers = postprocess.decode_layer_probs(probs)["layers"]
    assert (layers[:, 1:3] == 0).all()  # both argmax-visible on the overlap: a tie
    scores = np.array([0.8, 0.9])  # the back one scores higher
    orders = diagnose.rule_orders(layers, diagnose.soft_cues(probs), scores)
    assert set(orders) == set(diagnose.RULES)
    assert orders["argmax layers"][0, 1] == 0
    # expected layer = P(hidden) here: 0.35 / 0.85 < 0.45 / 0.95, detection 0 in front
    for rule in ("expected layer", "P(hidden)", "seen vs hidden (soft)",
                 "P(hidden), else score"):
        assert orders[rule][0, 1] == 1 and orders[rule][1, 0] == -1, rule
    assert orders["higher score"][0, 1] == -1 and orders["higher score"][1, 0] == 1
    # The same cues on both: every soft rule ties, the tie-break takes the score.
    probs = _pair_probs(0.4, 0.4)
    orders = diagnose.rule_orders(postprocess.decode_layer_probs(probs)["layers"],
                                  diagnose.soft_cues(probs), scores)
    for rule in ("argmax layers", "expected layer", "P(hidden)", "seen vs hidden (soft)"):
        assert orders[rule][0, 1] == 0, rule
    assert orders["P(hidden), else score"][0, 1] == -1
    # Argmax decides when the layers differ: detection 1 hidden on the overlap.
    probs = _pair_probs(0.1, 0.8)
    layers = postprocess.decode_layer_probs(probs)["layers"]
    orders = diagnose.rule_orders(layers, diagnose.soft_cues(probs), scores)
    assert orders["argmax layers"][0, 1] == 1


def test_rule_orders_without_overlap_only_the_score_orders():
    probs = np.zeros((2, 4, 3), np.float32)
    probs[0, :2, 0] = probs[1, 2:, 1] = 0.9
    layers = postprocess.decode_layer_probs(probs)["layers"]
    orders = diagnose.rule_orders(layers, diagnose.soft_cues(probs), np.array([0.3, 0.6]))
    for rule, value in orders.items():
        assert value[0, 1] == (-1 if "score" in rule else 0), rule


def test_soft_seen_vs_hidden_needs_no_hard_overlap():
    # Detection 1's probability (0.3, below the amodal threshold) spills onto pixel 0, where
    # detection 0 is seen and 1 would be hidden: only the soft rule orders the pair.
    probs = np.zeros((2, 2, 3), np.float32)
    probs[0, 0, 0] = 0.9
    probs[1, 1, 0] = 0.9
    probs[1, 0, 1] = 0.3
    layers = postprocess.decode_layer_probs(probs)["layers"]
    assert (layers == [[0, -1], [-1, 0]]).all()
    orders = diagnose.rule_orders(layers, diagnose.soft_cues(probs), np.array([0.5, 0.5]))
    assert orders["seen vs hidden (soft)"][0, 1] == 1
    assert orders["P(hidden)"][0, 1] == 0 and orders["argmax layers"][0, 1] == 0


def test_soft_cues_condition_on_the_object():
    cues = diagnose.soft_cues(np.array([[0.2, 0.2, 0.4], [0.0, 0.0, 0.0]]))
    np.testing.assert_allclose(cues["expected"], [(0.2 + 0.8) / 0.8, 0.0], rtol=1e-6)
    np.testing.assert_allclose(cues["hidden"], [0.75, 0.0], rtol=1e-6)
    np.testing.assert_allclose(cues["joint_visible"], [0.2, 0.0], rtol=1e-6)
    np.testing.assert_allclose(cues["joint_hidden"], [0.6, 0.0], rtol=1e-6)


def test_occluded_by_order():
    # 0 in front of 1 (they overlap), 2 in front of 0 but apart, 3 in front of 1 but not
    # eligible (a low-scoring duplicate, say).
    order = np.zeros((4, 4), np.int8)
    for front, back in ((0, 1), (2, 0), (3, 1)):
        order[front, back], order[back, front] = 1, -1
    intersection = np.zeros((4, 4))
    intersection[0, 1] = intersection[1, 0] = 5
    intersection[1, 3] = intersection[3, 1] = 9
    eligible = np.array([True, True, True, False])
    np.testing.assert_array_equal(
        diagnose.occluded_by_order(order, intersection, eligible), [False, True, False, False])
    np.testing.assert_array_equal(
        diagnose.occluded_by_order(order, intersection, eligible, min_pixels=6),
        [False, False, False, False])


def test_pair_records_and_accuracy_by_level():
    h = w = 20
    masks = [box_mask(h, w, 0, 0, 10, 10), box_mask(h, w, 5, 5, 15, 15),
             box_mask(h, w, 8, 8, 20, 20)]
    gt = {"images": [{"id": 1, "height": h, "width": w}], "categories": [{"id": 1}],
          "annotations": [{"id": k + 1, "image_id": 1, "category_id": 1,
                           "segmentation": rle(m), "area": float(m.sum()), "iscrowd": 0,
                           "occlude_rate": rate, "order": k + 1}
                          for k, (m, rate) in enumerate(zip(masks, (0.0, 0.2, 0.5)))]}
    # Detection k = GT k. 0 in front of 1 (right), 1 and 2 tied, 0 behind 2 (wrong).
    orders = [{"1": 1, "2": -1}, {"0": -1}, {"0": 1}]
    results = [{"image_id": 1, "category_id": 1, "segmentation": rle(m), "score": s,
                "depth_order": o} for m, s, o in zip(masks, (.9, .8, .7), orders)]
    images, categories = ground_truth.load_coco_gt(gt, "gt")
    dets = eval_results.load_results(results, images, "results")
    variant = evaluation._evaluate_variant(images, dets, categories, "amodal", "coco")
    matches = evaluation._matched_pairs(variant, images)
    assert matches == [{0: 0, 1: 1, 2: 2}]
    records = diagnose.pair_records(matches, images, dets)
    assert sorted(records) == [(0, 0, 1, 1), (0, 0, 2, -1), (0, 1, 2, 0)]
    levels = diagnose.accuracy_by_level(records, images)
    # back object 1 (rate 0.2) is partly occluded, back object 2 (0.5) heavily
    assert levels == {"none": (0, 0, 0), "partial": (1, 1, 1), "heavy": (2, 0, 1)}
    m = evaluation._order_metrics(matches, images, dets)
    assert m["order/accuracy"] == pytest.approx(1 / 3)
    assert m["order/accuracy_decided"] == pytest.approx(1 / 2)


@pytest.mark.slow
def test_heads_on_boxes_reproduce_the_model():
    import functools

    import jax

    from model_test_config import model_config
    from sln_jax.models.sln import SLN

    cfg = model_config()
    model = SLN(cfg)
    images = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (1, 64, 64, 3)), np.float32)
    # Jitted: op-by-op (eager) initialisation of the whole SLN took ~25 s (test: 36 -> 11 s).
    variables = jax.jit(functools.partial(model.init, train=False))(
        jax.random.PRNGKey(0), images, None)
    det, pyramid, glm_logits = jax.jit(functools.partial(diagnose.model_with_features,
                                                         model))(variables, images)
    assert len(pyramid) == 5 and glm_logits.shape[-1] == cfg.num_layers
    assert bool(det["valid"].any())
    heads = jax.jit(functools.partial(diagnose.heads_on_boxes, cfg))
    logits, probs, orders = heads(variables, pyramid, glm_logits, det["boxes"], det["classes"])
    assert orders == {}  # no order head in this config
    np.testing.assert_allclose(np.asarray(logits), np.asarray(det["layer_logits"]),
                               rtol=1e-5, atol=1e-6)
    assert probs.shape == det["boxes"].shape[:2] + (cfg.num_classes + 1,)
    np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, rtol=1e-5)
    # Other boxes give other outputs (the boxes are used, not the model's own).
    moved, _, _ = heads(variables, pyramid, glm_logits, det["boxes"] * 0.5, det["classes"])
    assert not np.allclose(np.asarray(moved), np.asarray(det["layer_logits"]))


@pytest.mark.slow
def test_heads_on_boxes_run_the_order_head_on_valid_boxes():
    import jax
    import jax.numpy as jnp

    from model_test_config import model_config
    from sln_jax.models.sln import SLN

    cfg = model_config(order_head=True, order_dim=8, order_pool_size=7, order_pairs=4,
                       order_pairs_eval=6)
    model = SLN(cfg)
    images = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (1, 64, 64, 3)), np.float32)
    variables = model.init(jax.random.PRNGKey(0), images, None, train=False)
    _, pyramid, glm_logits = diagnose.model_with_features(model, variables, images)
    boxes = jnp.array([[[4.0, 4.0, 40.0, 40.0], [20.0, 20.0, 60.0, 60.0],
                        [0.0, 44.0, 10.0, 60.0]]])
    classes = jnp.array([[1, 2, 3]], jnp.int32)
    valid = jnp.array([[True, True, False]])
    _, _, orders = diagnose.heads_on_boxes(cfg, variables, pyramid, glm_logits, boxes, classes,
                                           valid)
    known = np.asarray(orders["order_known"])[0]
    # The one pair of valid, overlapping boxes is scored; the invalid box is not.
    assert known.tolist() == [[False, True, False], [True, False, False],
                              [False, False, False]]
    logits = np.asarray(orders["order_logits"])[0]
    assert logits[0, 1] == -logits[1, 0] and logits[0, 1] != 0


def _two_image_source():
    """Two images, each with GT 0 (front, order 1) overlapping GT 1 (order 2), detected
    exactly with exact layers; the front detection scores higher in image 1 only."""
    h = w = 16
    front, back = box_mask(h, w, 2, 2, 10, 10), box_mask(h, w, 6, 6, 14, 14)
    gt = {"images": [{"id": i, "height": h, "width": w} for i in (1, 2)],
          "categories": [{"id": 1, "name": "shape"}], "annotations": []}
    source = diagnose.Source("test")
    for image_id, scores in ((1, (0.9, 0.6)), (2, (0.6, 0.9))):
        layers = np.full((2, h, w), -1, np.int8)
        layers[0][front] = 0
        layers[1][back] = 0
        layers[1][back & front] = 1
        for k, (mask, order) in enumerate(((front, 1), (back, 2))):
            visible = layers[k] == 0
            gt["annotations"].append({
                "id": len(gt["annotations"]) + 1, "image_id": image_id, "category_id": 1,
                "segmentation": rle(mask), "visible_mask": rle(visible),
                "area": float(mask.sum()), "iscrowd": 0, "order": order})
        probs = np.where(np.arange(3) == layers[..., None], 0.9, 0.0).astype(np.float32)
        orders = diagnose.rule_orders(layers.reshape(2, -1),
                                      {k: v.reshape(2, -1) for k, v in
                                       diagnose.soft_cues(probs).items()},
                                      np.array(scores))
        for k, mask in enumerate((front, back)):
            source.results.append({
                "image_id": image_id, "category_id": 1, "score": scores[k],
                "bbox": [0.0, 0.0, 1.0, 1.0], "segmentation": rle(mask),
                "visible_mask": rle(layers[k] == 0), "occlude_rate": float(k) * 0.25,
                "depth_order": {str(1 - k): int(orders["argmax layers"][k, 1 - k])}})
        source.layers[image_id] = layers
        source.orders[image_id] = orders
    return gt, source


def test_report_scores_each_image_with_its_own_orders():
    gt, source = _two_image_source()
    text = diagnose.report(source, gt, {1: "shape"}, "layers")
    rows = {line[2:26].strip(): line[26:].split() for line in text.splitlines()
            if line.startswith("  ") and line[2:26].strip() in diagnose.RULES}
    assert set(rows) == set(diagnose.RULES)
    # per class: accuracy, over ordered pairs, recall; then the same class-agnostically
    assert rows["argmax layers"][:3] == ["1.000", "1.000", "1.000"]
    assert rows["expected layer"][:3] == ["1.000", "1.000", "1.000"]
    assert rows["higher score"][:3] == ["0.500", "0.500", "0.500"]  # right in image 1 only
    # by the back object's occlusion (0.25 of GT 1's amodal area is hidden: partial)
    assert rows["argmax layers"][6:] == ["-", "(", "0)", "1.000", "(", "2)", "-", "(", "0)"]
    assert "order/pairs 2" in text and "2 of 4 GT matched" not in text
    assert "4 of 4 GT matched, 4 with the right class = 1.000" in text
    layer_rows = [line for line in text.splitlines() if line.startswith("  hidden 1 ")]
    # the 4 x 4 overlap of each image: hidden once, and predicted so
    assert layer_rows and layer_rows[0].split()[2:6] == ["0", "32", "0", "0"]
    # occlusion from order: GT 1 is occluded, and every rule but the score says so in
    # image 1; in image 2 the score puts GT 1 in front (GT 0 occluded: FP and FN)
    line = next(t for t in text.splitlines() if t.startswith("occlusion from the amodal"))
    assert "argmax layers: TP 2 FP 0 FN 0 F1 1.000" in line
    assert "higher score: TP 1 FP 1 FN 1 F1 0.500" in line
    assert "GT order: TP 2 FP 0 FN 0 F1 1.000" in line


@pytest.mark.slow
def test_main_on_a_trained_workdir(tiny_run, capsys):
    """The command line end to end on a workdir trained 2 steps (the session's tiny run, 3 val
    images: the second batch of 2 is padded)."""
    assert diagnose.main(["--workdir", str(tiny_run.workdir), "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "step 2" in out and "3 val images" in out
    assert "detector boxes (the evaluation)" in out and "ground-truth boxes" in out


@pytest.mark.slow
def test_main_on_the_train_split(tiny_run, capsys):
    """--split train diagnoses the train records against the train annotations the
    converter recorded (rules are chosen there, so that val stays a test set)."""
    assert diagnose.main(["--workdir", str(tiny_run.workdir), "--batch", "2",
                          "--split", "train", "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert "3 train images" in out and "train.json" in out
    assert "detector boxes (the evaluation)" in out and "ground-truth boxes" in out
