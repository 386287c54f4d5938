"""convert CLI: round trip, metadata, resume after a crash, overwrite, bad input."""

import collections
import json
import os

import numpy as np
import pytest
import tqdm

from amodal_files import assert_record_matches_scene, cocoa_samples, layered_scene, write_d2sa
from data_prep import convert, d2sa
from sln_jax import records
from data_prep.scene import load_scene
from data_prep.targets import build_targets

K, P = 3, 10


def _scenes():
    return [layered_scene(seed=s, count=(s % 4) + 1) for s in range(5)] + [
        layered_scene(seed=9, count=0)]


@pytest.fixture
def dataset(tmp_path):
    path, images = write_d2sa(str(tmp_path / "d2sa"), _scenes())
    return path, images, str(tmp_path / "out")


def _run(path, images, output, *extra):
    return convert.main(["--dataset", "d2sa", "--annotations", path, "--images", images,
                         "--output", output, "--num_layers", str(K), "--mask_target_size",
                         str(P), "--workers", "1", "--no_progress", *extra])


def _read_records(output, split="train", p=P):
    import tensorflow as tf

    with open(os.path.join(output, "metadata.json")) as f:
        files = json.load(f)["splits"][split]["files"]
    paths = [os.path.join(output, name) for name in files]
    return [records.parse(r.numpy(), p) for r in tf.data.TFRecordDataset(paths)]


def test_round_trip_and_metadata(dataset, capsys):
    path, images, output = dataset
    assert _run(path, images, output, "--num_shards", "2") == 0
    out = capsys.readouterr().out
    assert "train: 6 images, 11 instances" in out
    assert "warnings: image_without_instances=1\n" in out
    names = sorted(n for n in os.listdir(output) if n.startswith("train"))
    assert names == ["train.tfrecord-00000-of-00002", "train.tfrecord-00001-of-00002"]
    with open(os.path.join(output, "metadata.json")) as f:
        meta = json.load(f)
    assert (meta["num_layers"], meta["mask_target_size"], meta["num_classes"]) == (K, P, 3)
    assert meta["schema_version"] == records.SCHEMA_VERSION
    assert meta["classes"] == {"1": "apple", "2": "pear", "3": "plum"}
    assert meta["category_ids"] == {"1": 1, "2": 7, "3": 42}
    split = meta["splits"]["train"]
    assert split["files"] == names and split["examples_per_file"] == [3, 3]
    stats = split["statistics"]
    truth = _scenes()
    assert stats["images"] == 6 and stats["instances"] == 11
    occluded = sum(int((s["visible"] != s["amodal"]).any(axis=(1, 2)).sum()) for s in truth)
    assert stats["occluded_instances"] == occluded
    assert stats["occluded_fraction"] == pytest.approx(occluded / 11)
    # Only what happened is listed (no zero counts), and the CLI prints the same.
    assert stats["warnings"] == {"image_without_instances": 1}
    assert stats["conflicts"] == {"order": 0, "visible_layer": 0}
    assert sum(stats["global_layer_pixels"]) == 6 * 48 * 64

    data = d2sa.read(path, images)
    parsed = _read_records(output)
    assert [p["image_id"] for p in parsed] == [s.image_id for s in data.sources]
    layer_pixels, global_pixels = np.zeros(K, np.int64), np.zeros(K, np.int64)
    for source, rec in zip(data.sources, parsed):
        scene = load_scene(source, 3, collections.Counter())
        targets = build_targets(scene, K, P, collections.Counter())
        assert_record_matches_scene(rec, scene, source.image_path)
        np.testing.assert_array_equal(rec["layer_crops"], targets.layer_crops)
        np.testing.assert_array_equal(rec["global_layers"], targets.global_layers)
        layer_pixels += targets.layer_pixels
        global_pixels += np.bincount(rec["global_layers"].ravel(), minlength=K)
    assert stats["instance_layer_pixels"] == layer_pixels.tolist()
    assert stats["global_layer_pixels"] == global_pixels.tolist()


