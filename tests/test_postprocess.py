"""Post-processing: pasted masks, layers, occlusion rate, depth order, COCO entries."""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from model_test_config import model_config
from sln_jax import postprocess

R, K = 8, 3


def _box_mask(h, w, y1, x1, y2, x2):
    mask = np.zeros((h, w), bool)
    mask[y1:y2, x1:x2] = True
    return mask


def _layer_logits(channel_map: np.ndarray) -> np.ndarray:
    """float32 [R, R, K]: +12 on the chosen channel of each cell, -12 elsewhere."""
    return np.where(np.arange(K) == channel_map[..., None], 12.0, -12.0).astype(np.float32)


def test_layer_probs_softmax_with_background_logit_zero():
    z = np.array([[0.0, 0.0, 0.0], [2.0, -1.0, 0.5], [-30.0, -30.0, -30.0], [80.0, 0.0, 1.0]])
    p = postprocess.layer_probs(z)
    full = np.exp(np.concatenate([np.zeros((4, 1)), z], -1) - np.array([[0], [2], [0], [80]]))
    expected = (full / full.sum(-1, keepdims=True))[:, 1:]
    np.testing.assert_allclose(p, expected, rtol=1e-5, atol=1e-7)
    assert np.isfinite(p).all() and (p.sum(-1) <= 1 + 1e-6).all()


def test_decode_layer_probs_sum_and_argmax():
    probs = np.array([[0.1, 0.1, 0.1], [0.6, 0.2, 0.1], [0.2, 0.25, 0.1], [0.2, 0.1, 0.6]])
    out = postprocess.decode_layer_probs(probs)
    # P(amodal) = sum: 0.3 (background), 0.9, 0.55, 0.9.
    np.testing.assert_array_equal(out["amodal"], [False, True, True, True])
    np.testing.assert_array_equal(out["layers"], [-1, 0, 1, 2])
    np.testing.assert_array_equal(out["visible"], [False, True, False, False])


def _two_detections():
    """A in front (visible everywhere), B behind A on B's left half, D = 4 slots."""
    boxes = np.zeros((4, 4), np.float32)
    boxes[0] = (8, 8, 24, 40)    # A: rows 8..23, cols 8..39
    boxes[1] = (16, 24, 48, 56)  # B: rows 16..47, cols 24..55; overlaps A on cols 24..39
    b_channels = np.zeros((R, R), np.int64)
    b_channels[:2, :4] = 1        # B's cells under A: rows 16..23, cols 24..39
    logits = np.full((4, R, R, K), -12.0, np.float32)
    logits[0] = _layer_logits(np.zeros((R, R), np.int64))
    logits[1] = _layer_logits(b_channels)
    return {"boxes": boxes, "scores": np.array([0.9, 0.8, 0.7, 0.0], np.float32),
            "classes": np.array([2, 1, 3, 0], np.int32),
            "valid": np.array([True, True, False, False]), "layer_logits": logits,
            "global_logits": np.zeros((16, 16, K), np.float32)}


def test_to_instances_layers_head_masks_occlusion_and_order():
    outputs = _two_detections()
    instances = postprocess.to_instances(outputs, (64, 64), (64, 64),
                                         model_config(num_layers=K))
    assert len(instances) == 2  # the invalid slots are dropped
    a, b = instances
    assert (a["category_id"], b["category_id"]) == (2, 1)
    assert a["score"] == pytest.approx(0.9) and b["score"] == pytest.approx(0.8)
    assert a["box"] == (8.0, 8.0, 32.0, 16.0)
    np.testing.assert_array_equal(a["amodal"], _box_mask(64, 64, 8, 8, 24, 40))
    np.testing.assert_array_equal(b["amodal"], _box_mask(64, 64, 16, 24, 48, 56))
    np.testing.assert_array_equal(a["visible"], a["amodal"])
    # Bilinear pasting blends the cell boundary: the hidden part is the 8 x 16 block up to
    # at most one pixel row / column of blending.
    hidden = b["amodal"] & ~b["visible"]
    assert hidden[16:23, 24:39].all() and not hidden[25:].any() and not hidden[:, 41:].any()
    assert a["occlude_rate"] == 0.0
    assert b["occlude_rate"] == pytest.approx(1 - b["visible"].sum() / b["amodal"].sum())
    assert 0.1 < b["occlude_rate"] < 0.2  # 128 of 1024 pixels, give or take the blending
    assert a["depth_order"] == {1: 1} and b["depth_order"] == {0: -1}
    np.testing.assert_array_equal(b["layers"][b["amodal"]] >= 0, True)
    np.testing.assert_array_equal(b["layers"][~b["amodal"]], -1)


