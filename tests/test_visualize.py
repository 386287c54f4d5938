"""Tests of sln_jax.visualize: what is drawn where, the depth graph, preview files."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from sln_jax import depth_order, visualize


def _two_squares(size: int = 40):
    """Square 0 in front of square 1; they overlap on a 10 x 10 block."""
    amodal = np.zeros((2, size, size), bool)
    amodal[0, 5:25, 5:25] = True
    amodal[1, 15:35, 15:35] = True
    visible = amodal.copy()
    visible[1] &= ~amodal[0]
    return amodal, visible


def _random_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_draw_instances_changes_only_instance_pixels():
    amodal, visible = _two_squares()
    image = np.zeros((40, 40, 3), np.uint8)  # black: no palette color is black
    out = visualize.draw_instances(image, amodal, visible)
    assert out.shape == image.shape and out.dtype == np.uint8
    changed = (out != image).any(axis=-1)
    union = amodal.any(axis=0)
    assert not changed[~union].any()
    assert changed[visible.any(axis=0)].all()
    # Hatching: the hidden block of square 1 (the visible area of square 0) holds stripes of
    # square 1's color over square 0's fill: at least two tones, both different from
    # square 0's plain fill seen elsewhere.
    interior = np.zeros((40, 40), bool)
    interior[16:24, 16:24] = True  # the hidden block without the two outlines
    tones = {tuple(p) for p in out[interior]}
    assert len(tones) >= 2
    plain0 = tuple(out[10, 10])
    assert all(t != plain0 for t in tones)
    # Outlines in the instance's own color, drawn inside the mask.
    colors = visualize.instance_colors(2)
    np.testing.assert_array_equal(out[5, 5:25], np.broadcast_to(colors[0], (20, 3)))
    np.testing.assert_array_equal(out[34, 26:35], np.broadcast_to(colors[1], (9, 3)))


def test_draw_instances_labels_and_scores():
    amodal, visible = _two_squares(64)
    image = np.full((64, 64, 3), 30, np.uint8)
    plain = visualize.draw_instances(image, amodal, visible)
    labeled = visualize.draw_instances(image, amodal, visible, labels=["a", "b"],
                                       scores=[0.9, 0.5])
    assert labeled.shape == plain.shape
    assert (labeled != plain).any()
    with pytest.raises(ValueError, match="labels has 1 entries for 2 instances"):
        visualize.draw_instances(image, amodal, visible, labels=["a"])


def test_draw_instances_rejects_bad_shapes():
    amodal, visible = _two_squares()
    with pytest.raises(ValueError, match="image must be uint8"):
        visualize.draw_instances(np.zeros((40, 40, 3), np.float32), amodal, visible)
    with pytest.raises(ValueError, match="amodal must be"):
        visualize.draw_instances(np.zeros((30, 40, 3), np.uint8), amodal, visible)
    with pytest.raises(ValueError, match="visible"):
        visualize.draw_instances(np.zeros((40, 40, 3), np.uint8), amodal, visible[:1])


def test_draw_instances_without_instances_is_identity():
    image = np.random.default_rng(0).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    empty = np.zeros((0, 16, 20), bool)
    np.testing.assert_array_equal(visualize.draw_instances(image, empty, empty), image)


def test_depth_order_graph_places_front_above_back():
    # 0 in front of 1, 1 in front of 2; 3 unrelated.
    order = np.zeros((4, 4), np.int8)
    order[0, 1] = order[1, 2] = order[0, 2] = 1
    order[1, 0] = order[2, 1] = order[2, 0] = -1
    ax = Figure().subplots()
    visualize.depth_order_graph(ax, order, labels=["a", "b", "c", "d"])
    ys = np.array([c.get_offsets()[0, 1] for c in ax.collections])
    assert len(ys) == 4
    assert ys[0] > ys[1] > ys[2] and ys[3] == ys[0]
    arrows = [t for t in ax.texts if getattr(t, "arrow_patch", None) is not None]
    assert len(arrows) == 3
    captions = {t.get_text() for t in ax.texts}
    assert {"0", "1", "2", "3", "a", "d"} <= captions


def test_depth_order_graph_staggers_captions_of_crowded_rows():
    # Eight unrelated instances share the front row; long class names must not run into
    # each other, so neighbouring captions sit at different heights.
    names = [f"photo_patch_{i}" for i in range(8)]
    ax = Figure().subplots()
    visualize.depth_order_graph(ax, np.zeros((8, 8), np.int8), labels=names)
    heights = {t.get_text(): t.get_position()[1] for t in ax.texts if t.get_text() in names}
    assert all(heights[a] != heights[b] for a, b in zip(names, names[1:]))
    ax = Figure().subplots()
    visualize.depth_order_graph(ax, np.zeros((3, 3), np.int8), labels=names[:3])
    assert len({t.get_position()[1] for t in ax.texts if t.get_text() in names}) == 1


def test_depth_order_graph_tolerates_cycles():
    order = np.array([[0, 1], [1, 0]], np.int8)  # a predicted cycle
    ax = Figure().subplots()
    visualize.depth_order_graph(ax, order)
    assert len(ax.collections) == 2


def test_save_scene_preview_writes_a_png(tmp_path):
    amodal, visible = _two_squares()
    image = np.full((40, 40, 3), 90, np.uint8)
    path = tmp_path / "preview.png"
    visualize.save_scene_preview(str(path), image, amodal, visible, [1, 3], num_layers=3,
                                 class_names={1: "ellipse", 3: "star"})
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        pixels = np.asarray(picture.convert("RGB"))
    assert pixels.shape[0] >= 400 and pixels.shape[1] >= 1000
    assert pixels.std() > 10  # not a blank canvas

    empty = np.zeros((0, 40, 40), bool)
    visualize.save_scene_preview(str(tmp_path / "empty.png"), image, empty, empty, [], 3)
    assert (tmp_path / "empty.png").stat().st_size > 0
    with pytest.raises(ValueError, match="classes"):
        visualize.save_scene_preview(str(tmp_path / "bad.png"), image, amodal, visible, [1],
                                     3)


# ------------------------------------------------ pictures of predictions (draw_picture)


def test_picture_size_layout():
    # Small images are enlarged by an integer factor to at least 384 px, huge ones shrunk.
    assert visualize.picture_size(64, 32) == (384, 192 + 300, 384, 192)
    assert visualize.picture_size(500, 700) == (500, 700 + 300, 500, 700)
    assert visualize.picture_size(4000, 3000)[2:] == (1600, 1200)
    # A wide, short image keeps a graph panel tall enough to read.
    assert visualize.picture_size(100, 1000)[:3] == (320, 1000 + 300, 100)
    # Many detections widen the graph panel.
    assert visualize.picture_size(500, 500, 20)[1] == 500 + 36 * 22


def test_depth_order_of_the_picture_from_json_or_int_keys():
    instances = [{"depth_order": {1: 1, "2": -1}}, {"depth_order": {"0": -1}},
                 {"depth_order": {0: 1, 5: 1}}]
    np.testing.assert_array_equal(depth_order.from_relations([d["depth_order"] for d in instances]),
                                  [[0, 1, -1], [-1, 0, 0], [1, 0, 0]])


def test_draw_picture_without_and_with_detections():
    from sln_jax import visualize
    image = _random_rgb(48, 64, seed=5)
    empty = visualize.draw_picture(image, [])
    h, w, dh, dw = visualize.picture_size(48, 64, 0)
    assert empty.shape == (h, w, 3) and empty.dtype == np.uint8
    factor = dh // 48
    np.testing.assert_array_equal(empty[:dh, :dw],
                                  np.repeat(np.repeat(image, factor, 0), factor, 1))

    amodal = np.zeros((2, 48, 64), bool)
    amodal[0, 5:30, 5:30] = True
    amodal[1, 20:45, 20:60] = True
    visible = amodal.copy()
    visible[1, 20:30, 20:30] = False  # detection 0 is in front of detection 1
    instances = [
        {"amodal": amodal[0], "visible": visible[0], "category_id": 1, "score": 0.9,
         "depth_order": {1: 1}},
        {"amodal": amodal[1], "visible": visible[1], "category_id": 2, "score": 0.7,
         "depth_order": {0: -1}},
    ]
    picture = visualize.draw_picture(image, instances, {1: "cat", 2: "dog"})
    h, w, dh, dw = visualize.picture_size(48, 64, 2)
    assert picture.shape == (h, w, 3)
    # Outside every mask the image is untouched (tags sit on the visible parts).
    outside = ~np.repeat(np.repeat(amodal.any(0), factor, 0), factor, 1)
    np.testing.assert_array_equal(picture[:dh, :dw][outside], empty[:dh, :dw][outside])
    # The graph panel shows both nodes in the detections' colors.
    panel = picture[:, dw:].reshape(-1, 3).astype(int)
    for color in visualize.instance_colors(2).astype(int):
        assert (np.abs(panel - color).sum(1) < 10).sum() > 50


def test_draw_picture_shows_only_confident_detections():
    image = _random_rgb(48, 64, seed=6)
    amodal = np.zeros((3, 48, 64), bool)
    amodal[0, 5:30, 5:30] = True
    amodal[1, 20:45, 20:60] = True
    amodal[2, 0:10, 40:60] = True
    instances = [
        {"amodal": amodal[0], "visible": amodal[0], "category_id": 1, "score": 0.9,
         "depth_order": {1: 1, 2: 1}},
        {"amodal": amodal[1], "visible": amodal[1], "category_id": 1, "score": 0.1,
         "depth_order": {0: -1}},
        {"amodal": amodal[2], "visible": amodal[2], "category_id": 2, "score": 0.6,
         "depth_order": {0: -1}},
    ]
    kept = visualize._confident(instances, 0.5)
    assert [d["score"] for d in kept] == [0.9, 0.6]
    assert kept[0]["depth_order"] == {1: 1} and kept[1]["depth_order"] == {0: -1}
    assert instances[0]["depth_order"] == {1: 1, 2: 1}  # inputs are not modified
    picture = visualize.draw_picture(image, instances, min_score=0.5)
    assert picture.shape[:2] == visualize.picture_size(48, 64, 2)[:2]
    factor = visualize.picture_size(48, 64, 2)[2] // 48
    dh, dw = 48 * factor, 64 * factor
    reference = visualize.draw_picture(image, [])[:dh, :dw]
    only_low = np.repeat(np.repeat(amodal[1] & ~amodal[0], factor, 0), factor, 1)
    np.testing.assert_array_equal(picture[:dh, :dw][only_low], reference[only_low])


def _square(y0: int, x0: int, side: int = 12, size: int = 48) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[y0:y0 + side, x0:x0 + side] = True
    return mask


def test_match_to_truth_is_greedy_by_score_at_iou_half():
    truths = [{"amodal": _square(2, 2)}, {"amodal": _square(30, 30)}]
    instances = [{"amodal": _square(3, 2), "score": 0.6},   # IoU 11/13 with GT0
                 {"amodal": _square(2, 3), "score": 0.9},   # IoU 11/13 with GT0, higher score
                 {"amodal": _square(20, 5), "score": 0.8}]  # overlaps nothing
    assert visualize.match_to_truth(instances, truths) == [None, 0, None]
    assert visualize.match_to_truth([], truths) == []
    assert visualize.match_to_truth(instances[:1], []) == [None]


def test_draw_comparison_puts_the_truth_above_the_prediction():
    image = _random_rgb(48, 48)
    front, back = _square(10, 10, 16), _square(18, 18, 16)
    truths = [{"amodal": front, "visible": front, "category_id": 1, "depth_order": {1: 1}},
              {"amodal": back, "visible": back & ~front, "category_id": 2,
               "depth_order": {0: -1}}]
    instances = [dict(truths[0], score=0.9, depth_order={})]
    picture = visualize.draw_comparison(image, instances, truths, {1: "ring", 2: "disc"})
    truth_alone = visualize.draw_picture(image, [dict(t, score=1.0) for t in truths], None, 0.0,
                                         labels=["ring", "disc missed"],
                                         show_scores=False)
    prediction_alone = visualize.draw_picture(image, instances, None, labels=["ring 0.90 =GT0"],
                                              show_scores=False)
    assert picture.dtype == np.uint8 and picture.ndim == 3
    assert picture.shape[0] == truth_alone.shape[0] + 8 + prediction_alone.shape[0]
    # The image part of each half is the picture drawn alone with those tags.
    scale_h = truth_alone.shape[0]
    assert np.array_equal(picture[:scale_h, :truth_alone.shape[1] // 2],
                          truth_alone[:, :truth_alone.shape[1] // 2])
    top = scale_h + 8
    assert np.array_equal(picture[top:, :prediction_alone.shape[1] // 2],
                          prediction_alone[:, :prediction_alone.shape[1] // 2])
    with pytest.raises(ValueError, match="1 labels for 2"):
        visualize.draw_picture(image, [dict(t, score=1.0) for t in truths], labels=["x"])