def test_resume_redoes_only_the_crashed_shard(dataset, monkeypatch):
    path, images, output = dataset
    assert _run(path, images, output, "--num_shards", "3") == 0
    shard = [os.path.join(output, convert.shard_name("train", i, 3)) for i in range(3)]
    before = [open(p, "rb").read() for p in shard]
    mtimes = [os.stat(p).st_mtime_ns for p in shard]
    # Simulated crash while writing shard 1: only its temporary file exists.
    os.replace(shard[1], shard[1] + convert.INCOMPLETE_SUFFIX)
    os.remove(os.path.join(output, convert.STATS_DIR, os.path.basename(shard[1]) + ".json"))
    os.remove(os.path.join(output, "metadata.json"))
    calls = []
    real = convert._convert_shard
    monkeypatch.setattr(convert, "_convert_shard", lambda job: calls.append(job[2]) or real(job))
    assert _run(path, images, output, "--num_shards", "3") == 0
    assert calls == [os.path.basename(shard[1])]
    assert [os.stat(p).st_mtime_ns for p in (shard[0], shard[2])] == [mtimes[0], mtimes[2]]
    assert [open(p, "rb").read() for p in shard] == before
    assert not any(n.endswith(convert.INCOMPLETE_SUFFIX) for n in os.listdir(output))
    with open(os.path.join(output, "metadata.json")) as f:
        assert json.load(f)["splits"]["train"]["statistics"]["instances"] == 11

    calls.clear()
    assert _run(path, images, output, "--num_shards", "3") == 0
    assert calls == []  # everything complete: nothing redone
    assert _run(path, images, output, "--num_shards", "3", "--overwrite") == 0
    assert len(calls) == 3


def test_other_settings_need_overwrite(dataset, capsys):
    path, images, output = dataset
    assert _run(path, images, output, "--num_shards", "2") == 0
    capsys.readouterr()
    assert convert.main(["--dataset", "d2sa", "--annotations", path, "--images", images,
                         "--output", output, "--num_layers", "5", "--mask_target_size",
                         str(P), "--workers", "1", "--no_progress", "--num_shards", "2"]) == 1
    assert "made with other settings or annotations; use --overwrite" in capsys.readouterr().err
    assert _run(path, images, output, "--num_shards", "3") == 1
    assert "another shard count" in capsys.readouterr().err
    assert _run(path, images, output, "--num_shards", "3", "--overwrite") == 0


def test_bad_image_leaves_no_partial_output(dataset, capsys):
    path, images, output = dataset
    with open(os.path.join(images, "000005.png"), "r+b") as f:
        f.truncate(60)
    assert _run(path, images, output, "--num_shards", "2") == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("error: ") and "000005.png (image 5): unreadable or truncated" in err
    left = sorted(os.listdir(output))
    # The first shard (images 1-3) completed; the failing one left nothing behind.
    assert left == [convert.STATS_DIR, "train.tfrecord-00000-of-00002"]


def test_missing_image_fails_before_writing(dataset, capsys):
    path, images, output = dataset
    os.remove(os.path.join(images, "000002.png"))
    assert _run(path, images, output) == 1
    err = capsys.readouterr().err
    assert f"{path}: image 2: image file" in err and "000002.png not found" in err
    assert not os.path.exists(output)


def test_grayscale_images_are_converted(tmp_path):
    path, images = write_d2sa(str(tmp_path / "d"), _scenes()[:2], image_mode="L")
    output = str(tmp_path / "out")
    assert _run(path, images, output) == 0
    with open(os.path.join(output, "metadata.json")) as f:
        stats = json.load(f)["splits"]["train"]["statistics"]
    assert stats["warnings"]["image_converted"] == 2
    rec = _read_records(output)[0]
    assert rec["format"] == "png"


def test_split_from_file_name_and_metadata_merge(tmp_path, capsys):
    path, images = write_d2sa(str(tmp_path / "d"), _scenes()[:2], split="val")
    output = str(tmp_path / "out")
    assert _run(path, images, output) == 0
    other = str(tmp_path / "d" / "other.json")
    os.replace(path, other)
    assert _run(other, images, output) == 1
    assert "cannot tell the split from the file name; pass --split" in capsys.readouterr().err
    assert _run(other, images, output, "--split", "test") == 0
    with open(os.path.join(output, "metadata.json")) as f:
        assert sorted(json.load(f)["splits"]) == ["test", "val"]
    # Another split with other settings would not fit the directory's metadata.
    assert _run(other, images, output, "--split", "extra", "--num_layers", "6") == 1
    assert "num_layers = 3 from an earlier conversion differs from 6" in (
        capsys.readouterr().err)
    assert not [n for n in os.listdir(output) if n.startswith("extra")]


