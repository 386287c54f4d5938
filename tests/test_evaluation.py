"""Tests of sln_jax.evaluation: equality with pycocotools, COCOA bins, occlusion, order."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sln_jax import evaluation
from sln_jax.evaluation import ground_truth, metrics
from sln_jax.evaluation import results as results_lib

STAT_NAMES = [s[0] for s in metrics._COCO_STATS]
BIN_STAT_INDEX = {"AP": 0, "AP50": 1, "AP75": 2, "AR1": 6, "AR10": 7, "AR100": 8}


# ------------------------------------------------------------------------------ helpers

def rle(mask: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    r["counts"] = r["counts"].decode("ascii")
    return r


def box_mask(h, w, y0, x0, y1, x1) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def random_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    y0, x0 = rng.integers(0, h), rng.integers(0, w)
    return box_mask(h, w, y0, x0, rng.integers(y0, h + 1), rng.integers(x0, w + 1))


def random_set(seed: int, crowd_rate: float, tie_scores: bool, many: bool,
               num_categories: int, h: int = 12, w: int = 14):
    """GT (COCO style, with visible masks and occlusion rates) and results."""
    rng = np.random.default_rng(seed)
    images, anns, results = [], [], []
    areas = [10.0, 32.0 ** 2, 1500.0, 96.0 ** 2, 20000.0]
    for i in range(int(rng.integers(1, 5))):
        image_id = int(rng.integers(1, 1000)) * 10 + i  # unsorted ids
        images.append({"id": image_id, "height": h, "width": w})
        gt_masks = []
        for _ in range(int(rng.integers(0, 7))):
            amodal = random_mask(rng, h, w)
            visible = amodal & random_mask(rng, h, w) if rng.random() < .6 else amodal
            gt_masks.append(amodal)
            occlusion = float(rng.choice([0.0, 1e-5, 0.1, 0.25, 0.7, 1.0]))
            anns.append({
                "id": len(anns) + 1, "image_id": image_id,
                "category_id": int(rng.integers(1, num_categories + 1)),
                "segmentation": rle(amodal), "visible_mask": rle(visible),
                "area": float(rng.choice(areas + [float(amodal.sum())])),
                "iscrowd": bool(rng.random() < crowd_rate), "occlude_rate": occlusion,
                "order": int(rng.integers(1, 5)), "bbox": [0, 0, 1, 1]})
        num_dets = int(rng.integers(101, 125)) if many else int(rng.integers(0, 12))
        for _ in range(num_dets):
            if gt_masks and rng.random() < .5:
                amodal = np.roll(gt_masks[int(rng.integers(len(gt_masks)))],
                                 int(rng.integers(-1, 2)), axis=1)
            else:
                amodal = random_mask(rng, h, w)
            visible = amodal & random_mask(rng, h, w)
            score = float(rng.choice([.2, .5, .9])) if tie_scores else float(rng.random())
            results.append({
                "image_id": image_id, "category_id": int(rng.integers(1, num_categories + 1)),
                "segmentation": rle(amodal), "visible_mask": rle(visible), "score": score,
                "bbox": [0.0, 0.0, float(rng.choice([1, 32, 50, 96, 120])),
                         float(rng.choice([1, 32, 96, 7]))],
                "occlude_rate": float(rng.choice([0.0, 0.3]))})
    categories = [{"id": c} for c in range(1, num_categories + 1)]
    return {"images": images, "annotations": anns, "categories": categories}, results


def run_cocoeval(gt: dict, results: list) -> COCOeval:
    """pycocotools' COCOeval (segm) after summarize (the reference)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        e = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), "segm")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e


def cocoeval_stats(gt: dict, results: list) -> np.ndarray:
    """pycocotools' 12 segm stats."""
    return np.asarray(run_cocoeval(gt, results).stats)


def ours(metrics: dict, prefix: str = "amodal/") -> np.ndarray:
    return np.array([metrics[prefix + n] for n in STAT_NAMES])


set_params = dict(seed=st.integers(0, 2 ** 31), crowd_rate=st.sampled_from([0.0, 0.3]),
                  tie_scores=st.booleans(), many=st.booleans(),
                  num_categories=st.integers(1, 3))
