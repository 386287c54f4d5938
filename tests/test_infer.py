"""Tests of sln_jax.infer: image loading, canvases, writers, and inference end to end."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from sln_jax import infer

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


def _random_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------- image loading


def test_load_rgb_png_round_trip(tmp_path):
    pixels = _random_rgb(13, 17)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    np.testing.assert_array_equal(infer.load_image(tmp_path / "a.png"), pixels)


def test_load_grayscale_repeats_channels(tmp_path):
    gray = _random_rgb(9, 11)[:, :, 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    out = infer.load_image(tmp_path / "g.png")
    assert out.shape == (9, 11, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


def test_load_rgba_composites_over_white(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = (200, 40, 10)
    rgba[0, :, 3] = 255   # opaque: the colour
    rgba[1, :, 3] = 0     # transparent: white
    rgba[1, 2, 3] = 128   # half: the blend
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "t.png")
    out = infer.load_image(tmp_path / "t.png").astype(int)
    np.testing.assert_array_equal(out[0], [[200, 40, 10]] * 3)
    np.testing.assert_array_equal(out[1, :2], [[255, 255, 255]] * 2)
    expected = np.round(np.array([200, 40, 10]) * 128 / 255 + 255 * 127 / 255)
    assert np.abs(out[1, 2] - expected).max() <= 1


def test_load_palette_with_transparency(tmp_path):
    index = np.array([[0, 1], [1, 0]], np.uint8)
    image = Image.fromarray(index, mode="P")
    image.putpalette([10, 20, 30, 250, 0, 0] + [0] * 762)
    image.info["transparency"] = 0
    image.save(tmp_path / "p.png", transparency=0)
    out = infer.load_image(tmp_path / "p.png")
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 1], [250, 0, 0])


def test_load_16bit_grayscale_scales_to_8bit(tmp_path):
    values = np.array([[0, 257, 65535], [32896, 1000, 60000]], np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    out = infer.load_image(tmp_path / "d.png")
    np.testing.assert_array_equal(out[:, :, 1], np.round(values / 257.0).astype(np.uint8))


def test_load_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (8, 6), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    out = infer.load_image(tmp_path / "c.jpg")
    assert out.shape == (6, 8, 3)
    assert np.abs(out.astype(int) - [255, 0, 0]).max() <= 8  # JPEG rounding


def test_load_applies_exif_orientation(tmp_path):
    pixels = _random_rgb(4, 7)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(pixels).save(tmp_path / "o.png", exif=exif)
    out = infer.load_image(tmp_path / "o.png")
    np.testing.assert_array_equal(out, np.rot90(pixels, k=-1))


@pytest.mark.parametrize("content", [b"", b"not an image at all", "truncated"])
def test_unreadable_files_raise_naming_the_file(tmp_path, content):
    path = tmp_path / "bad.png"
    if content == "truncated":
        buffer = io.BytesIO()
        Image.fromarray(_random_rgb(64, 64)).save(buffer, format="PNG")
        content = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    path.write_bytes(content)
    with pytest.raises(infer.UnreadableImageError, match="bad.png"):
        infer.load_image(path)


def test_find_images_directory_glob_and_file(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.png", "a.JPG", "sub/c.webp", "notes.txt", "sub/d.bin"):
        (tmp_path / name).write_bytes(b"x")
    found = infer.find_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.JPG", "b.png", "sub/c.webp"]
    # A glob takes whatever it matches, so a bad file given on purpose is reported, not ignored.
    globbed = infer.find_images(str(tmp_path / "sub" / "*"))
    assert [p.name for p in globbed] == ["c.webp", "d.bin"]
    assert infer.find_images(tmp_path / "b.png") == [tmp_path / "b.png"]
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        infer.find_images(str(tmp_path / "nothing_here*.png"))


# --------------------------------------------------------------------------- canvases


def test_default_canvas_sizes_are_multiples_of_64():
    assert infer.default_canvas_sizes(512) == (512, 768, 1024)
    assert infer.default_canvas_sizes(192) == (192, 320, 384)


@given(h=st.integers(1, 3000), w=st.integers(1, 3000))
def test_choose_canvas_smallest_that_holds(h, w):
    sizes = (256, 384, 512)
    side = infer.choose_canvas(h, w, sizes)
    assert side in sizes
    if max(h, w) <= 512:
        assert max(h, w) <= side
        assert all(s < max(h, w) for s in sizes if s < side)
    else:
        assert side == 512


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 300), w=st.integers(1, 300), canvas=st.sampled_from([64, 128, 192]))
def test_fit_to_canvas_keeps_aspect_and_pads_with_zero(h, w, canvas):
    image = _random_rgb(h, w, seed=h * 1000 + w)
    out, (nh, nw) = infer.fit_to_canvas(image, canvas, MEAN, STD)
    assert out.shape == (canvas, canvas, 3) and out.dtype == np.float32
    assert max(nh, nw) == canvas
    scale = canvas / max(h, w)
    assert abs(nh - h * scale) <= 0.5 + 1e-9 or nh == 1
    assert abs(nw - w * scale) <= 0.5 + 1e-9 or nw == 1
    assert not out[nh:].any() and not out[:, nw:].any()
    # The content is the normalized resized image.
    pixels = out[:nh, :nw] * np.float32(STD) + np.float32(MEAN)
    assert pixels.min() >= -0.01 and pixels.max() <= 255.01


def test_fit_to_canvas_resizes_as_the_input_pipeline():
    import tensorflow as tf
    from sln_jax import input_pipeline
    mean = tuple(255 * m for m in input_pipeline.IMAGENET_MEAN)
    std = tuple(255 * s for s in input_pipeline.IMAGENET_STD)
    for h, w, canvas in ((300, 200, 128), (50, 70, 128)):
        image = _random_rgb(h, w)
        out, (nh, nw) = infer.fit_to_canvas(image, canvas, mean, std)
        resized = tf.image.resize(image, [nh, nw], method="bilinear", antialias=True).numpy()
        expected = (resized / 255.0 - np.float32(input_pipeline.IMAGENET_MEAN)) / \
            np.float32(input_pipeline.IMAGENET_STD)
        # Pillow rounds to uint8: at most one grey level apart.
        assert np.abs(out[:nh, :nw] - expected).max() <= 1.0 / 255 / min(
            input_pipeline.IMAGENET_STD) + 1e-5


def test_fit_to_canvas_identity_size_is_exact():
    image = _random_rgb(64, 40)
    out, size = infer.fit_to_canvas(image, 64, MEAN, STD)
    assert size == (64, 40)
    np.testing.assert_allclose(out[:, :40] * np.float32(STD) + np.float32(MEAN), image,
                               atol=1e-3)


# --------------------------------------------------------------------------- writers


def test_write_json_atomic_handles_numpy_and_leaves_no_temp(tmp_path):
    payload = {"a": np.int64(3), "b": np.float32(0.5), "c": np.arange(3), "d": b"rle"}
    infer.write_json_atomic(tmp_path / "out" / "r.json", payload)
    assert json.loads((tmp_path / "out" / "r.json").read_text()) == {
        "a": 3, "b": 0.5, "c": [0, 1, 2], "d": "rle"}
    assert os.listdir(tmp_path / "out") == ["r.json"]


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "r.json"
    infer.write_json_atomic(target, [1])
    with pytest.raises(TypeError):
        infer.write_json_atomic(target, [object()])
    assert json.loads(target.read_text()) == [1]
    assert os.listdir(tmp_path) == ["r.json"]


def test_write_png_atomic_round_trip(tmp_path):
    pixels = _random_rgb(5, 6)
    infer.write_png_atomic(tmp_path / "p.png", pixels)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "p.png")), pixels)
    with pytest.raises(ValueError, match="q.png"):
        infer.write_png_atomic(tmp_path / "q.png", pixels.astype(np.float32))


def test_image_ids_from_annotations(tmp_path):
    gt = {"images": [{"id": 7, "file_name": "val/x.png"}, {"id": 9, "file_name": "a/y.png"},
                     {"id": 11, "file_name": "b/y.png"}], "annotations": []}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    ids = infer.image_ids_from_annotations(tmp_path / "gt.json")
    assert ids["val/x.png"] == 7 and ids["x.png"] == 7
    assert ids["a/y.png"] == 9 and ids["b/y.png"] == 11
    assert "y.png" not in ids  # ambiguous base name
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ValueError, match="bad.json"):
        infer.image_ids_from_annotations(tmp_path / "bad.json")


# --------------------------------------------------------------------------- pictures


def test_picture_size_layout():
    # Small images are enlarged by an integer factor to at least 384 px, huge ones shrunk.
    assert infer.picture_size(64, 32) == (384, 192 + 300, 384, 192)
    assert infer.picture_size(500, 700) == (500, 700 + 300, 500, 700)
    assert infer.picture_size(4000, 3000)[2:] == (1600, 1200)
    # A wide, short image keeps a graph panel tall enough to read.
    assert infer.picture_size(100, 1000)[:3] == (320, 1000 + 300, 100)
    # Many detections widen the graph panel.
    assert infer.picture_size(500, 500, 20)[1] == 500 + 36 * 22


def test_depth_order_matrix_from_json_or_int_keys():
    instances = [{"depth_order": {1: 1, "2": -1}}, {"depth_order": {"0": -1}},
                 {"depth_order": {0: 1, 5: 1}}]
    np.testing.assert_array_equal(infer.depth_order_matrix(instances),
                                  [[0, 1, -1], [-1, 0, 0], [1, 0, 0]])


def test_draw_picture_without_and_with_detections():
    from sln_jax import visualize
    image = _random_rgb(48, 64, seed=5)
    empty = infer.draw_picture(image, [])
    h, w, dh, dw = infer.picture_size(48, 64, 0)
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
    picture = infer.draw_picture(image, instances, {1: "cat", 2: "dog"})
    h, w, dh, dw = infer.picture_size(48, 64, 2)
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
    kept = infer._confident(instances, 0.5)
    assert [d["score"] for d in kept] == [0.9, 0.6]
    assert kept[0]["depth_order"] == {1: 1} and kept[1]["depth_order"] == {0: -1}
    assert instances[0]["depth_order"] == {1: 1, 2: 1}  # inputs are not modified
    picture = infer.draw_picture(image, instances, min_score=0.5)
    assert picture.shape[:2] == infer.picture_size(48, 64, 2)[:2]
    factor = infer.picture_size(48, 64, 2)[2] // 48
    dh, dw = 48 * factor, 64 * factor
    reference = infer.draw_picture(image, [])[:dh, :dw]
    only_low = np.repeat(np.repeat(amodal[1] & ~amodal[0], factor, 0), factor, 1)
    np.testing.assert_array_equal(picture[:dh, :dw][only_low], reference[only_low])


# ------------------------------------------------------------------------ layer maps


def _fake_outputs(head: str, k: int = 3, d: int = 3, r: int = 14, seed: int = 0):
    """One image's model outputs with random ROI maps: 2 valid detections of 3."""
    rng = np.random.default_rng(seed)
    outputs = {
        "boxes": np.array([[4, 6, 40, 30], [10, 12, 60, 62], [0, 0, 0, 0]], np.float32)[:d],
        "scores": np.array([0.9, 0.8, 0.0], np.float32)[:d],
        "classes": np.array([1, 2, 0], np.int32)[:d],
        "valid": np.array([True, True, False])[:d],
    }
    if head == "layers":
        outputs["layer_logits"] = rng.normal(0, 3, (d, r, r, k)).astype(np.float32)
    else:
        outputs["semdist"] = rng.uniform(0, k + 1, (d, r, r)).astype(np.float32)
    return outputs


