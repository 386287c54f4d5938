"""Layering targets: global map, box-relative layer and sem-dist crops, conflict repair."""

import collections

import numpy as np
import pytest
from hypothesis import given, settings

from data_prep.scene import Scene
from data_prep.targets import build_targets, dequantize_semdist, quantize_semdist
from scene_strategies import scenes
from sln_jax import layering, semdist


def make_scene(amodal, visible, order) -> Scene:
    n, h, w = amodal.shape
    keep = amodal.reshape(n, h * w).any(axis=1)
    amodal, visible, order = amodal[keep], visible[keep] & amodal[keep], np.asarray(order)[keep]
    n = amodal.shape[0]
    rank = np.argsort(np.argsort(order, kind="stable"), kind="stable").astype(np.int32)
    return Scene(image_id=1, image_path="x", height=h, width=w,
                 ann_ids=np.arange(n, dtype=np.int64), classes=np.ones(n, np.int32),
                 amodal=amodal, visible=visible, order=rank, is_stuff=np.zeros(n, bool),
                 boxes=layering.masks_to_boxes(amodal),
                 occlusion=np.zeros(n, np.float32))


@settings(max_examples=30, deadline=None)
@given(scenes(max_instances=5, max_size=24))
def test_targets_match_the_layering_module(data):
    scene = make_scene(data["amodal"], data["visible"], data["order"])
    k, p = 3, 8
    warnings = collections.Counter()
    targets = build_targets(scene, k, p, warnings)
    np.testing.assert_array_equal(targets.global_layers,
                                  layering.global_layers(scene.amodal, k))
    layers = np.minimum(layering.instance_layers(scene.amodal, scene.order), k - 1)
    want = layering.crop_to_boxes(layers, scene.boxes, p, method="nearest", fill=-1) + 1
    np.testing.assert_array_equal(targets.layer_crops, want)
    sd = layering.crop_to_boxes(semdist.encode(layers, k), scene.boxes, p, method="bilinear",
                                fill=0)
    np.testing.assert_allclose(dequantize_semdist(targets.semdist_crops, k), sd,
                               atol=(k + 1) / 510 + 1e-6)
    np.testing.assert_array_equal(
        targets.layer_pixels, np.bincount(layers[layers >= 0], minlength=k))
    # Painted masks agree with their order: nothing to repair.
    assert warnings["visible_layer_conflict"] == 0


def test_box_sized_crop_is_the_layer_map():
    amodal = np.zeros((2, 12, 12), bool)
    amodal[0, 2:6, 2:6] = True
    amodal[1, 4:8, 4:8] = True
    order = np.array([0, 1])
    visible = amodal.copy()
    visible[1, 4:6, 4:6] = False
    targets = build_targets(make_scene(amodal, visible, order), 4, 4, collections.Counter())
    want_back = np.ones((4, 4), np.uint8)
    want_back[:2, :2] = 2  # hidden by one instance: layer 1 stored as 2
    np.testing.assert_array_equal(targets.layer_crops[1], want_back)
    np.testing.assert_array_equal(targets.layer_crops[0], np.ones((4, 4), np.uint8))
    assert targets.global_layers[4:6, 4:6].tolist() == [[2, 2], [2, 2]]
    assert targets.global_layers.sum() == 16 + 16  # the overlap counts twice


def test_annotated_visible_mask_wins_for_layer_zero():
    amodal = np.zeros((2, 20, 20), bool)
    amodal[0, 0:10, 0:10] = True
    amodal[1, 0:10, 5:15] = True
    # Annotated as if instance 1 were in front, but the order says instance 0 is.
    visible = amodal.copy()
    visible[0, 0:10, 5:10] = False
    warnings = collections.Counter()
    scene = make_scene(amodal, visible, [0, 1])
    targets = build_targets(scene, 3, 10, warnings)
    assert warnings["visible_layer_conflict"] == 2
    layers = targets.layer_crops.astype(int) - 1
    np.testing.assert_array_equal(layers[0][:, :5], 0)  # visible part
    np.testing.assert_array_equal(layers[0][:, 5:], 1)  # hidden, though nothing "in front"
    np.testing.assert_array_equal(layers[1], 0)


def test_no_instances():
    empty = np.zeros((0, 5, 7), bool)
    targets = build_targets(make_scene(empty, empty, []), 4, 6, collections.Counter())
    assert targets.global_layers.shape == (5, 7) and not targets.global_layers.any()
    assert targets.layer_crops.shape == (0, 6, 6) and targets.semdist_crops.shape == (0, 6, 6)


@pytest.mark.parametrize("k", [2, 4, 16])
def test_semdist_quantization(k):
    values = np.linspace(0, k + 1 - 1e-3, 1000)
    back = dequantize_semdist(quantize_semdist(values, k), k)
    assert np.abs(back - values).max() <= (k + 1) / 510 + 1e-6
    assert quantize_semdist(np.array([0.0]), k)[0] == 0
