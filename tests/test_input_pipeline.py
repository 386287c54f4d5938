"""Input pipeline: shapes and dtypes, values against the records, flip consistency,
determinism, resume at a step, evaluation padding, host sharding, metadata checks."""

import itertools
import json
import os

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from amodal_files import layered_scene, write_d2sa
from data_prep import convert
from sln_jax import canvas, input_pipeline, records

K, P, S, M = 3, 10, 32, 3
SIZES = [(48, 64), (40, 30), (48, 64), (36, 36), (48, 64), (20, 50)]


def _scene(index, h, w):
    scene = layered_scene(height=h, width=w, seed=index, count=[2, 4, 0, 5, 1, 3][index])
    return scene


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    scenes = [_scene(i, h, w) for i, (h, w) in enumerate(SIZES)]
    out = str(root / "records")
    for split, shards in (("train", 2), ("val", 3)):
        path, images = write_d2sa(str(root / "d2sa"), scenes if split == "train" else scenes[:5],
                                  split=split)
        convert.convert("d2sa", path, images, out, split=split, num_shards=shards, workers=1,
                        num_layers=K, mask_target_size=P, progress=False)
    return out


def _config(data_dir, **overrides):
    values = dict(dir=data_dir, image_size=S, max_instances=M, mask_target_size=P,
                  num_layers=K, num_classes=3, train_split="train", eval_split="val",
                  shuffle_buffer=8, flip=True)
    values.update(overrides)
    return ml_collections.ConfigDict(values)


def _records(data_dir, split="train"):
    with open(os.path.join(data_dir, "metadata.json")) as f:
        files = json.load(f)["splits"][split]["files"]
    ds = tf.data.TFRecordDataset([os.path.join(data_dir, n) for n in files])
    return {r["image_id"]: r for r in (records.parse(x.numpy(), P) for x in ds)}


def _images(batch):
    """Flatten [D, B, ...] to a list of per-image dicts."""
    flat = {k: v.reshape((-1,) + v.shape[2:]) for k, v in batch.items()}
    return [{k: v[i] for k, v in flat.items()} for i in range(flat["image"].shape[0])]


def _take(iterator, count):
    return list(itertools.islice(iterator, count))


EXPECTED = {
    "image": (np.float32, (S, S, 3)), "image_id": (np.int32, ()),
    "image_size": (np.int32, (2,)), "orig_size": (np.int32, (2,)), "scale": (np.float32, ()),
    "boxes": (np.float32, (M, 4)), "classes": (np.int32, (M,)), "valid": (np.bool_, (M,)),
    "order": (np.int32, (M,)), "occlusion": (np.float32, (M,)),
    "layers": (np.int8, (M, P, P)), "semdist": (np.float32, (M, P, P)),
    "global_layers": (np.int8, (S, S)), "image_valid": (np.bool_, ()),
}


@pytest.mark.parametrize("train", [True, False])
def test_keys_dtypes_shapes(data_dir, train):
    it = input_pipeline.create_dataset(_config(data_dir), "train", batch_dims=(2, 2),
                                       train=train, seed=0)
    batch = next(iter(it))
    assert set(batch) == set(EXPECTED)
    for key, (dtype, shape) in EXPECTED.items():
        assert batch[key].dtype == dtype, key
        assert batch[key].shape == (2, 2) + shape, key


