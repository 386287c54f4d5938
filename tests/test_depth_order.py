"""sln_jax.depth_order on detections: the window-based decodings against whole-image
definitions."""

from __future__ import annotations

import numpy as np
import pytest

from sln_jax import depth_order, layering, postprocess


def _scene(seed: int, n: int, size: int = 40):
    """n detections with random boxes (some past the image's edges) and per-layer
    probabilities, pasted as ``postprocess.to_instances`` pastes them."""
    rng = np.random.default_rng(seed)
    y1x1 = rng.uniform(-8, size - 4, (n, 2))
    hw = rng.uniform(3, size * 0.7, (n, 2))
    boxes = np.concatenate([y1x1, y1x1 + hw], axis=1).astype(np.float32)
    logits = rng.normal(0.0, 2.0, (n, 14, 14, 3)).astype(np.float32)
    probs = postprocess.layer_probs(logits)  # [n, 14, 14, 3]: visible, hidden once, twice
    windows, amodal, full = [], [], []
    for k in range(n):
        top, left, pasted = layering.paste_window(probs[k], boxes[k], (size, size))
        windows.append((top, left, pasted))
        image = np.zeros((size, size, 3), np.float32)
        image[top:top + pasted.shape[0], left:left + pasted.shape[1]] = pasted
        full.append(image)
        amodal.append(postprocess.decode_layer_probs(image)["amodal"])
    return boxes, windows, amodal, np.stack(full), rng.uniform(0, 1, n)


def _boxes_overlap(a, b) -> bool:
    top, left = np.floor(max(a[0], b[0])), np.floor(max(a[1], b[1]))
    bottom, right = np.ceil(min(a[2], b[2])), np.ceil(min(a[3], b[3]))
    return bottom > top and right > left


@pytest.mark.parametrize("seed", range(4))
def test_soft_rule_equals_whole_image_evidence(seed):
    boxes, windows, amodal, full, _ = _scene(seed, 12)
    order = depth_order.from_probability_windows(windows, amodal, boxes)
    seen, hidden = full[..., 0].astype(np.float64), full[..., 1:].sum(-1).astype(np.float64)
    checked = 0
    for i in range(len(boxes)):
        for j in range(len(boxes)):
            if i == j:
                continue
            if not (amodal[i] & amodal[j]).any():
                assert order[i, j] == 0
                continue
            evidence = np.sum(seen[i] * hidden[j]) - np.sum(seen[j] * hidden[i])
            if abs(evidence) > 1e-3:  # not a tie up to float summation order
                assert order[i, j] == np.sign(evidence), (i, j)
                checked += 1
    assert checked > 10


@pytest.mark.parametrize("seed", range(4))
def test_hidden_else_score_equals_whole_image_definition(seed):
    boxes, windows, amodal, full, scores = _scene(seed, 12)
    order = depth_order.from_probability_windows(windows, amodal, boxes,
                                                 rule="hidden_else_score", scores=scores)
    seen, hidden = full[..., 0], full[..., 1:].sum(-1)
    total = seen + hidden
    conditional = np.where(total > 0, hidden / np.where(total > 0, total, 1.0), 0.0)
    kinds = set()
    for i in range(len(boxes)):
        for j in range(len(boxes)):
            if i == j:
                continue
            both = amodal[i] & amodal[j]
            if not _boxes_overlap(boxes[i], boxes[j]):
                expected, kind = 0, "apart"
            elif not both.any():
                expected, kind = np.sign(scores[i] - scores[j]), "score"
            else:
                expected = np.sign(conditional[j][both].mean() - conditional[i][both].mean())
                kind = "hidden"
                if expected == 0:
                    expected, kind = np.sign(scores[i] - scores[j]), "tie"
            assert order[i, j] == expected, (i, j, kind)
            kinds.add(kind)
    assert {"apart", "hidden"} <= kinds