slow_settings = settings(max_examples=40, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------ pycocotools equality

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**set_params)
def test_precision_and_recall_arrays_equal_cocoeval(seed, crowd_rate, tie_scores, many,
                                                    num_categories):
    gt, results = random_set(seed, crowd_rate, tie_scores, many, num_categories)
    if not results:
        return
    reference = run_cocoeval(gt, results).eval
    images, categories = ground_truth.load_coco_gt(gt, "gt")
    dets = results_lib.load_results(results, images, "results")
    ours_ = metrics._evaluate_variant(images, dets, categories, "amodal", "coco")
    # settings 0..3 are COCOeval's area ranges all / small / medium / large
    np.testing.assert_array_equal(ours_.precision[..., :4, :], reference["precision"])
    np.testing.assert_array_equal(ours_.recall[..., :4, :], reference["recall"])


def test_small_matching_chunks_give_the_same_numbers(monkeypatch):
    gt, results = random_set(3, 0.3, True, True, 2)
    expected = evaluation.evaluate(gt, results)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 500)
    assert evaluation.evaluate(gt, results) == expected
    np.testing.assert_allclose(ours(expected), cocoeval_stats(gt, results), rtol=0, atol=1e-9)


@slow_settings
@given(**set_params)
def test_amodal_equals_cocoeval(seed, crowd_rate, tie_scores, many, num_categories):
    gt, results = random_set(seed, crowd_rate, tie_scores, many, num_categories)
    if not results:
        return
    metrics = evaluation.evaluate(gt, results, iou_types=("amodal",))
    np.testing.assert_allclose(ours(metrics), cocoeval_stats(gt, results), rtol=0, atol=1e-9)


@slow_settings
@given(**set_params)
def test_modal_equals_cocoeval_on_visible_masks(seed, crowd_rate, tie_scores, many,
                                                num_categories):
    gt, results = random_set(seed, crowd_rate, tie_scores, many, num_categories)
    if not results:
        return
    metrics = evaluation.evaluate(gt, results, iou_types=("modal",))
    assert "amodal/AP" not in metrics
    modal_gt = copy.deepcopy(gt)
    for a in modal_gt["annotations"]:
        a["segmentation"] = a["visible_mask"]
        a["area"] = float(mask_utils.area(a["visible_mask"]))
    modal_results = [dict(r, segmentation=r["visible_mask"]) for r in results]
    np.testing.assert_allclose(ours(metrics, "modal/"), cocoeval_stats(modal_gt, modal_results),
                               rtol=0, atol=1e-9)


@slow_settings
@given(**set_params, bin_name=st.sampled_from(["none", "partial", "heavy"]))
def test_occlusion_bins_equal_cocoeval_with_out_of_bin_gt_ignored(
        seed, crowd_rate, tie_scores, many, num_categories, bin_name):
    gt, results = random_set(seed, crowd_rate, tie_scores, many, num_categories)
    if not results:
        return
    metrics = evaluation.evaluate(gt, results, iou_types=("amodal",))
    # Reference: GT outside the (inclusive) bin gets an area above the 'all' range, so
    # COCOeval ignores it; detection areas (bbox) stay inside, so unmatched ones count.
    lo, hi = evaluation.OCCLUSION_BINS[bin_name]
    binned = copy.deepcopy(gt)
    for a in binned["annotations"]:
        a["area"] = 1.0 if lo <= a["occlude_rate"] <= hi else 2e10
    reference = cocoeval_stats(binned, results)
    for name, index in BIN_STAT_INDEX.items():
        assert metrics[f"amodal/{name}_{bin_name}"] == pytest.approx(reference[index], abs=1e-9)