def _check_against_record(out, rec):
    h, w = rec["height"], rec["width"]
    scale = S / max(h, w)
    nh, nw = round(h * scale), round(w * scale)
    assert out["image_size"].tolist() == [nh, nw]
    assert out["orig_size"].tolist() == [h, w]
    assert out["scale"] == pytest.approx(scale)
    pixels = tf.io.decode_png(rec["image"], channels=3)
    resized = tf.image.resize(pixels, [nh, nw], antialias=True).numpy()
    norm = (resized / 255.0 - canvas.IMAGENET_MEAN) / canvas.IMAGENET_STD
    np.testing.assert_allclose(out["image"][:nh, :nw], norm, atol=1e-5)
    assert not out["image"][nh:].any() and not out["image"][:, nw:].any()
    gl = tf.image.resize(rec["global_layers"][:, :, None], [nh, nw], method="nearest")
    np.testing.assert_array_equal(out["global_layers"][:nh, :nw], gl.numpy()[:, :, 0])
    assert not out["global_layers"][nh:].any() and not out["global_layers"][:, nw:].any()
    n = len(rec["classes"])
    kept = np.sort(np.argsort(-rec["area"], kind="stable")[:M])
    count = len(kept)
    assert out["valid"].tolist() == [True] * count + [False] * (M - count)
    np.testing.assert_allclose(out["boxes"][:count],
                               rec["boxes"][kept] * [nh / h, nw / w, nh / h, nw / w],
                               rtol=1e-6)
    np.testing.assert_array_equal(out["classes"][:count], rec["classes"][kept])
    np.testing.assert_array_equal(out["order"][:count], rec["order"][kept])
    np.testing.assert_array_equal(out["occlusion"][:count], rec["occlusion"][kept])
    np.testing.assert_array_equal(out["layers"][:count],
                                  rec["layer_crops"][kept].astype(np.int8) - 1)
    np.testing.assert_allclose(out["semdist"][:count],
                               rec["semdist_crops"][kept].astype(np.float64) * (K + 1) / 255.0,
                               rtol=1e-6)
    # Padding instances.
    assert (out["classes"][count:] == 0).all() and not out["boxes"][count:].any()
    assert (out["order"][count:] == input_pipeline.PADDING_ORDER).all()
    assert (out["layers"][count:] == -1).all() and not out["semdist"][count:].any()
    return n


def test_values_match_records_and_largest_instances_are_kept(data_dir):
    recs = _records(data_dir)
    it = input_pipeline.create_dataset(_config(data_dir, flip=False), "train",
                                       batch_dims=(1, 3), train=True, seed=3)
    seen = [img for batch in _take(it, 2) for img in _images(batch)]
    # One epoch (6 images, 2 steps of 3) visits every image once.
    assert sorted(int(img["image_id"]) for img in seen) == sorted(recs)
    counts = [_check_against_record(img, recs[int(img["image_id"])]) for img in seen]
    assert max(counts) > M  # the selection of the largest instances was exercised


def _mirror(img):
    nw = int(img["image_size"][1])
    out = dict(img)
    out["image"] = img["image"].copy()
    out["image"][:, :nw] = img["image"][:, :nw][:, ::-1]
    out["global_layers"] = img["global_layers"].copy()
    out["global_layers"][:, :nw] = img["global_layers"][:, :nw][:, ::-1]
    boxes = img["boxes"].copy()
    valid = img["valid"]
    boxes[valid, 1], boxes[valid, 3] = nw - img["boxes"][valid, 3], nw - img["boxes"][valid, 1]
    out["boxes"] = boxes
    out["layers"] = img["layers"][:, :, ::-1]
    out["semdist"] = img["semdist"][:, :, ::-1]
    return out


def test_flip_is_consistent(data_dir):
    plain = input_pipeline.create_dataset(_config(data_dir, flip=False), "train",
                                          batch_dims=(1, 3), train=True, seed=5)
    flipped = input_pipeline.create_dataset(_config(data_dir, flip=True), "train",
                                            batch_dims=(1, 3), train=True, seed=5)
    kinds = []
    for a, b in zip(_take(plain, 6), _take(flipped, 6)):
        for x, y in zip(_images(a), _images(b)):
            same = all(np.array_equal(x[k], y[k]) for k in x)
            if not same:
                mirrored = _mirror(x)
                for key in x:
                    np.testing.assert_allclose(mirrored[key], y[key], atol=1e-5, err_msg=key)
            kinds.append(same)
    assert any(kinds) and not all(kinds)


def test_deterministic_for_a_seed(data_dir):
    def ids(seed):
        it = input_pipeline.create_dataset(_config(data_dir), "train", batch_dims=(1, 2),
                                           train=True, seed=seed)
        batches = _take(it, 6)
        return batches, [b["image_id"].ravel().tolist() for b in batches]

    first, first_ids = ids(1)
    second, second_ids = ids(1)
    assert first_ids == second_ids
    for a, b in zip(first, second):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert ids(2)[1] != first_ids
    # Epochs are reshuffled: epoch 0 and epoch 1 (3 steps each) differ in order.
    flat = list(itertools.chain(*first_ids))
    assert sorted(flat[:6]) == sorted(flat[6:]) and flat[:6] != flat[6:]