def test_cocoa_samples(tmp_path):
    path, images, raw = cocoa_samples(str(tmp_path))
    output = str(tmp_path / "out")
    assert convert.main(["--dataset", "cocoa", "--annotations", path, "--images", images,
                         "--output", output, "--workers", "1", "--no_progress",
                         "--num_shards", "2"]) == 0
    with open(os.path.join(output, "metadata.json")) as f:
        meta = json.load(f)
    stats = meta["splits"]["val"]["statistics"]
    assert meta["classes"] == {"1": "object"} and meta["num_layers"] == 4
    assert stats["instances"] == 48 and stats["stuff_instances"] == 1
    assert stats["occluded_instances"] == sum(
        r["occlude_rate"] > 0 for entry in raw for r in entry["regions"]) == 24
    parsed = _read_records(output, "val", p=32)
    assert [p["format"] for p in parsed] == ["jpeg"] * 5
    assert [len(p["order"]) for p in parsed] == [2, 11, 19, 10, 6]
    assert parsed[0]["layer_crops"].shape == (2, 32, 32)


@pytest.mark.slow
def test_two_workers_write_the_same_shards(dataset, tmp_path, monkeypatch):
    path, images, output = dataset
    assert _run(path, images, output, "--num_shards", "3") == 0
    parallel = str(tmp_path / "parallel")
    updates = []

    class Bar:  # stands in for tqdm: the workers' batched progress reports add up
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n=1):
            updates.append(n)

    monkeypatch.setattr(tqdm, "tqdm", Bar)
    assert convert.main(["--dataset", "d2sa", "--annotations", path, "--images", images,
                         "--output", parallel, "--num_layers", str(K), "--mask_target_size",
                         str(P), "--workers", "2", "--num_shards", "3"]) == 0
    assert sum(updates) == 6
    for i in range(3):
        name = convert.shard_name("train", i, 3)
        with open(os.path.join(output, name), "rb") as a, \
                open(os.path.join(parallel, name), "rb") as b:
            assert a.read() == b.read()


def test_more_shards_than_images_warns_and_writes_one_shard_per_image(dataset, capsys):
    path, images, output = dataset
    old = os.umask(0o022)
    try:
        assert _run(path, images, output, "--num_shards", "64") == 0
    finally:
        os.umask(old)
    err = capsys.readouterr().err
    assert "warning: --num_shards 64 exceeds the 6 images of split 'train': writing 6" in err
    shards = [n for n in os.listdir(output) if n.startswith("train.tfrecord-")]
    assert len(shards) == 6
    # No lock file left; every output readable by others (0644 under umask 022).
    found = [os.path.join(d, n) for d, _, names in os.walk(output) for n in names]
    assert not [p for p in found if p.endswith(".lock")]
    assert {oct(os.stat(p).st_mode & 0o777) for p in found} == {oct(0o644)}


def test_wrong_dataset_names_the_reader_the_file_fits(dataset, capsys):
    path, images, output = dataset
    code = convert.main(["--dataset", "cocoa", "--annotations", path, "--images", images,
                         "--output", output, "--no_progress"])
    assert code == 1
    assert "the file looks like --dataset d2sa or synthetic or cocoa_cls, not cocoa" in (
        capsys.readouterr().err)


# ---------------------------------------------------------------------- semantic maps

S_SEM = 7


def _write_maps(path, images, directory, top=S_SEM):
    """A random class-id PNG per image of the annotation file; returns {image id: ids}."""
    from PIL import Image

    os.makedirs(directory, exist_ok=True)
    with open(path) as f:
        entries = json.load(f)["images"]
    maps = {}
    for entry in entries:
        ids = np.random.default_rng(entry["id"]).integers(
            0, top, (entry["height"], entry["width"])).astype(np.uint8)
        Image.fromarray(ids).save(os.path.join(directory, entry["file_name"]))
        maps[entry["id"]] = ids
    return maps