def test_windows_smaller_than_the_overlap_read_as_zero():
    """Windows clipped tighter than their boxes (not made by paste_window) still decode: the
    probabilities outside a window are 0."""
    size = 16
    boxes = np.array([[0, 0, 10, 10], [4, 4, 14, 14]], np.float32)
    probs = [np.zeros((size, size, 2), np.float32) for _ in range(2)]
    probs[0][0:10, 0:10] = (0.9, 0.05)
    probs[1][4:14, 4:14] = (0.1, 0.85)
    amodal = [p.sum(-1) > 0.5 for p in probs]
    # Detection 1's window starts at row / column 6: the overlap's rows 4-5 fall outside it.
    windows = [(0, 0, probs[0][0:10, 0:10]), (6, 6, probs[1][6:14, 6:14])]
    order = depth_order.from_probability_windows(windows, amodal, boxes)
    assert order[0, 1] == 1 and order[1, 0] == -1


def test_box_overlaps_lists_every_overlapping_pair_in_order():
    rng = np.random.default_rng(0)
    y1x1 = rng.uniform(-10, 50, (30, 2))
    boxes = np.concatenate([y1x1, y1x1 + rng.uniform(0.2, 20, (30, 2))], axis=1)
    got = list(depth_order._box_overlaps(boxes, 30, (45, 40)))
    expected = []
    for i in range(30):
        for j in range(i + 1, 30):
            top, left = int(np.floor(max(boxes[i, 0], boxes[j, 0]))), int(np.floor(max(boxes[i, 1], boxes[j, 1])))
            bottom, right = int(np.ceil(min(boxes[i, 2], boxes[j, 2]))), int(np.ceil(min(boxes[i, 3], boxes[j, 3])))
            if bottom > top and right > left:
                # Clipped to the 45 x 40 image, as the callers slice image-sized maps.
                expected.append((i, j, tuple(int(np.clip(v, 0, size)) for v, size in
                                             zip((top, left, bottom, right), (45, 40, 45, 40)))))
    assert got == expected and 0 < len(got) < 435
    assert any(t == 0 for _, _, (t, _, _, _) in got)  # some pairs reach past the top edge
    assert list(depth_order._box_overlaps(boxes, 0, (45, 40))) == []


def test_boxes_meeting_above_the_image_read_nothing():
    """Two boxes whose overlap lies wholly above the image: the overlap window is empty (a
    negative end would have sliced nearly the whole image), so no order is read from the
    maps; under 'hidden_else_score' the pair is ordered by score, as any box-overlapping pair
    whose masks do not meet."""
    size = 12
    boxes = np.array([[-6, 0, -1, 8], [-5, 2, 10, 12]], np.float32)
    layers = [np.full((size, size), -1, np.int32), np.full((size, size), -1, np.int32)]
    layers[0][0:8, 0:8] = 0  # maps that would overlap if rows 0..7 were read
    layers[1][0:10, 2:12] = 1
    assert depth_order.from_layer_windows(layers, boxes)[0, 1] == 0
    probs = [np.zeros((size, size, 2), np.float32) for _ in range(2)]
    probs[0][0:8, 0:8] = (0.9, 0.05)
    probs[1][0:10, 2:12] = (0.1, 0.85)
    amodal = [p.sum(-1) > 0.5 for p in probs]
    windows = [(0, 0, probs[0]), (0, 0, probs[1])]
    assert depth_order.from_probability_windows(windows, amodal, boxes)[0, 1] == 0
    order = depth_order.from_probability_windows(windows, amodal, boxes, rule="hidden_else_score",
                                                 scores=np.array([0.2, 0.9]))
    assert order[0, 1] == -1 and order[1, 0] == 1


def test_layer_windows_read_boxes_past_the_top_left_edge():
    """A box starting above / left of the image: its overlap is read from row / column 0 (a
    negative slice start would read the image's far end and miss the overlap)."""
    layers = [np.full((20, 20), -1, np.int32), np.full((20, 20), -1, np.int32)]
    layers[0][0:6, 0:6] = 0
    layers[1][0:8, 0:8] = 1
    boxes = np.array([[-3, -3, 6, 6], [-2, -2, 8, 8]], np.float32)
    order = depth_order.from_layer_windows(layers, boxes)
    assert order[0, 1] == 1 and order[1, 0] == -1