def _stray_hidden():
    """_two_detections plus hidden pixels of B in its bottom-right corner, which A (the
    only detection in front of B) does not cover, and hidden pixels of A itself."""
    outputs = _two_detections()
    b_channels = np.zeros((R, R), np.int64)
    b_channels[:2, :4] = 1   # under A: explained
    b_channels[6:, 6:] = 1   # rows 40..47, cols 48..55: nothing covers them
    outputs["layer_logits"][1] = _layer_logits(b_channels)
    a_channels = np.zeros((R, R), np.int64)
    a_channels[:, :2] = 1    # A, in front of everything, has no occluder
    outputs["layer_logits"][0] = _layer_logits(a_channels)
    return outputs


@pytest.mark.parametrize("score", [0.5, 0.95])
def test_layers_and_order_keeps_only_hidden_pixels_behind_an_occluder(score):
    cfg = model_config(num_layers=K, occlusion="layers_and_order", occluder_score=score)
    plain = postprocess.to_instances(_stray_hidden(), (64, 64), (64, 64),
                                     model_config(num_layers=K))
    a, b = postprocess.to_instances(_stray_hidden(), (64, 64), (64, 64), cfg)
    assert plain[1]["depth_order"] == {0: -1} and b["depth_order"] == {0: -1}
    assert (plain[1]["amodal"] & ~plain[1]["visible"])[40:48, 48:56].any()
    hidden_b = b["amodal"] & ~b["visible"]
    # A has no detection in front: all of it visible; its layers say so.
    assert a["occlude_rate"] == 0.0 and (a["visible"] == a["amodal"]).all()
    assert (a["layers"][a["amodal"]] == 0).all()
    if score <= 0.9:  # A (score 0.9) counts as an occluder
        assert not hidden_b[40:48, 48:56].any()
        assert hidden_b[16:23, 24:39].all() and not hidden_b[24:].any()
        expected = hidden_b.sum() / b["amodal"].sum()
        assert b["occlude_rate"] == pytest.approx(expected) and expected > 0
    else:  # no occluder scores high enough: nothing of B is hidden
        assert not hidden_b.any() and b["occlude_rate"] == 0.0
    np.testing.assert_array_equal(b["visible"], b["amodal"] & ~hidden_b)
    np.testing.assert_array_equal(b["layers"][b["visible"]], 0)
    np.testing.assert_array_equal(b["layers"][~b["amodal"]], -1)


def test_order_occlusion_hides_what_a_detection_in_front_covers():
    cfg = model_config(num_layers=K, occlusion="order", occluder_score=0.5)
    outputs = _two_detections()
    outputs["layer_logits"][1] = _layer_logits(np.zeros((R, R), np.int64))  # B all seen
    outputs["order_logits"] = np.array([[0, 3.0, 0, 0], [-3.0, 0, 0, 0], [0] * 4, [0] * 4],
                                       np.float32)
    outputs["order_known"] = outputs["order_logits"] != 0
    cfg.update(order_head=True, order_rule="head")
    a, b = postprocess.to_instances(outputs, (64, 64), (64, 64), cfg)
    assert b["depth_order"] == {0: -1}  # from the order head: the layers tie
    np.testing.assert_array_equal(b["amodal"] & ~b["visible"], b["amodal"] & a["amodal"])
    assert b["occlude_rate"] == pytest.approx((b["amodal"] & a["amodal"]).sum()
                                              / b["amodal"].sum())
    np.testing.assert_array_equal(b["layers"][b["amodal"] & a["amodal"]], 1)