def test_cocoa_grid_equals_class_agnostic_cocoeval_with_filters():
    gt, results = random_set(7, 0.0, True, False, 3, h=20, w=20)
    rng = np.random.default_rng(1)
    stuff = {a["id"]: bool(rng.random() < .4) for a in gt["annotations"]}
    by_image = {}
    for a in gt["annotations"]:
        region = {"segmentation": a["segmentation"], "visible_mask": a["visible_mask"],
                  "area": a["area"], "occlude_rate": a["occlude_rate"],
                  "order": len(by_image.get(a["image_id"], [])) + 1,
                  "isStuff": int(stuff[a["id"]]), "name": "x"}
        by_image.setdefault(a["image_id"], []).append(region)
    cocoa = {"images": gt["images"], "annotations": [
        {"image_id": i, "id": k, "regions": regions, "depth_constraint": ""}
        for k, (i, regions) in enumerate(by_image.items())]}
    # A second annotator of the first image must be ignored.
    cocoa["annotations"].append({"image_id": gt["images"][0]["id"], "id": 99, "regions": []})
    metrics = evaluation.evaluate(cocoa, results, fmt="cocoa")
    for f in ("both", "things", "stuff"):
        for b in ("all", "none", "partial", "heavy"):
            lo, hi = evaluation.OCCLUSION_BINS[b]
            ref_gt = copy.deepcopy(gt)
            for a in ref_gt["annotations"]:
                keep = lo <= a["occlude_rate"] <= hi and (
                    f == "both" or stuff[a["id"]] == (f == "stuff"))
                a["area"], a["iscrowd"], a["category_id"] = (1.0 if keep else 2e10), 0, 1
            ref_results = [dict(r, category_id=1) for r in results]
            reference = cocoeval_stats(ref_gt, ref_results)
            prefix = "amodal/" if f == "both" else f"amodal/{f}/"
            suffix = "" if b == "all" else f"_{b}"
            for name, index in BIN_STAT_INDEX.items():
                assert metrics[f"{prefix}{name}{suffix}"] == pytest.approx(
                    reference[index], abs=1e-9), (f, b, name)
    table = evaluation.format_table(metrics)
    assert "things" in table and "stuff" in table and "heavy" in table


# ------------------------------------------------------------------ hand-computed cases

def _scene(h=20, w=20):
    """Three overlapping GT boxes, depth order 1 (front), 2, 3; occlusion 0, .3, .5."""
    masks = [box_mask(h, w, 0, 0, 10, 10), box_mask(h, w, 5, 5, 15, 15),
             box_mask(h, w, 8, 8, 20, 20)]
    anns = [{"id": k + 1, "image_id": 1, "category_id": 1, "segmentation": rle(m),
             "visible_mask": rle(m), "area": float(m.sum()), "iscrowd": 0,
             "occlude_rate": rate, "order": k + 1}
            for k, (m, rate) in enumerate(zip(masks, (0.0, 0.3, 0.5)))]
    gt = {"images": [{"id": 1, "height": h, "width": w}], "annotations": anns,
          "categories": [{"id": 1}]}
    return gt, masks


def _det(mask, score, **extra):
    return {"image_id": 1, "category_id": 1, "segmentation": rle(mask),
            "visible_mask": rle(mask), "score": score, **extra}


def test_occlusion_classification_hand_computed():
    gt, masks = _scene()
    # GT occluded: no, yes, yes. Predicted: yes (wrong), yes, no (wrong).
    results = [_det(masks[0], .9, occlude_rate=0.2), _det(masks[1], .8, occlude_rate=0.3),
               _det(masks[2], .7, occlude_rate=0.0)]
    m = evaluation.evaluate(gt, results)
    assert m["occlusion/accuracy"] == pytest.approx(1 / 3)
    # one true positive, one false positive, one false negative: F1 = 2 / 4
    assert m["occlusion/f1"] == pytest.approx(0.5)
    assert m["occlusion/rate_mae"] == pytest.approx((0.2 + 0.0 + 0.5) / 3)
    assert m["amodal/AP"] == pytest.approx(1.0)


def test_depth_order_from_results_field_hand_computed():
    gt, masks = _scene()
    # Detections listed out of score order: index 0 -> GT 2, 1 -> GT 0, 2 -> GT 1.
    results = [_det(masks[2], .7), _det(masks[0], .9), _det(masks[1], .8)]
    # Claims: det1 in front of det2 and det2 in front of det0 (right: GT 0 < 1 < 2),
    # det1 behind det0 (wrong: GT 0 is in front of GT 2).
    results[0]["depth_order"] = {"1": -1, "2": -1}
    results[1]["depth_order"] = {"0": -1, "2": 1}
    results[2]["depth_order"] = {"0": 1, "1": -1}
    m = evaluation.evaluate(gt, results)
    # Overlapping GT pairs: (0, 1), (1, 2) and (0, 2) (on [8:10, 8:10]).
    assert m["order/pairs"] == 3
    assert m["order/accuracy"] == pytest.approx(2 / 3)
    assert m["order/recall"] == pytest.approx(2 / 3)