@pytest.mark.parametrize("start_step", [1, 4, 7])
def test_resume_sees_the_same_batches(data_dir, start_step):
    config = _config(data_dir)
    full = _take(input_pipeline.create_dataset(config, "train", batch_dims=(1, 4), train=True,
                                               seed=7), start_step + 2)
    resumed = _take(input_pipeline.create_dataset(config, "train", batch_dims=(1, 4),
                                                  train=True, seed=7, start_step=start_step), 2)
    for a, b in zip(full[start_step:], resumed):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_eval_pads_the_last_batch(data_dir):
    recs = _records(data_dir, "val")
    batches = list(input_pipeline.create_dataset(_config(data_dir), "val", batch_dims=(2, 1),
                                                 train=False, seed=0))
    assert len(batches) == 3
    images = [img for b in batches for img in _images(b)]
    assert [bool(img["image_valid"]) for img in images] == [True] * 5 + [False]
    with open(os.path.join(data_dir, "metadata.json")) as f:
        files = json.load(f)["splits"]["val"]["files"]
    ds = tf.data.TFRecordDataset([os.path.join(data_dir, n) for n in files])
    in_file_order = [records.parse(x.numpy(), P)["image_id"] for x in ds]
    assert [int(img["image_id"]) for img in images[:5]] == in_file_order
    for img in images[:5]:
        _check_against_record(img, recs[int(img["image_id"])])  # no flip in evaluation
    pad = images[5]
    assert not pad["valid"].any() and not pad["image"].any()
    assert (pad["layers"] == -1).all() and (pad["order"] == input_pipeline.PADDING_ORDER).all()


def test_host_sharding(data_dir, monkeypatch):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    # val: 3 files of 2, 1, 2 examples; host 1 reads file 1 (1 example), host 0 reads 4.
    batches = list(input_pipeline.create_dataset(_config(data_dir), "val", batch_dims=(1, 2),
                                                 train=False, seed=0))
    valid = [b["image_valid"].ravel().tolist() for b in batches]
    assert valid == [[True, False], [False, False]]  # lockstep with host 0's two batches
    train = next(input_pipeline.create_dataset(_config(data_dir), "train", batch_dims=(1, 3),
                                               train=True, seed=0))
    assert sorted(train["image_id"].ravel().tolist()) == [4, 5, 6]  # the second train file
    monkeypatch.setattr(jax, "process_count", lambda: 4)
    with pytest.raises(ValueError, match="has 2 shard files for 4 hosts"):
        input_pipeline.create_dataset(_config(data_dir), "train", batch_dims=(1, 3),
                                      train=True, seed=0)


def test_read_metadata_checks_the_config(data_dir, tmp_path):
    meta = records.read_metadata(data_dir, _config(data_dir))
    assert (meta["num_layers"], meta["mask_target_size"], meta["num_classes"]) == (K, P, 3)
    with pytest.raises(ValueError, match="the records have num_layers = 3 but the config says 4"):
        records.read_metadata(data_dir, _config(data_dir, num_layers=4))
    with pytest.raises(ValueError, match="num_classes = 3 but the config says 80"):
        records.read_metadata(data_dir, _config(data_dir, num_classes=80))
    with pytest.raises(FileNotFoundError, match="convert the dataset first"):
        records.read_metadata(str(tmp_path))
    with pytest.raises(ValueError, match="no split 'test'"):
        input_pipeline.create_dataset(_config(data_dir), "test", batch_dims=(1, 1),
                                      train=False, seed=0)


def _resample_into(box, new_box, crop, outside):
    """The crop cell (of ``box``) holding each cell centre of ``new_box``; ``outside`` if none."""
    p = crop.shape[0]
    centres = (np.arange(p) + 0.5) / p

    def cells(a0, a1, b0, b1):
        u = (b0 + centres * (b1 - b0) - a0) / (a1 - a0)
        return np.clip(np.floor(u * p), 0, p - 1).astype(int), (u >= 0) & (u < 1)

    rows, row_in = cells(box[0], box[2], new_box[0], new_box[2])
    cols, col_in = cells(box[1], box[3], new_box[1], new_box[3])
    out = crop[rows[:, None], cols[None, :]]
    return np.where(row_in[:, None] & col_in[None, :], out, outside)


