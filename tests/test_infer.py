"""Tests of sln_jax.infer: finding images, image ids, layer maps, and inference end to end."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from sln_jax import depth_order, infer, visualize


def _random_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


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
    from sln_jax import postprocess
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
    from sln_jax import postprocess
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
def trained(tiny_run):
    """(config, workdir, raw data root): the session's tiny run (``tiny_run``: the tiny config
    trained 2 steps on 64-px scenes by the CLI).

    The raw root holds ``images/{train,val}/*.png`` and ``annotations/{train,val}.json``.
    """
    return tiny_run.config(), tiny_run.workdir, tiny_run.raw


@pytest.fixture(scope="module")
def predictor(trained):
    config, workdir, _ = trained
    return infer.Predictor(config, workdir, canvas_sizes=CANVASES, score_threshold=0.0)


@pytest.mark.slow
def test_predictor_uses_the_workdirs_config_and_checks_a_given_one(trained):
    config, workdir, _ = trained
    saved = infer.Predictor(None, workdir / "checkpoints", canvas_sizes=CANVASES)
    assert saved.config.data.dir == config.data.dir
    assert saved.config.model.fpn_dim == config.model.fpn_dim
    assert list(saved.config.model.anchor_sizes) == list(config.model.anchor_sizes)
    other = config.copy_and_resolve_references()
    other.model.fpn_dim = 16
    with pytest.raises(ValueError, match="model.fpn_dim: checkpoint 8, config 16"):
        infer.Predictor(other, workdir)


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
                        progress=False, evaluate=True)
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
    # The in-process evaluator scored the same detections to the same numbers.
    assert summary["metrics"] == metrics
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics

    images = json.loads((tmp_path / "images.json").read_text())
    by_name = {os.path.basename(r["file_name"]): r["id"] for r in images["images"]}
    assert by_name == {os.path.basename(i["file_name"]): i["id"] for i in gt["images"]}
    # Pictures (the ground truth above the prediction) and layer maps have the sizes they
    # promise.
    per_image, drawn, truths = {}, {}, {}
    for entry in results:
        per_image[entry["image_id"]] = per_image.get(entry["image_id"], 0) + 1
        drawn[entry["image_id"]] = (drawn.get(entry["image_id"], 0)
                                    + (entry["score"] >= visualize.PICTURE_MIN_SCORE))
    for a in gt["annotations"]:
        truths[a["image_id"]] = truths.get(a["image_id"], 0) + 1
    k = config.model.num_layers
    for record in images["images"]:
        stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
        count = per_image.get(record["id"], 0)
        picture = np.asarray(Image.open(tmp_path / "pictures" / f"{stem}.png"))
        h, w = record["height"], record["width"]
        top = visualize.picture_size(h, w, truths.get(record["id"], 0))
        bottom = visualize.picture_size(h, w, drawn.get(record["id"], 0))
        assert picture.shape == (top[0] + 8 + bottom[0], max(top[1], bottom[1]), 3)
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
        assert picture.size[::-1] == visualize.picture_size(record["height"], record["width"],
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


def _run_infer_cli(*args: str):
    import subprocess
    import sys

    from tiny_dataset import REPO
    from xla_env import subprocess_env
    return subprocess.run([sys.executable, "-m", "sln_jax.infer", *args], cwd=REPO,
                          env=dict(subprocess_env(), PYTHONPATH=REPO),
                          capture_output=True, text=True, timeout=600)


def _one_line_error(done, status: int, text: str) -> None:
    assert done.returncode == status, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if "sln_jax.infer: error:" in line]
    assert len(lines) == 1 and text in lines[0], done.stderr[-2000:]


def test_cli_no_image_matches_is_a_one_line_error(tmp_path):
    done = _run_infer_cli(f"--checkpoint={tmp_path}", f"--images={tmp_path / 'no' / '*.png'}",
                          f"--output={tmp_path / 'out'}")
    _one_line_error(done, 2, "no such file, directory or match")


def test_cli_missing_checkpoint_is_a_one_line_error(tmp_path):
    Image.fromarray(_random_rgb(32, 32)).save(tmp_path / "a.png")
    done = _run_infer_cli(f"--checkpoint={tmp_path / 'workdir'}", f"--images={tmp_path}",
                          f"--output={tmp_path / 'out'}")
    _one_line_error(done, 1, "no checkpoint in")


@pytest.mark.slow
def test_cli_fails_when_every_input_is_unreadable(trained, tmp_path):
    _, workdir, _ = trained
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    done = _run_infer_cli(f"--checkpoint={workdir}", f"--images={tmp_path / 'images'}",
                          f"--output={tmp_path / 'out'}")
    _one_line_error(done, 1, "no image predicted: 1 unreadable")
    # The checkpoint was read without orbax's read-only warnings.
    assert "read only" not in done.stderr and "read_only" not in done.stderr, done.stderr


def test_predictor_takes_the_semantic_map_as_an_argument(tmp_path):
    """A model with semantic_channels > 0 needs each image's map (plain images have none:
    a clear error, never a guess); given, it predicts; a model without the input refuses
    one. The CLI path reads DIR/<stem>.png and skips an image without its map."""
    import jax

    from sln_jax.models.sln import SLN
    from tiny_dataset import load_tiny_config

    config = load_tiny_config()
    config.model.semantic_channels = 6
    variables = jax.jit(SLN(config.model).init)(jax.random.key(0),
                                                np.zeros((1, 64, 64, 3), np.float32))
    predictor = infer.Predictor.from_variables(config, variables, canvas_sizes=(64,),
                                               score_threshold=0.0)
    assert predictor.semantic_channels == 6
    image = _random_rgb(40, 56)
    ids = np.random.default_rng(0).integers(0, 6, (40, 56)).astype(np.uint8)
    with pytest.raises(ValueError, match=r"takes a semantic map per image \(config.model."
                                         r"semantic_channels = 6\): pass semantic="):
        predictor.predict(image)
    with pytest.raises(ValueError, match=r"semantic map 0: expected integer class ids "
                                         r"\[40, 56\]"):
        predictor.predict(image, ids[:30])
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 6\)"):
        predictor.predict(image, ids + 1)
    instances = predictor.predict(image, ids)
    assert all(inst["amodal"].shape == (40, 56) for inst in instances)
    assert predictor.compiled_shapes == [(1, 64, 64, 3)]

    # (The check comes before the model runs: these variables are never used.)
    plain = infer.Predictor.from_variables(load_tiny_config(), variables, canvas_sizes=(64,))
    with pytest.raises(ValueError, match="takes no semantic map"):
        plain.predict(image, ids)

    images, maps = tmp_path / "images", tmp_path / "maps"
    images.mkdir()
    maps.mkdir()
    for name in ("a", "b"):
        Image.fromarray(image).save(images / f"{name}.jpg")
    Image.fromarray(ids).save(maps / "a.png")  # b has no map
    with pytest.raises(ValueError, match="pass --semantic_dir"):
        infer.run(None, None, str(images), tmp_path / "out", predictor=predictor,
                  progress=False)
    summary = infer.run(None, None, str(images), tmp_path / "out", predictor=predictor,
                        semantic_dir=str(maps), progress=False, pictures=False)
    assert summary["num_images"] == 1 and summary["num_unreadable"] == 1
    assert "b.png: no semantic map" in summary["unreadable"][0]["error"]
    assert predictor.compiled_shapes == [(1, 64, 64, 3)]


def test_predictor_of_a_semantic_head_model_needs_no_map():
    """semantic_head: the model predicts its class map, so a plain image is enough."""
    import jax

    from sln_jax.models.sln import SLN
    from tiny_dataset import load_tiny_config

    config = load_tiny_config()
    config.model.semantic_channels = 6
    config.model.semantic_head = True
    variables = jax.jit(SLN(config.model).init)(jax.random.key(0),
                                                np.zeros((1, 64, 64, 3), np.float32))
    predictor = infer.Predictor.from_variables(config, variables, canvas_sizes=(64,),
                                               score_threshold=0.0)
    assert predictor.semantic_channels == 0
    instances = predictor.predict(_random_rgb(40, 56))
    assert instances and all(inst["amodal"].shape == (40, 56) for inst in instances)