def test_order_accuracy_decided_leaves_out_unordered_pairs():
    gt, masks = _scene()
    results = [_det(masks[0], .9), _det(masks[1], .8), _det(masks[2], .7)]
    # (0, 1) right, (1, 2) wrong, (0, 2) a tie (no order either way).
    results[0]["depth_order"] = {"1": 1}
    results[1]["depth_order"] = {"0": -1, "2": -1}
    results[2]["depth_order"] = {"1": 1}
    m = evaluation.evaluate(gt, results)
    assert m["order/pairs"] == 3
    assert m["order/accuracy"] == pytest.approx(1 / 3)  # the tie counts as wrong
    assert m["order/accuracy_decided"] == pytest.approx(1 / 2)  # over the 2 ordered pairs
    assert "order/accuracy_decided = 0.500" in evaluation.format_table(m)
    # Nothing ordered: accuracy 0, accuracy over ordered pairs undefined (-1).
    for r in results:
        r["depth_order"] = {}
    m = evaluation.evaluate(gt, results)
    assert m["order/accuracy"] == 0.0 and m["order/accuracy_decided"] == -1.0


def test_depth_order_recall_counts_missed_detections_as_wrong():
    gt, masks = _scene()
    results = [_det(masks[0], .9, depth_order={"1": 1}), _det(masks[1], .8,
                                                                depth_order={"0": -1})]
    m = evaluation.evaluate(gt, results)
    assert m["order/pairs"] == 1 and m["order/accuracy"] == 1.0
    assert m["order/recall"] == pytest.approx(1 / 3)  # constraints (0,1), (0,2), (1,2)


def test_depth_order_from_predicted_masks_when_field_absent():
    gt, masks = _scene()
    visible = [masks[0], masks[1] & ~masks[0], masks[2] & ~masks[1] & ~masks[0]]
    results = [{"image_id": 1, "category_id": 1, "segmentation": rle(a),
                "visible_mask": rle(v), "score": s}
               for a, v, s in zip(masks, visible, (.9, .8, .7))]
    m = evaluation.evaluate(gt, results, iou_types=("amodal",))
    assert m["order/pairs"] == 3 and m["order/accuracy"] == 1.0 and m["order/recall"] == 1.0
    # occlusion rates come from the masks when occlude_rate is absent: 0, .25, > 0
    assert m["occlusion/accuracy"] == 1.0


def test_cocoa_bins_and_constraints_hand_computed():
    h = w = 20
    masks = [box_mask(h, w, 0, 0, 10, 10), box_mask(h, w, 5, 5, 15, 15),
             box_mask(h, w, 8, 8, 20, 20), box_mask(h, w, 15, 0, 20, 5)]
    rates = [0.0, 1e-5, 0.25, 0.9]  # none, none & partial (inclusive), partial & heavy, heavy
    regions = [{"segmentation": rle(m), "occlude_rate": r, "order": o, "isStuff": s,
                "name": "r", "area": float(m.sum())}
               for m, r, o, s in zip(masks, rates, (1, 2, 4, 7), (0, 0, 0, 1))]
    gt = {"images": [{"id": 5, "height": h, "width": w}],
          "annotations": [{"image_id": 5, "id": 1, "regions": regions,
                           "depth_constraint": "1-2,2-4,1-4,4-7"}]}
    # Detect regions 0 and 2 exactly, plus one false positive.
    results = [{"image_id": 5, "category_id": 1, "segmentation": rle(masks[0]), "score": .9,
                "depth_order": {"1": 1, "2": 0}},
               {"image_id": 5, "category_id": 1, "segmentation": rle(masks[2]), "score": .8,
                "depth_order": {"0": -1, "2": 0}},
               {"image_id": 5, "category_id": 1, "segmentation": rle(box_mask(h, w, 0, 15, 3, 20)),
                "score": .95, "depth_order": {}}]
    m = evaluation.evaluate(gt, results, fmt="cocoa")
    assert m["amodal/AR100"] == pytest.approx(2 / 4)
    assert m["amodal/AR100_none"] == pytest.approx(1 / 2)  # regions 0, 1
    assert m["amodal/AR100_partial"] == pytest.approx(1 / 2)  # regions 1, 2
    assert m["amodal/AR100_heavy"] == pytest.approx(1 / 2)  # regions 2, 3
    assert m["amodal/things/AR100"] == pytest.approx(2 / 3)
    assert m["amodal/stuff/AR100"] == 0.0
    # none: GT 0 matched (precision 1/2 at recall .5: the FP scores higher) -> AP by hand
    assert m["amodal/AP_none"] == pytest.approx(51 * 0.5 / 101)
    # constraints: 1-2 (GT 1 missed), 2-4 (missed), 1-4 (both matched, overlap, +1), 4-7
    assert m["order/recall"] == pytest.approx(1 / 4)