def test_semantic_maps_round_trip(dataset, tmp_path, capsys):
    path, images, output = dataset
    maps = _write_maps(path, images, str(tmp_path / "maps"))
    assert _run(path, images, output, "--num_shards", "2", "--semantic_dir",
                str(tmp_path / "maps"), "--semantic_channels", str(S_SEM)) == 0
    with open(os.path.join(output, "metadata.json")) as f:
        meta = json.load(f)
    assert meta["semantic_channels"] == S_SEM
    counts = sum(np.bincount(m.ravel(), minlength=S_SEM) for m in maps.values())
    assert meta["splits"]["train"]["statistics"]["semantic_class_pixels"] == counts.tolist()
    parsed = _read_records(output)
    assert len(parsed) == len(maps)
    for rec in parsed:
        np.testing.assert_array_equal(rec["semantic"], maps[rec["image_id"]])
    # Without the flags the records hold no map, and the metadata says so.
    plain = str(tmp_path / "plain")
    assert _run(path, images, plain) == 0
    with open(os.path.join(plain, "metadata.json")) as f:
        assert json.load(f)["semantic_channels"] == 0
    assert all(rec["semantic"] is None for rec in _read_records(plain))
    # Another split of the directory must have the same maps' classes.
    capsys.readouterr()
    assert _run(path, images, plain, "--split", "val", "--semantic_dir",
                str(tmp_path / "maps"), "--semantic_channels", str(S_SEM)) == 1
    assert "semantic_channels = 0 from an earlier conversion differs from 7" in (
        capsys.readouterr().err)


def _semantic_error(dataset, tmp_path, capsys, *flags):
    path, images, output = dataset
    code = _run(path, images, output, "--num_shards", "2", *flags)
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0 and err.startswith("error: "), err
    return err, output


def test_semantic_map_missing_fails_before_writing(dataset, tmp_path, capsys):
    path, images, _ = dataset
    maps = str(tmp_path / "maps")
    _write_maps(path, images, maps)
    os.remove(os.path.join(maps, "000004.png"))
    err, output = _semantic_error(dataset, tmp_path, capsys, "--semantic_dir", maps,
                                  "--semantic_channels", str(S_SEM))
    assert f"{os.path.join(maps, '000004.png')}: no semantic map for image id 4" in err
    assert not os.path.exists(output)


@pytest.mark.parametrize("problem", ["size", "value"])
def test_bad_semantic_map_names_the_file_and_leaves_no_partial_shard(dataset, tmp_path,
                                                                     capsys, problem):
    from PIL import Image

    path, images, _ = dataset
    maps = str(tmp_path / "maps")
    ids = _write_maps(path, images, maps)[5]
    bad = os.path.join(maps, "000005.png")
    if problem == "size":
        Image.fromarray(ids[:-1]).save(bad)
    else:
        ids[0, 0] = S_SEM
        Image.fromarray(ids).save(bad)
    err, output = _semantic_error(dataset, tmp_path, capsys, "--semantic_dir", maps,
                                  "--semantic_channels", str(S_SEM))
    h, w = ids.shape
    expected = (f"semantic map of {h - 1} x {w} pixels for an image of {h} x {w}"
                if problem == "size" else
                f"class id {S_SEM} outside [0, {S_SEM}), the semantic_channels classes")
    assert f"{bad}: {expected} (image id 5, " in err
    # The first shard (images 1-3) completed; the failing one left nothing behind.
    assert sorted(os.listdir(output)) == [convert.STATS_DIR, "train.tfrecord-00000-of-00002"]


def test_semantic_flags_go_together(dataset, tmp_path, capsys):
    err, output = _semantic_error(dataset, tmp_path, capsys, "--semantic_channels", "4")
    assert "--semantic_dir and --semantic_channels go together" in err
    os.makedirs(str(tmp_path / "maps"))
    err, _ = _semantic_error(dataset, tmp_path, capsys, "--semantic_dir",
                             str(tmp_path / "maps"), "--semantic_channels", "300")
    assert "--semantic_channels must be in 2..255" in err
    assert not os.path.exists(output)


def test_shards_of_an_earlier_version_resume(dataset):
    """Shard statistics written before the semantic settings existed still match."""
    path, images, output = dataset
    assert _run(path, images, output, "--num_shards", "2") == 0
    stats_path = os.path.join(output, convert.STATS_DIR,
                              convert.shard_name("train", 0, 2) + ".json")
    with open(stats_path) as f:
        stats = json.load(f)
    for key in ("semantic_channels", "semantic_dir"):
        del stats["settings"][key]
    with open(stats_path, "w") as f:
        json.dump(stats, f)
    assert _run(path, images, output, "--num_shards", "2") == 0
