"""The README's commands against the code: every flag they pass exists, every config field
they override exists, the data-preparation commands run as written (at tiny sizes, on
files named as the README names them) and produce what the training commands after them
read, and the commands reading a trained workdir name one an earlier command trains.

Training itself is not run here (tests/test_main.py and tests/test_train.py run it at
tiny sizes); the README's ``tfds build`` command runs in tests/test_tfds_builders.py and
its Beam command's options in tests/test_tfds_beam.py.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shutil

import ml_collections
import pytest

import readme_commands
from amodal_files import cocoa_samples, layered_scene, write_d2sa
from readme_commands import REPO, flag_values, program
from sln_jax import records

# Sizes of the README's commands that a test shrinks (values it passes instead).
TINY = {"workers": "1", "num_shards": "2", "num": "2"}
# Programs run here, in README order (module -> how it is run).
DATA_PREP = ("data_prep.convert", "data_prep.class_agnostic", "data_prep.preview",
             "data_prep.tfds_builders")
# Commands that read a trained workdir, and the flag naming it.
READS_WORKDIR = {"sln_jax.infer": "checkpoint", "benchmarks/check_readme.py": "workdir",
                 "benchmarks/diagnose.py": "workdir", "tensorboard": "logdir"}
TRAINS = ("sln_jax.main", "sln_jax.demo")


def _source(name: str) -> str | None:
    """The file defining a program's flags: a module of this repository, or a script."""
    if name.endswith(".py"):
        path = os.path.join(REPO, name)
    else:
        base = os.path.join(REPO, *name.split("."))
        path = base + ".py" if os.path.isfile(base + ".py") else os.path.join(base,
                                                                             "__main__.py")
    return path if os.path.isfile(path) else None


_DEFINED = (re.compile(r"DEFINE_\w+(?:\(\s*|,\s*)\"(\w+)\""),  # absl, and convert's define()
            re.compile(r"add_argument\(\s*\"--(\w+)\""))  # argparse


def _defined_flags(path: str) -> set[str]:
    with open(path) as f:
        text = f.read()
    return {name for pattern in _DEFINED for name in pattern.findall(text)}


def _repo_commands():
    return [(program(words), words) for words in readme_commands.commands()
            if program(words) and _source(program(words))]


def test_the_readme_shows_the_commands_checked_here():
    names = {name for name, _ in _repo_commands()}
    assert set(DATA_PREP) | {"sln_jax.main", "sln_jax.demo", "sln_jax.infer",
                             "sln_jax.evaluate"} <= names
    assert len(readme_commands.find("tfds build")) == 1


def test_every_flag_of_a_readme_command_is_defined():
    missing = []
    for name, words in _repo_commands():
        defined = _defined_flags(_source(name))
        for flag in flag_values(words):
            if flag.startswith("config.") or flag in ("help", "helpfull"):
                continue
            if flag not in defined and not (flag.startswith("no") and flag[2:] in defined):
                missing.append(f"{' '.join(words[:3])}: --{flag}")
    assert missing == []