def test_box_jitter_moves_boxes_and_keeps_the_crops_on_the_object(data_dir):
    jitter = 1.0 / 15  # the reference's U(-1, 1) x size / 15
    plain = _take(input_pipeline.create_dataset(_config(data_dir), "train", batch_dims=(1, 3),
                                                train=True, seed=4), 4)
    jittered = _take(input_pipeline.create_dataset(
        _config(data_dir, box_jitter=jitter), "train", batch_dims=(1, 3), train=True, seed=4), 4)
    again = _take(input_pipeline.create_dataset(
        _config(data_dir, box_jitter=jitter), "train", batch_dims=(1, 3), train=True, seed=4), 4)
    moved = 0
    for a, b, c in zip(plain, jittered, again):
        for key in b:
            np.testing.assert_array_equal(b[key], c[key], err_msg=key)  # deterministic
        for x, y in zip(_images(a), _images(b)):
            for key in ("image", "global_layers", "classes", "valid", "order", "image_id"):
                np.testing.assert_array_equal(x[key], y[key], err_msg=key)  # same flips
            nh, nw = x["image_size"]
            for i in np.flatnonzero(x["valid"]):
                box, new = x["boxes"][i], y["boxes"][i]
                size = np.array([box[2] - box[0], box[3] - box[1]] * 2)
                assert np.all(np.abs(new - box) <= jitter * size + 1e-4)
                assert np.all(new >= 0) and new[2] <= nh + 1e-4 and new[3] <= nw + 1e-4
                assert new[2] > new[0] and new[3] > new[1]
                moved += int(not np.allclose(new, box))
                np.testing.assert_array_equal(
                    y["layers"][i], _resample_into(box, new, x["layers"][i], -1))
                np.testing.assert_array_equal(
                    y["semdist"][i], _resample_into(box, new, x["semdist"][i], 0.0))
            pad = ~x["valid"]
            np.testing.assert_array_equal(y["boxes"][pad], 0.0)
            assert (y["layers"][pad] == -1).all()
    assert moved >= 10


def test_box_jitter_must_not_be_negative(data_dir):
    with pytest.raises(ValueError, match="box_jitter"):
        input_pipeline.create_dataset(_config(data_dir, box_jitter=-0.1), "train",
                                      batch_dims=(1, 1), train=True, seed=0)


# ---------------------------------------------------------------------- semantic maps

S_SEM = 5
# Class c is painted in PALETTE[c], so the image itself shows where each class is.
PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]],
                   np.uint8)