def test_unknown_occlusion_rule_is_refused():
    with pytest.raises(ValueError, match="occlusion"):
        postprocess.to_instances(_two_detections(), (64, 64), (64, 64),
                                 model_config(num_layers=K, occlusion="pixels",
                                              occluder_score=0.5))


def test_to_instances_maps_boxes_to_the_original_size():
    outputs = _two_detections()
    # Content 64 x 32 of the canvas was the original 128 x 96 image (x3 across, x2 down).
    instances = postprocess.to_instances(outputs, (64, 32), (128, 96),
                                         model_config(num_layers=K))
    a = instances[0]
    assert a["amodal"].shape == (128, 96)
    # A's box (8, 8, 24, 40) clipped to the content width 32 -> (16, 24, 48, 96) original.
    assert a["box"] == (24.0, 16.0, 72.0, 32.0)
    np.testing.assert_array_equal(a["amodal"], _box_mask(128, 96, 16, 24, 48, 96))


def test_to_instances_semdist_head_decodes_levels():
    outputs = _two_detections()
    sem = np.zeros((4, R, R), np.float32)
    sem[0] = K + 0.5                    # A: visible level everywhere
    sem[1] = K + 0.3
    sem[1, :2, :4] = K - 1 + 0.3        # B: one level down under A
    del outputs["layer_logits"]
    outputs["semdist"] = sem
    instances = postprocess.to_instances(outputs, (64, 64), (64, 64),
                                         model_config(num_layers=K, head="semdist"))
    a, b = instances
    np.testing.assert_array_equal(a["amodal"], _box_mask(64, 64, 8, 8, 24, 40))
    np.testing.assert_array_equal(a["visible"], a["amodal"])
    assert b["layers"][16, 24] == 1 and b["layers"][40, 50] == 0
    assert a["depth_order"] == {1: 1} and b["depth_order"] == {0: -1}


def test_wrong_head_outputs_are_rejected():
    outputs = _two_detections()
    with pytest.raises(ValueError, match="semdist"):
        postprocess.to_instances(outputs, (64, 64), (64, 64), model_config(head="semdist"))


def test_to_coco_results_round_trips_masks():
    instances = postprocess.to_instances(_two_detections(), (64, 64), (64, 64),
                                         model_config(num_layers=K))
    entries = postprocess.to_coco_results(instances, image_id=42)
    json.loads(json.dumps(entries))  # JSON-ready
    assert len(entries) == 2
    for entry, inst in zip(entries, instances):
        assert set(entry) == {"image_id", "category_id", "score", "bbox", "segmentation",
                              "visible_mask", "occlude_rate", "depth_order"}
        assert entry["image_id"] == 42 and entry["bbox"] == list(inst["box"])
        np.testing.assert_array_equal(mask_utils.decode(entry["segmentation"]).astype(bool),
                                      inst["amodal"])
        np.testing.assert_array_equal(mask_utils.decode(entry["visible_mask"]).astype(bool),
                                      inst["visible"])
        assert entry["occlude_rate"] == inst["occlude_rate"]
    assert entries[1]["depth_order"] == {0: -1}