def _load_config(path: str) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location(
        "readme_config_" + os.path.basename(path)[:-3], os.path.join(REPO, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _config_of(name: str, words: list[str]) -> ml_collections.ConfigDict | None:
    """The config a main / demo / infer command runs with (None: the one a workdir saved)."""
    path = flag_values(words).get("config")
    if path is None and name == "sln_jax.demo":
        path = os.path.join("configs", "synthetic.py")
    return _load_config(path) if path else None


def _override(config: ml_collections.ConfigDict, dotted: str, value: str | None) -> None:
    """``--config.a.b=value`` on ``config``; KeyError naming the field if it does not exist."""
    *parents, leaf = dotted.split(".")
    node = config
    for key in parents:
        node = node[key]
    if leaf not in node:
        raise KeyError(dotted)
    if value is not None and isinstance(node[leaf], str):
        node[leaf] = value


def test_config_overrides_name_existing_fields():
    missing = []
    for name, words in _repo_commands():
        overrides = {k[len("config."):]: v for k, v in flag_values(words).items()
                     if k.startswith("config.")}
        if not overrides:
            continue
        config = _config_of(name, words)
        assert config is not None, f"{' '.join(words)}: --config.* without --config"
        for dotted, value in overrides.items():
            try:
                _override(config, dotted, value)
            except KeyError:
                missing.append(f"{' '.join(words[:3])}: --config.{dotted}")
    # The prose's overrides (`--config.multihost=True`, ...) apply to every config.
    with open(readme_commands.README) as f:
        prose = f.read()
    base = _load_config(os.path.join("configs", "base.py"))
    # ... except the generated dataset's section, which only the main job's config has.
    synthetic = _load_config(os.path.join("configs", "synthetic.py"))
    for dotted in sorted(set(re.findall(r"--config\.([\w.]*\w)", prose))):
        try:
            _override(synthetic if dotted.startswith("synthetic.") else base, dotted, None)
        except KeyError:
            missing.append(f"README prose: --config.{dotted}")
    assert missing == []


def test_trained_workdirs_are_made_by_an_earlier_command():
    trained, problems = set(), []
    for words in readme_commands.commands():
        name = program(words)
        values = flag_values(words)
        if name in TRAINS and "mode" not in values:
            trained.add(os.path.normpath(values["workdir"]))
        elif name in READS_WORKDIR:
            workdir = os.path.normpath(values[READS_WORKDIR[name]])
            if workdir not in trained:
                problems.append(f"{' '.join(words)}: no earlier command trains {workdir}")
    assert problems == []


def _inputs(cwd: str, home: str) -> None:
    """Files named as the README names them: COCOA's (5 sample images) and D2SA's (3 images
    of 48 x 64) in the working directory, D2SA's again as ~/d2sa (the TFDS manual download)."""
    scratch = os.path.join(cwd, "scratch")
    os.makedirs(scratch)
    path, images, _ = cocoa_samples(scratch)
    for split in ("train", "val"):
        shutil.copy(path, os.path.join(cwd, f"COCO_amodal_{split}2014.json"))
        os.symlink(images, os.path.join(cwd, f"{split}2014"))
    scenes = [layered_scene(seed=i, count=c) for i, c in enumerate([3, 0, 4])]
    path, images = write_d2sa(os.path.join(scratch, "d2sa"), scenes)
    for where in (cwd, os.path.join(home, "d2sa")):
        os.makedirs(where, exist_ok=True)
        for name in ("D2S_amodal_training_rot0.json", "D2S_amodal_validation.json"):
            shutil.copy(path, os.path.join(where, name))
        shutil.copytree(images, os.path.join(where, "images"))


def _as_run_here(words: list[str], home: str) -> list[str]:
    """A README command's arguments with ~ / $HOME at ``home`` and the sizes of ``TINY``."""
    args = [re.sub(r"^~(?=/|$)", home, w).replace("$HOME", home) for w in words[3:]]
    for i, word in enumerate(args[:-1]):
        if word.startswith("--") and word[2:] in TINY:
            args[i + 1] = TINY[word[2:]]
    return args


def _check_training_input(words: list[str], home: str) -> list[str]:
    """What ``sln_jax.main`` reads first: the data directory's metadata (K and P of the
    config, its train and eval splits) and the ground truth file, if one is named."""
    config = _config_of("sln_jax.main", words)
    for key, value in flag_values(words).items():
        if key.startswith("config.") and value is not None:
            _override(config, key[len("config."):], value.replace("$HOME", home))
    data, command = config.data, " ".join(words[:7])
    try:
        metadata = records.read_metadata(data.dir)
    except (FileNotFoundError, ValueError) as err:
        return [f"{command}: {err}"]
    problems = [f"{command}: {field} {metadata[field]} in {data.dir}, {data[field]} in the "
                "config" for field in ("num_layers", "mask_target_size")
                if int(metadata[field]) != int(data[field])]
    problems += [f"{command}: no split {split!r} in {data.dir}"
                 for split in (data.train_split, data.eval_split)
                 if split not in metadata["splits"]]
    if config.eval.gt_json and not os.path.isfile(config.eval.gt_json):
        problems.append(f"{command}: {config.eval.gt_json} not made by an earlier command")
    return problems


@pytest.mark.slow
def test_data_prep_commands_make_what_training_reads(tmp_path, monkeypatch, capsys):
    cwd, home = str(tmp_path / "work"), str(tmp_path / "home")
    _inputs(cwd, home)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", home)
    ran, problems = [], []
    for words in readme_commands.commands():
        name = program(words)
        if name in DATA_PREP:
            if "beam_pipeline_options" in flag_values(words):
                continue  # tests/test_tfds_beam.py
            module = importlib.import_module(name if name != "data_prep.tfds_builders"
                                             else name + ".__main__")
            status = module.main(_as_run_here(words, home))
            assert status == 0, f"{' '.join(words)}: {capsys.readouterr().err}"
            ran.append(name)
        elif name == "sln_jax.main" and "config" in flag_values(words):
            problems += _check_training_input(words, home)
    assert problems == []
    assert ran.count("data_prep.convert") >= 4 and "data_prep.preview" in ran
    # The preview command drew into the records directory it was given.
    (preview,) = readme_commands.find("data_prep.preview")
    pictures = os.listdir(os.path.join(flag_values(preview)["records"], "previews"))
    assert len(pictures) == int(TINY["num"]) and all(p.startswith("train_") for p in pictures)
    # The converted records are the configs' data directories.
    for config, split in (("cocoa", "val"), ("d2sa", "val")):
        directory = _load_config(os.path.join("configs", f"{config}.py")).data.dir
        with open(os.path.join(directory, records.METADATA)) as f:
            assert split in json.load(f)["splits"], directory