@pytest.mark.parametrize("head", ["layers", "semdist"])
def test_layer_maps_decode_to_the_instances(head):
    import ml_collections
    from sln_jax import semdist
    from sln_jax.models import postprocess
    k = 3
    model = ml_collections.ConfigDict({"head": head, "num_layers": k})
    outputs = _fake_outputs(head, k)
    content, orig = (64, 64), (48, 48)  # the canvas content was enlarged 4/3
    instances = postprocess.to_instances(outputs, content, orig, model)
    maps = infer.layer_maps(outputs, content, orig, instances, model)
    assert len(maps) == len(instances) == 2
    for (layer_probs, sem), instance in zip(maps, instances):
        assert layer_probs.shape == (k, 48, 48) and sem.shape == (48, 48)
        assert 0 <= layer_probs.min() and layer_probs.max() <= 1
        np.testing.assert_array_equal(semdist.decode(sem, k)["layers"], instance["layers"])
        if head == "layers":
            decoded = postprocess.decode_layer_probs(np.moveaxis(layer_probs, 0, -1))
            np.testing.assert_array_equal(decoded["layers"], instance["layers"])
        else:
            np.testing.assert_array_equal(layer_probs.argmax(0)[instance["amodal"]],
                                          instance["layers"][instance["amodal"]])
            assert not layer_probs[:, ~instance["amodal"]].any()