def test_empty_results_give_zeros():
    gt, _ = _scene()
    m = evaluation.evaluate(gt, [])
    for key in ("amodal/AP", "amodal/AR100", "modal/AP", "amodal/AR100_heavy",
                "occlusion/accuracy", "order/accuracy", "order/recall", "order/pairs"):
        assert m[key] == 0.0, key
    # -1 only where there is no GT: no large GT, none in the partial bin
    assert m["amodal/APl"] == -1.0 and m["amodal/AR100_partial"] == -1.0


# ----------------------------------------------------------------------- bad input

@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(image_id=77), "image_id"),
    (lambda r: r.update(score=float("nan")), "score"),
    (lambda r: r.update(score=-0.5), "score"),
    (lambda r: r["segmentation"].update(size=[10, 20]), "size"),
    (lambda r: r["segmentation"].update(counts=r["segmentation"]["counts"][:-1]), "malformed"),
    (lambda r: r["segmentation"].update(counts=r["segmentation"]["counts"] + "2"), "malformed"),
    (lambda r: r["segmentation"].update(counts="ab~c"), "malformed"),
    (lambda r: r.pop("segmentation"), "segmentation"),
])
def test_bad_results_raise_clear_errors(change, message, tmp_path):
    gt, masks = _scene()
    results = [_det(masks[0], .9), _det(masks[1], .8)]
    change(results[1])
    path = tmp_path / "res.json"
    path.write_text(json.dumps(results))
    with pytest.raises(ValueError, match=message) as info:
        evaluation.evaluate(gt, str(path))
    assert "res.json" in str(info.value) and "result #1" in str(info.value)


def test_bad_gt_raises_clear_errors():
    gt, _ = _scene()
    gt["annotations"][1]["image_id"] = 9
    with pytest.raises(ValueError, match="annotation id 2: image_id 9"):
        evaluation.evaluate(gt, [])
    with pytest.raises(ValueError, match="fmt"):
        evaluation.evaluate(_scene()[0], [], fmt="lvis")
    with pytest.raises(ValueError, match="use --format coco"):
        evaluation.evaluate(_scene()[0], [], fmt="cocoa")
    region = {"segmentation": [0, 0, 5, 0, 5, 5], "order": 1, "occlude_rate": 0, "isStuff": 0}
    cocoa = {"images": [{"id": 4, "height": 8, "width": 8}],
             "annotations": [{"image_id": 4, "id": 1, "regions": [region],
                              "depth_constraint": "1-3"}]}
    with pytest.raises(ValueError, match="image 4: depth constraint '1-3' names order 3"):
        evaluation.evaluate(cocoa, [], fmt="cocoa")
    cocoa["annotations"][0]["depth_constraint"] = ""
    region["segmentation"] = {"size": [8, 8], "counts": "9"}
    with pytest.raises(ValueError, match="image 4 region 0 segmentation: malformed RLE"):
        evaluation.evaluate(cocoa, [], fmt="cocoa")


# ----------------------------------------------------------------------- RLE validation

def _reference_rle_ok(counts: str, pixels: int) -> bool:
    """Straight Python port of pycocotools' rleFrString plus the totals check."""
    data, runs, p = counts.encode(), [], 0
    while p < len(data):
        x = k = 0
        more = True
        while more:
            if p >= len(data) or not 48 <= data[p] <= 111:
                return False
            c = data[p] - 48
            x |= (c & 0x1f) << 5 * k
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << 5 * k
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return all(0 <= r < 2 ** 32 for r in runs) and sum(runs) == pixels


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2 ** 31), cut=st.integers(0, 40), char=st.integers(40, 120))
def test_rle_validation_matches_reference_parser(seed, cut, char):
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(1, 40, 2))
    mask = rng.random((h, w)) < rng.random()
    good = rle(mask)
    ground_truth.check_compressed_rles([good], ["good"].__getitem__)
    counts = good["counts"]
    k = cut % (len(counts) + 1)
    for bad_counts in (counts[:k] + chr(char) + counts[k + 1:], counts[:k], counts + chr(char)):
        bad = dict(good, counts=bad_counts)
        expected = _reference_rle_ok(bad_counts, h * w)
        try:
            ground_truth.check_compressed_rles([good, bad], ["good", "bad"].__getitem__)
            ok = True
        except ValueError as e:
            assert "bad" in str(e)
            ok = False
        assert ok == expected, bad_counts


