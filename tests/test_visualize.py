"""Tests of sln_jax.visualize: what is drawn where, the depth graph, preview files."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from sln_jax import visualize


def _two_squares(size: int = 40):
    """Square 0 in front of square 1; they overlap on a 10 x 10 block."""
    amodal = np.zeros((2, size, size), bool)
    amodal[0, 5:25, 5:25] = True
    amodal[1, 15:35, 15:35] = True
    visible = amodal.copy()
    visible[1] &= ~amodal[0]
    return amodal, visible


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