def test_layer_map_pngs(tmp_path):
    import ml_collections
    from sln_jax.models import postprocess
    model = ml_collections.ConfigDict({"head": "layers", "num_layers": 3})
    outputs = _fake_outputs("layers")
    instances = postprocess.to_instances(outputs, (64, 64), (30, 70), model)
    infer._write_layer_maps(tmp_path, outputs, (64, 64), (30, 70), instances, model)
    assert sorted(os.listdir(tmp_path)) == [
        f"det{i}_{kind}.png" for i in range(2)
        for kind in ("layer0", "layer1", "layer2", "semdist")]
    maps = infer.layer_maps(outputs, (64, 64), (30, 70), instances, model)
    stored = np.asarray(Image.open(tmp_path / "det1_layer2.png"))
    np.testing.assert_array_equal(stored, np.round(255 * maps[1][0][2]).astype(np.uint8))
    stored = np.asarray(Image.open(tmp_path / "det0_semdist.png"))
    np.testing.assert_array_equal(stored, np.round(255 * maps[0][1] / 4).astype(np.uint8))


# ------------------------------------------------------------------- end to end (trained)

CANVASES = (64, 128)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(config, workdir, raw data root): the tiny config trained 2 steps on 64-px scenes.

    The raw root holds ``images/{train,val}/*.png`` and ``annotations/{train,val}.json``.
    """
    from sln_jax import train
    from tiny_dataset import make_tiny_dataset, tiny_config

    root = tmp_path_factory.mktemp("infer_e2e")
    config = tiny_config(make_tiny_dataset(str(root), num_train=4, num_val=3))
    config.train.num_steps = 2
    train.train(config, str(root / "workdir"), evaluate_every=False)
    return config, root / "workdir", root / "raw"


@pytest.fixture(scope="module")
def predictor(trained):
    config, workdir, _ = trained
    return infer.Predictor(config, workdir, canvas_sizes=CANVASES, score_threshold=0.0)


@pytest.fixture(scope="module")
def mixed_images(tmp_path_factory):
    """A directory of images of several modes and sizes, one unreadable file and a non-image."""
    directory = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (50, 80), dtype=np.uint8), mode="L").save(
        directory / "a_gray.png")
    rgba = rng.integers(0, 256, (100, 90, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(directory / "b_rgba.png")
    Image.fromarray(rng.integers(0, 65535, (40, 40), dtype=np.uint16)).save(
        directory / "c_16bit.png")
    Image.fromarray(_random_rgb(300, 200, seed=4)).save(directory / "d_large.jpg")
    (directory / "e_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a PNG")
    (directory / "notes.txt").write_text("not an image")
    return directory


@pytest.mark.slow
def test_results_evaluate_against_the_annotations(trained, predictor, tmp_path):
    from pycocotools.coco import COCO

    from sln_jax import evaluation
    config, workdir, root = trained
    gt_path = root / "annotations" / "val.json"
    summary = infer.run(config, workdir, str(root / "images" / "val"), tmp_path,
                        annotations=str(gt_path), layers=True, predictor=predictor,
                        progress=False)
    gt = json.loads(gt_path.read_text())
    gt_ids = {image["id"]: image for image in gt["images"]}
    results = json.loads((tmp_path / "results.json").read_text())
    assert summary["num_images"] == 3 and summary["num_unreadable"] == 0
    assert summary["num_detections"] == len(results) > 0
    for entry in results:
        assert entry["image_id"] in gt_ids
        image = gt_ids[entry["image_id"]]
        assert set(entry) >= {"image_id", "category_id", "score", "bbox", "segmentation",
                              "visible_mask", "occlude_rate", "depth_order"}
        assert entry["segmentation"]["size"] == [image["height"], image["width"]]
        assert 0.0 <= entry["occlude_rate"] <= 1.0
    coco = COCO(str(gt_path))
    detections = coco.loadRes(str(tmp_path / "results.json"))
    assert len(detections.getAnnIds()) == len(results)
    metrics = evaluation.evaluate(str(gt_path), str(tmp_path / "results.json"))
    assert -1.0 <= metrics["amodal/AP"] <= 1.0 and "modal/AP" in metrics

    images = json.loads((tmp_path / "images.json").read_text())
    by_name = {os.path.basename(r["file_name"]): r["id"] for r in images["images"]}
    assert by_name == {os.path.basename(i["file_name"]): i["id"] for i in gt["images"]}
    # Pictures and layer maps have the sizes they promise.
    per_image = {}
    for entry in results:
        per_image[entry["image_id"]] = per_image.get(entry["image_id"], 0) + 1
    k = config.model.num_layers
    for record in images["images"]:
        stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
        count = per_image.get(record["id"], 0)
        picture = np.asarray(Image.open(tmp_path / "pictures" / f"{stem}.png"))
        assert picture.shape == infer.picture_size(record["height"], record["width"],
                                                   count)[:2] + (3,)
        layer_files = sorted(os.listdir(tmp_path / "layers" / stem))
        assert len(layer_files) == count * (k + 1)
        for name in layer_files:
            pixels = np.asarray(Image.open(tmp_path / "layers" / stem / name))
            assert pixels.shape == (record["height"], record["width"])


@pytest.mark.slow
def test_any_mode_and_size_unreadable_counted_compiles_once_per_canvas(
        trained, predictor, mixed_images, tmp_path):
    config, workdir, _ = trained
    summary = infer.run(config, workdir, str(mixed_images), tmp_path, predictor=predictor,
                        progress=False)
    assert summary["num_unreadable"] == 1
    assert summary["unreadable"][0]["file"].endswith("e_broken.png")
    images = json.loads((tmp_path / "images.json").read_text())
    assert [(r["id"], r["file_name"], r["height"], r["width"]) for r in images["images"]] == [
        (1, "a_gray.png", 50, 80), (2, "b_rgba.png", 100, 90), (3, "c_16bit.png", 40, 40),
        (4, "d_large.jpg", 300, 200)]
    assert images["unreadable"][0]["file"].endswith("e_broken.png")
    results = json.loads((tmp_path / "results.json").read_text())
    assert {r["image_id"] for r in results} <= {1, 2, 3, 4}
    for record in images["images"]:
        count = sum(r["image_id"] == record["id"] for r in results)
        stem = os.path.splitext(record["file_name"])[0]
        picture = Image.open(tmp_path / "pictures" / f"{stem}.png")
        assert picture.size[::-1] == infer.picture_size(record["height"], record["width"],
                                                        count)[:2]
    # 64-px canvases for the small images, 128 for the RGBA and the shrunk large one; more
    # images of new sizes compile nothing new.
    predictor.predict_batch([_random_rgb(h, w, seed=h) for h, w in
                             ((7, 300), (64, 64), (65, 10), (128, 127), (999, 5))])
    assert sorted(set(predictor.compiled_shapes)) == [(1, 64, 64, 3), (1, 128, 128, 3)]
    assert len(predictor.compiled_shapes) == len(CANVASES)


@pytest.mark.slow
def test_predict_returns_instances_in_image_pixels(predictor):
    image = _random_rgb(37, 90, seed=11)
    instances = predictor.predict(image)
    assert instances == [] or instances[0]["amodal"].shape == (37, 90)
    for instance in instances:
        assert instance["visible"].shape == (37, 90)
        assert not (instance["visible"] & ~instance["amodal"]).any()
        x, y, w, h = instance["box"]
        assert -1e-3 <= x and x + w <= 90 + 1e-3 and -1e-3 <= y and y + h <= 37 + 1e-3
    # Same image, same detections; batching does not change them.
    again = predictor.predict_batch([image, _random_rgb(20, 20)])[0]
    assert [d["score"] for d in again] == pytest.approx([d["score"] for d in instances])
    with pytest.raises(ValueError, match="image 0"):
        predictor.predict(image[:, :, 0])


@pytest.mark.slow
def test_checkpoint_of_another_model_is_refused(trained):
    config, workdir, _ = trained
    other = config.copy_and_resolve_references()
    other.model.num_layers = 5
    with pytest.raises(ValueError, match="num_layers"):
        infer.Predictor(other, workdir)


@pytest.mark.slow
def test_cli_writes_results_pictures_and_layers(trained, tmp_path):
    import subprocess
    import sys

    from tiny_dataset import REPO, TINY_CONFIG
    config, workdir, root = trained
    command = [
        sys.executable, "-m", "sln_jax.infer", f"--config={TINY_CONFIG}",
        f"--config.data.dir={config.data.dir}", f"--checkpoint={workdir}", f"--images={root / 'images' / 'val' / '*.png'}",
        f"--output={tmp_path}", "--layers", "--score_threshold=0",
        f"--annotations={root / 'annotations' / 'val.json'}",
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "3 images" in done.stdout and "0 unreadable" in done.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results) > 0
    assert len(os.listdir(tmp_path / "pictures")) == 3
    assert os.path.isdir(tmp_path / "layers")