# ----------------------------------------------------------------------- real COCOA

def _cocoa_dir():
    # The five real samples ship with the tests; a missing copy must fail, not skip.
    return os.path.join(os.path.dirname(__file__), "fixtures", "cocoa_samples")


def test_real_cocoa_samples_perfect_detections_score_one():
    d = _cocoa_dir()
    images, annotations, results = [], [], []
    for k in range(1, 6):
        ann = json.load(open(os.path.join(d, f"{k}.json")))
        w, h = Image.open(os.path.join(d, f"{k}.jpg")).size
        images.append({"id": ann["image_id"], "file_name": f"{k}.jpg", "height": h, "width": w})
        orders = sorted(r["order"] for r in ann["regions"])
        ann["depth_constraint"] = f"{orders[0]}-{orders[1]}"
        annotations.append(ann)
        for j, region in enumerate(ann["regions"]):
            amodal = mask_utils.merge(mask_utils.frPyObjects([region["segmentation"]], h, w))
            amodal["counts"] = amodal["counts"].decode("ascii")
            results.append({"image_id": ann["image_id"], "category_id": 1, "segmentation": amodal,
                            "visible_mask": region.get("visible_mask", amodal),
                            "score": 1.0 - j / 100, "occlude_rate": region["occlude_rate"]})
    gt = {"images": images, "annotations": annotations}
    m = evaluation.evaluate(gt, results, fmt="cocoa")
    assert m["amodal/AP"] == pytest.approx(1.0) and m["modal/AP"] == pytest.approx(1.0)
    assert m["amodal/AR100_none"] == 1.0 and m["amodal/AR100_heavy"] == 1.0
    assert m["occlusion/accuracy"] == 1.0 and m["occlusion/rate_mae"] == 0.0
    assert 0.0 <= m["order/recall"] <= 1.0 and m["order/pairs"] >= 1


def test_synthetic_dataset_gt_as_results_scores_perfect():
    synthetic = pytest.importorskip("data_prep.synthetic")
    config = synthetic.SceneConfig(image_size=64)
    images, annotations, results = [], [], []
    for index in range(4):
        scene = synthetic.make_scene(0, "val", index, config)
        images.append({"id": index + 1, "height": 64, "width": 64})
        anns = synthetic.scene_annotations(scene, index + 1, len(annotations) + 1)
        annotations += anns
        # visible + amodal masks only: the depth order must come from the masks
        results += [{"image_id": a["image_id"], "category_id": a["category_id"], "score": .9,
                     "segmentation": a["segmentation"], "visible_mask": a["visible_mask"]}
                    for a in anns]
    gt = {"images": images, "annotations": annotations,
          "categories": [{"id": c} for c in range(1, 6)]}
    m = evaluation.evaluate(json.loads(json.dumps(gt)), results)
    assert m["amodal/AP"] == pytest.approx(1.0) and m["modal/AP"] == pytest.approx(1.0)
    assert m["occlusion/accuracy"] == 1.0 and m["occlusion/rate_mae"] == pytest.approx(0.0)
    assert m["order/pairs"] > 0 and m["order/accuracy"] == 1.0 and m["order/recall"] == 1.0


# ------------------------------------------------------------- the in-process Evaluator


