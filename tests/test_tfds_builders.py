"""TFDS builders (data_prep.tfds_builders): registration, the same examples as the
converted records for every dataset format, bad input, and the input pipeline's 'tfds'
source giving the records' batches."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

import data_prep.tfds_builders as tfds_builders
import readme_commands
from amodal_files import cocoa_samples, edit_json, layered_scene, write_d2sa
from data_prep import convert
from data_prep.scene import DataError
from sln_jax import input_pipeline
from tfds_helpers import (K, P, TINY_SYNTHETIC, assert_same_as_records, leftovers,
                          tiny_config, tiny_synthetic_config)
from tiny_dataset import load_tiny_config

KINS = os.path.join(os.path.dirname(__file__), "fixtures", "kins")


def _convert(dataset, annotations, images, out, split, shards=1):
    convert.convert(dataset, annotations, images, out, split=split, num_shards=shards,
                    num_layers=K, mask_target_size=P, progress=False)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """sln_synthetic built here, and the same drawn files converted to records
    (train in one shard, val in two)."""
    root = tmp_path_factory.mktemp("tfds_synthetic")
    data_dir = str(root / "tfds")
    builder = tfds.builder("sln_synthetic", data_dir=data_dir, config=tiny_synthetic_config())
    builder.download_and_prepare()
    config = builder.builder_config
    raw = os.path.join(data_dir, "downloads", "sln_synthetic",
                       f"{config.name}-{config.fingerprint()}")
    out = str(root / "records")
    for split, shards in (("train", 1), ("val", 2)):
        _convert("synthetic", os.path.join(raw, "annotations", f"{split}.json"),
                 os.path.join(raw, "images", split), out, split, shards)
    return builder, out


def test_registered_with_versions_and_manual_instructions():
    registered = set(tfds.list_builders())
    for name in tfds_builders.NAMES:
        assert name in registered
        cls = tfds.builder_cls(name)
        assert str(cls.VERSION) in cls.RELEASE_NOTES
    for cls in (tfds_builders.CocoaAmodal, tfds_builders.CocoaClsAmodal,
                tfds_builders.D2saAmodal, tfds_builders.KinsAmodal):
        for annotations, images in cls.SPLITS.values():
            assert annotations in cls.MANUAL_DOWNLOAD_INSTRUCTIONS
            assert images.split(os.sep)[0] in cls.MANUAL_DOWNLOAD_INSTRUCTIONS
    assert tfds_builders.SlnSynthetic.MANUAL_DOWNLOAD_INSTRUCTIONS is None


def test_synthetic_holds_the_records_examples(synthetic):
    builder, records_dir = synthetic
    assert assert_same_as_records(builder, "train", records_dir) == 8
    assert assert_same_as_records(builder, "val", records_dir) == 4
    assert builder.info.metadata["warnings"] == {"train": {}, "val": {}}
    # What training and inference read from a data directory's metadata.json.
    metadata = input_pipeline.read_metadata(os.fspath(builder.data_dir))
    assert metadata["classes"]["1"] == "ellipse"
    assert metadata["splits"]["val"]["annotations"].endswith(os.path.join("annotations",
                                                                          "val.json"))
    # Found again by name from the data directory.
    again = tfds.builder(f"sln_synthetic/{builder.builder_config.name}",
                         data_dir=builder.data_dir_root)
    assert again.is_prepared()


def _tfds_cli() -> list[str]:
    """TFDS's own command line: the ``tfds`` script of this interpreter's environment, or
    the module it runs."""
    script = os.path.join(os.path.dirname(sys.executable), "tfds")
    if os.path.isfile(script):
        return [script]
    return [sys.executable, "-m", "tensorflow_datasets.scripts.cli.main"]


def test_tfds_build_command_of_the_readme(synthetic, tmp_path):
    """The README's ``tfds build`` command, run as written from the repository root (only
    --data_dir moved to a temporary directory): TFDS's CLI starts (it needs mlcroissant),
    finds the builders through --imports, builds the tiny config given as JSON, and the
    result loads by name with the records' examples."""
    (words,) = readme_commands.find("tfds build")
    env = dict(os.environ)
    while re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    assert words[:2] == ["tfds", "build"]
    flags = readme_commands.flag_values(words)
    config = json.loads(flags["config"])
    assert config == TINY_SYNTHETIC  # the size the other tests build
    data_dir = str(tmp_path / "tfds")
    words[words.index(flags["data_dir"])] = data_dir
    done = subprocess.run(_tfds_cli() + words[1:], cwd=readme_commands.REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    builder = tfds.builder(f"sln_synthetic/{config['name']}", data_dir=data_dir)
    assert builder.is_prepared()
    assert {split: info.num_examples for split, info in builder.info.splits.items()} == {
        "train": 8, "val": 4}
    _, records_dir = synthetic  # the same config drawn and converted in this process
    assert assert_same_as_records(builder, "train", records_dir) == 8
    assert assert_same_as_records(builder, "val", records_dir) == 4


def _manual_d2sa(root):
    """D2SA file names in a manual directory (val = train's annotations; D2SA keeps every
    split's images in one directory)."""
    scenes = [layered_scene(seed=i, count=c) for i, c in enumerate([3, 0, 4])]
    path, images = write_d2sa(str(root / "raw"), scenes, split="train")
    manual = root / "manual"
    manual.mkdir()
    shutil.copy(path, manual / "D2S_amodal_training_rot0.json")
    shutil.copy(path, manual / "D2S_amodal_validation.json")
    shutil.copytree(images, manual / "images")
    return str(manual)


def _builder(name, root, manual):
    download_config = tfds.download.DownloadConfig(manual_dir=manual)
    builder = tfds.builder(name, data_dir=str(root / "tfds"), config=tiny_config())
    return builder, download_config


def test_d2sa(tmp_path):
    manual = _manual_d2sa(tmp_path)
    builder, download_config = _builder("d2sa_amodal", tmp_path, manual)
    builder.download_and_prepare(download_config=download_config)
    out = str(tmp_path / "records")
    _convert("d2sa", os.path.join(manual, "D2S_amodal_training_rot0.json"),
             os.path.join(manual, "images"), out, "train")
    assert assert_same_as_records(builder, "train", out) == 3
    assert assert_same_as_records(builder, "val", out, "train") == 3
    assert builder.info.metadata["classes"] == {"1": "apple", "2": "pear", "3": "plum"}


def test_kins(tmp_path):
    manual = _manual_kins(tmp_path)
    builder, download_config = _builder("kins_amodal", tmp_path, str(manual))
    builder.download_and_prepare(download_config=download_config)
    out = str(tmp_path / "records")
    _convert("kins", str(manual / "update_train_2020.json"),
             str(manual / "training" / "image_2"), out, "train")
    assert assert_same_as_records(builder, "train", out) == 3
    assert sorted(builder.info.splits) == ["test", "train"]


def test_cocoa_without_the_optional_test_split(tmp_path):
    path, images, _ = cocoa_samples(str(tmp_path))
    manual = tmp_path / "manual"
    manual.mkdir()
    for name in ("COCO_amodal_train2014.json", "COCO_amodal_val2014.json"):
        shutil.copy(path, manual / name)
    for name in ("train2014", "val2014"):
        os.symlink(images, manual / name)
    builder, download_config = _builder("cocoa_amodal", tmp_path, str(manual))
    builder.download_and_prepare(download_config=download_config)
    out = str(tmp_path / "records")
    _convert("cocoa", path, images, out, "val")
    assert assert_same_as_records(builder, "val", out) == 5
    assert sorted(builder.info.splits) == ["train", "val"]


def test_missing_manual_file_is_named(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    builder, download_config = _builder("cocoa_cls_amodal", tmp_path, str(manual))
    # An empty manual directory: TFDS prints the instructions, which name the files.
    with pytest.raises(AssertionError, match="COCO_amodal_val2014_with_classes.json"):
        builder.download_and_prepare(download_config=download_config)
    (manual / "COCO_amodal_val2014_with_classes.json").write_text("{}")
    with pytest.raises(DataError, match="COCO_amodal_train2014_with_classes.json: not found"):
        builder.download_and_prepare(download_config=download_config)
    assert leftovers(str(tmp_path / "tfds"), "cocoa_cls_amodal") == []


@pytest.mark.parametrize("damage", ["image", "annotation"])
def test_bad_input_names_file_and_id_and_leaves_no_version(tmp_path, damage):
    manual = _manual_d2sa(tmp_path)
    annotations = os.path.join(manual, "D2S_amodal_validation.json")
    if damage == "image":
        image = os.path.join(manual, "images", "000003.png")
        with open(image, "rb") as f:
            data = f.read()
        with open(image, "wb") as f:
            f.write(data[: len(data) // 2])
        expected = r"000003\.png \(image 3\): unreadable or truncated image"
    else:
        def shrink(data):  # annotation 2's mask claims another image size
            data["annotations"][1]["segmentation"]["size"] = [10, 10]
        edit_json(annotations, shrink)
        expected = r"D2S_amodal_validation\.json.*annotation 2"
    builder, download_config = _builder("d2sa_amodal", tmp_path, manual)
    with pytest.raises(DataError, match=expected) as info:
        builder.download_and_prepare(download_config=download_config)
    assert "\n" not in str(info.value)
    assert not builder.is_prepared()
    assert leftovers(str(tmp_path / "tfds"), "d2sa_amodal") == []


def _pipeline_config(synthetic, source, **overrides):
    builder, records_dir = synthetic
    config = load_tiny_config().data
    config.source = source
    config.dir = records_dir if source == "records" else os.fspath(builder.data_dir)
    config.update(overrides)
    return config


def _batches(config, split, train, count=None, batch_dims=(1, 2)):
    iterator = input_pipeline.create_dataset(config, split, batch_dims=batch_dims,
                                             train=train, seed=3)
    return [b for _, b in zip(range(count or 10**6), iterator)]


@pytest.mark.parametrize("train", [False, True])
def test_pipeline_tfds_source_gives_the_records_batches(synthetic, train):
    split, count = ("train", 7) if train else ("val", None)
    got = _batches(_pipeline_config(synthetic, "tfds"), split, train, count)
    expected = _batches(_pipeline_config(synthetic, "records"), split, train, count)
    assert len(got) == len(expected) == (count or 2)
    for a, b in zip(got, expected):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
            assert a[key].dtype == b[key].dtype, key


def test_pipeline_tfds_source_checks_the_config(synthetic):
    with pytest.raises(ValueError, match="num_layers = 3 but the config says 4"):
        _batches(_pipeline_config(synthetic, "tfds", num_layers=4), "val", False)
    with pytest.raises(ValueError, match="use 'records' or 'tfds'"):
        _batches(_pipeline_config(synthetic, "parquet"), "val", False)


def _manual_kins(root):
    manual = root / "manual"
    for split, kitti in (("train", "training"), ("test", "testing")):
        shutil.copytree(os.path.join(KINS, "images"), manual / kitti / "image_2")
        shutil.copy(os.path.join(KINS, "update_train_2020.json"),
                    manual / f"update_{split}_2020.json")
    return manual


def test_cli_builds_and_names_bad_input_in_one_line(tmp_path, capsys):
    from data_prep.tfds_builders import __main__ as cli

    manual = _manual_kins(tmp_path)
    data_dir = str(tmp_path / "tfds")
    args = ["--dataset", "kins_amodal", "--config", "k4_p32", "--data_dir", data_dir,
            "--manual_dir", str(manual)]
    assert cli.main(args) == 0
    assert "kins_amodal/k4_p32 1.0.0: train 3, test 3" in capsys.readouterr().out
    shutil.rmtree(data_dir)
    image = manual / "testing" / "image_2" / "000002.png"
    image.write_bytes(image.read_bytes()[:100])
    assert cli.main(args) == 1
    errors = [line for line in capsys.readouterr().err.splitlines()
              if line.startswith("error:")]
    assert len(errors) == 1
    assert errors[0].startswith(f"error: {image} (image 2): unreadable or truncated image")
    assert leftovers(data_dir, "kins_amodal") == []