@pytest.mark.parametrize("head", ["layers", "semdist"])
def test_to_instances_equals_decoding_full_image_pastes(head):
    """The windowed decoding gives what decoding image-sized pastes gives."""
    from sln_jax import layering, semdist

    rng = np.random.default_rng(7)
    d, (h, w) = 12, (50, 70)
    y1, x1 = rng.uniform(-10, 40, d), rng.uniform(-10, 60, d)
    boxes = np.stack([y1, x1, y1 + rng.uniform(0.5, 30, d), x1 + rng.uniform(0.5, 30, d)], 1)
    outputs = {"boxes": boxes.astype(np.float32), "scores": rng.random(d).astype(np.float32),
               "classes": np.ones(d, np.int32), "valid": rng.random(d) < 0.9}
    if head == "layers":
        outputs["layer_logits"] = rng.normal(0, 3, (d, R, R, K)).astype(np.float32)
        maps = postprocess.layer_probs(outputs["layer_logits"])
    else:
        outputs["semdist"] = rng.uniform(0, K + 1, (d, R, R)).astype(np.float32)
        maps = outputs["semdist"]
    config = model_config(num_layers=K, head=head)
    instances = postprocess.to_instances(outputs, (h, w), (h, w), config)
    keep = np.flatnonzero(outputs["valid"])
    assert len(instances) == keep.size
    clipped = np.clip(boxes[keep].astype(np.float64), 0, [h, w, h, w])
    for instance, index, box in zip(instances, keep, clipped):
        full = layering.paste(maps[index][None], box[None], (h, w))[0]
        if head == "layers":
            want = postprocess.decode_layer_probs(full)
        else:
            want = semdist.decode(full, K)
            want["visible"] = want["modal"]
        for key in ("amodal", "visible", "layers"):
            np.testing.assert_array_equal(instance[key], want[key])
    if head == "layers":
        # The soft order on windows equals the joint-probability rule on image-sized pastes.
        full = [layering.paste(maps[i][None], b[None], (h, w))[0] for i, b in zip(keep, clipped)]
        ordered = 0
        for i, a in enumerate(instances):
            for j, b in enumerate(instances):
                if i == j:
                    continue
                evidence = (np.sum(full[i][..., 0] * full[j][..., 1:].sum(-1))
                            - np.sum(full[j][..., 0] * full[i][..., 1:].sum(-1)))
                want = int(np.sign(evidence)) if (a["amodal"] & b["amodal"]).any() else 0
                assert a["depth_order"].get(j, 0) == want, (i, j, evidence)
                ordered += want != 0
        assert ordered > 0


@pytest.mark.parametrize("fraction, b_occluded", [(0.0, True), (0.1, True), (0.2, False)])
def test_hidden_parts_under_min_hidden_fraction_are_called_visible(fraction, b_occluded):
    # B's hidden part (rows 16..23, cols 24..39) is ~128 of its ~1024 amodal pixels: 12.4 %
    # after pasting.
    a, b = postprocess.to_instances(_two_detections(), (64, 64), (64, 64),
                                    model_config(num_layers=K, min_hidden_fraction=fraction))
    assert a["occlude_rate"] == 0.0 and (a["visible"] == a["amodal"]).all()
    hidden = b["amodal"] & ~b["visible"]
    if b_occluded:
        assert abs(int(hidden.sum()) - 128) <= 2
        assert b["occlude_rate"] == pytest.approx(hidden.sum() / b["amodal"].sum())
        np.testing.assert_array_equal(b["layers"][hidden], 1)
    else:
        assert b["occlude_rate"] == 0.0 and not hidden.any()
        np.testing.assert_array_equal(b["layers"][b["amodal"]], 0)
    np.testing.assert_array_equal(b["layers"][~b["amodal"]], -1)
    # The order is read from the probabilities, before the slivers are dropped.
    assert b["depth_order"] == {0: -1}


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_min_hidden_fraction_out_of_range_is_refused(fraction):
    with pytest.raises(ValueError, match="min_hidden_fraction"):
        postprocess.to_instances(_two_detections(), (64, 64), (64, 64),
                                 model_config(num_layers=K, min_hidden_fraction=fraction))


@pytest.mark.parametrize("field, value, message", [
    ("occlusion", "pixels", "occlusion"),
    ("order_rule", "front", "order_rule"),
    ("min_hidden_fraction", 1.5, "min_hidden_fraction"),
])
def test_check_config_names_the_bad_decoding_field(field, value, message):
    cfg = model_config(num_layers=K)
    postprocess.check_config(cfg)  # the test config decodes
    cfg[field] = value
    with pytest.raises(ValueError, match=message):
        postprocess.check_config(cfg)


def test_check_config_refuses_the_head_rule_without_an_order_head():
    cfg = model_config(num_layers=K, order_head=False, order_rule="head")
    with pytest.raises(ValueError, match="order_head"):
        postprocess.check_config(cfg)