@pytest.fixture(scope="module")
def semantic_data_dir(tmp_path_factory):
    """The scenes of ``data_dir``, each image painted from a blocky class map (8-px blocks)
    that is also its semantic map."""
    from PIL import Image

    root = tmp_path_factory.mktemp("semantic")
    scenes = [_scene(i, h, w) for i, (h, w) in enumerate(SIZES)]
    out, maps = str(root / "records"), str(root / "maps")
    os.makedirs(maps)
    for split in ("train", "val"):
        path, images = write_d2sa(str(root / "d2sa"), scenes, split=split)
        for index, (h, w) in enumerate(SIZES):
            blocks = np.random.default_rng(index).integers(0, S_SEM, (h // 8 + 1, w // 8 + 1))
            ids = np.kron(blocks, np.ones((8, 8), np.int64))[:h, :w].astype(np.uint8)
            name = f"{index + 1:06d}.png"
            Image.fromarray(PALETTE[ids]).save(os.path.join(images, name))
            Image.fromarray(ids).save(os.path.join(maps, name))
        convert.convert("d2sa", path, images, out, split=split, num_shards=2, workers=1,
                        num_layers=K, mask_target_size=P, progress=False, semantic_dir=maps,
                        semantic_channels=S_SEM)
    return out


def _expected_semantic(ids, size, flip):
    """The NumPy twin of the pipeline's semantic map: resize as the image, flip, pad."""
    nh, nw = size
    fitted = canvas.resize_nearest(ids, nh, nw)
    canvas_ids = np.full((S, S), -1, np.int64)
    canvas_ids[:nh, :nw] = fitted[:, ::-1] if flip else fitted
    return canvas.class_fractions(canvas_ids, S_SEM)


def test_semantic_map_is_resized_and_flipped_with_the_image(semantic_data_dir):
    recs = _records(semantic_data_dir)
    config = _config(semantic_data_dir, semantic_channels=S_SEM)
    plain = input_pipeline.create_dataset(_config(semantic_data_dir, flip=False,
                                                  semantic_channels=S_SEM),
                                          "train", batch_dims=(1, 3), train=True, seed=5)
    flipped = input_pipeline.create_dataset(config, "train", batch_dims=(1, 3), train=True,
                                            seed=5)
    flips, checked = [], 0
    for a, b in zip(_take(plain, 4), _take(flipped, 4)):
        for x, y in zip(_images(a), _images(b)):
            assert y["semantic"].shape == (S // 4, S // 4, S_SEM)
            assert y["semantic"].dtype == np.float32
            flip = not np.array_equal(x["image"], y["image"])
            flips.append(flip)
            ids = recs[int(y["image_id"])]["semantic"]
            np.testing.assert_array_equal(
                y["semantic"], _expected_semantic(ids, y["image_size"], flip))
            # Where a cell is one class, the image shows that class's colour there.
            rgb = (y["image"] * canvas.IMAGENET_STD + canvas.IMAGENET_MEAN) * 255
            cells = np.argwhere(y["semantic"].max(-1) == 1.0)
            centres = rgb[cells[:, 0] * 4 + 2, cells[:, 1] * 4 + 2]
            nearest = np.argmin(((centres[:, None] - PALETTE[None]) ** 2).sum(-1), axis=1)
            np.testing.assert_array_equal(
                nearest, y["semantic"][cells[:, 0], cells[:, 1]].argmax(-1))
            checked += len(cells)
    assert any(flips) and not all(flips) and checked > 100


def test_semantic_map_in_evaluation_and_its_padding(semantic_data_dir):
    recs = _records(semantic_data_dir, "val")
    batches = list(input_pipeline.create_dataset(
        _config(semantic_data_dir, semantic_channels=S_SEM), "val", batch_dims=(2, 2),
        train=False, seed=0))
    images = [img for b in batches for img in _images(b)]
    assert [bool(img["image_valid"]) for img in images] == [True] * 6 + [False] * 2
    for img in images[:6]:
        np.testing.assert_array_equal(
            img["semantic"], _expected_semantic(recs[int(img["image_id"])]["semantic"],
                                                img["image_size"], False))
    assert not images[-1]["semantic"].any()
    # Without semantic_channels the maps are not read.
    plain = next(iter(input_pipeline.create_dataset(_config(semantic_data_dir), "val",
                                                    batch_dims=(1, 1), train=False, seed=0)))
    assert "semantic" not in plain


def test_semantic_config_without_maps_fails_at_start(data_dir):
    with pytest.raises(ValueError, match="hold no semantic maps but the config says "
                                         "semantic_channels = 5"):
        input_pipeline.create_dataset(_config(data_dir, semantic_channels=5), "train",
                                      batch_dims=(1, 1), train=True, seed=0)
    with pytest.raises(ValueError, match="the TFDS datasets hold no semantic maps"):
        input_pipeline.create_dataset(_config(data_dir, semantic_channels=5, source="tfds"),
                                      "train", batch_dims=(1, 1), train=True, seed=0)


@pytest.mark.parametrize("nearest", [False, True])
def test_to_content_skips_the_identity_resize_and_matches_it(nearest):
    """At the content size the resize is skipped (the synthetic set's images): the values
    come back unchanged (image as float32, id maps in their dtype), equal to what the
    resize itself gives up to float rounding, and mirrored when flipped; another size
    still resizes."""
    rng = np.random.default_rng(0)
    if nearest:
        values = tf.constant(rng.integers(0, 5, (12, 9, 1)).astype(np.int8))
    else:
        values = tf.constant(rng.integers(0, 256, (12, 9, 3)).astype(np.uint8))
    method = "nearest" if nearest else "bilinear"
    for flip in (False, True):
        out = input_pipeline._to_content(values, tf.constant(flip), 12, 9,
                                         nearest=nearest).numpy()
        expected = values.numpy() if nearest else values.numpy().astype(np.float32)
        np.testing.assert_array_equal(out, expected[:, ::-1] if flip else expected)
        assert out.dtype == expected.dtype
        resized = tf.image.resize(values, [12, 9], method=method, antialias=not nearest)
        resized = resized.numpy()
        np.testing.assert_allclose(out, resized[:, ::-1] if flip else resized, atol=1e-3)
    smaller = input_pipeline._to_content(values, tf.constant(False), 6, 5, nearest=nearest)
    np.testing.assert_array_equal(
        smaller.numpy(), tf.image.resize(values, [6, 5], method=method,
                                         antialias=not nearest).numpy())