def test_evaluator_equals_evaluate_on_its_results_json():
    """Typed detections in, the same metrics as the results file out (no JSON round trip)."""
    from sln_jax.detections import Detections

    rng = np.random.default_rng(7)
    images, anns, results = [], [], []
    for image_id in (3, 5, 8):
        h, w = 24, 32
        images.append({"id": image_id, "height": h, "width": w, "file_name": f"{image_id}.png"})
        for k in range(3):
            amodal = np.zeros((h, w), bool)
            y, x = rng.integers(0, 12), rng.integers(0, 16)
            amodal[y:y + 10, x:x + 14] = True
            visible = amodal.copy()
            visible[y:y + 4] = False
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 1 + k % 2,
                         "segmentation": rle(amodal), "visible_mask": rle(visible),
                         "area": float(amodal.sum()), "iscrowd": 0, "order": k,
                         "occlude_rate": 1 - visible.sum() / amodal.sum(), "bbox": [x, y, 14, 10]})
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    evaluator = evaluation.Evaluator(gt)
    for image_id in (3, 8):  # image 5 has no detections
        instances = []
        for k in range(4):
            amodal = np.zeros((24, 32), bool)
            y, x = rng.integers(0, 12), rng.integers(0, 16)
            amodal[y:y + 9, x:x + 15] = True
            visible = amodal & (rng.random((24, 32)) < 0.9)
            instances.append({"box": (float(x), float(y), 15.0, 9.0), "score": float(rng.random()),
                              "category_id": 1 + k % 2, "amodal": amodal, "visible": visible,
                              "occlude_rate": float(1 - visible.sum() / amodal.sum()),
                              "depth_order": {(k + 1) % 4: 1, (k + 3) % 4: -1}})
        evaluator.add(image_id, Detections.from_instances(instances, 24, 32))
    evaluator.gather()  # one process: nothing to gather
    entries = evaluator.results()
    assert evaluator.compute() == evaluation.evaluate(gt, entries)
    assert evaluator.compute() == evaluation.evaluate(gt, json.loads(json.dumps(entries)))
    with pytest.raises(ValueError, match="image_id 3: detections added twice"):
        evaluator.add(3, Detections.from_instances([], 24, 32))
    with pytest.raises(ValueError, match="image_id 4 is not in the GT"):
        evaluator.add(4, Detections.from_instances([], 24, 32))
    evaluator.reset()
    assert evaluator.results() == [] and evaluator.compute() == evaluation.evaluate(gt, [])


def test_detections_round_trip_through_results_json():
    from sln_jax.detections import Detections

    amodal = np.zeros((2, 6, 5), bool)
    amodal[0, 1:4, 1:4] = amodal[1, 2:6, 2:5] = True
    instances = [{"box": (1.0, 1.0, 3.0, 3.0), "score": 0.5, "category_id": 2,
                  "amodal": amodal[0], "visible": amodal[0], "occlude_rate": 0.0,
                  "depth_order": {1: 1}},
                 {"box": (2.0, 2.0, 3.0, 4.0), "score": 0.25, "category_id": 1,
                  "amodal": amodal[1], "visible": amodal[1] & ~amodal[0], "occlude_rate": 0.25,
                  "depth_order": {0: -1}}]
    from sln_jax import postprocess
    det = Detections.from_instances(instances, 6, 5)
    assert det.order.dtype == np.int8 and det.order.tolist() == [[0, 1], [-1, 0]]
    entries = det.to_results(9)
    assert entries == postprocess.to_coco_results(instances, 9)
    again = Detections.from_results(json.loads(json.dumps(entries)), 6, 5)
    assert again.to_results(9) == entries


def test_format_table_says_why_depth_order_metrics_are_undefined():
    table = evaluation.format_table({"order/accuracy": 1.0, "order/accuracy_decided": 1.0,
                                     "order/recall": -1.0, "order/pairs": 3.0})
    recall = [line for line in table.splitlines() if "order/recall" in line]
    assert recall == [" order/recall           = -1.000  (-1: the ground truth has no "
                      "depth-order constraints, e.g. no COCOA depth_constraint)"]
    assert "(-1" not in table.replace(recall[0], "")


def test_ground_truth_instances_for_pictures():
    from sln_jax.evaluation import ground_truth

    def square(x0, y0, side):
        return [[x0, y0, x0 + side, y0, x0 + side, y0 + side, x0, y0 + side]]

    gt = {"images": [{"id": 1, "height": 30, "width": 30}],
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 2, "segmentation": square(4, 4, 12),
               "order": 1},
              {"id": 2, "image_id": 1, "category_id": 1, "segmentation": square(10, 10, 12),
               "order": 2}]}
    images, _ = ground_truth.load(gt, "coco")
    instances = images[0].instances()
    assert [d["category_id"] for d in instances] == [2, 1]
    assert instances[0]["amodal"].shape == (30, 30) and instances[0]["amodal"].dtype == bool
    assert instances[0]["amodal"].sum() > 100
    # Ranks 1 (front) and 2 on overlapping masks: 0 is in front of 1.
    assert instances[0]["depth_order"] == {1: 1} and instances[1]["depth_order"] == {0: -1}
