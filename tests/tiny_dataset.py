"""A tiny synthetic dataset converted to TFRecords, the tiny test config pointing at it, and
one run of the command line on it.

Shared by tests/test_train.py and tests/test_main.py: 8 train and 4 val images of 64 px in
2 shards per split (enough for 2 processes), made with the real data_prep code; optionally
with the generator's exact semantic maps (``semantic=True``, S_sem = num_classes + 1).

``train_tiny_run`` is the session's trained workdir (the ``tiny_run`` fixture of
``tests/conftest.py``): ``python -m sln_jax.main`` trains the tiny config 2 steps and
evaluates it; test_main checks every output of that run, and the tests that need a trained
checkpoint (infer, diagnose) read it instead of training their own.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pathlib
import subprocess
import sys

import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(REPO, "configs", "tiny_test.py")


def load_tiny_config() -> ml_collections.ConfigDict:
    """``configs/tiny_test.py``'s ``get_config()``."""
    spec = importlib.util.spec_from_file_location("tiny_test_config", TINY_CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def make_tiny_dataset(root: str, num_train: int = 8, num_val: int = 4,
                      semantic: bool = False) -> str:
    """Generates and converts the dataset under ``root``; returns the records directory."""
    from data_prep import convert, synthetic

    config = load_tiny_config()
    raw = os.path.join(root, "raw")
    records = os.path.join(root, "records")
    scene = synthetic.SceneConfig(image_size=int(config.data.image_size), max_objects=4)
    for split, count in (("train", num_train), ("val", num_val)):
        synthetic.write_split(raw, split, count, seed=0, config=scene, progress=False,
                              semantic=semantic)
        semantic_args = dict(semantic_dir=os.path.join(raw, "semantic", split),
                             semantic_channels=synthetic.SEMANTIC_CHANNELS) if semantic else {}
        convert.convert(
            "synthetic",
            os.path.join(raw, "annotations", f"{split}.json"),
            os.path.join(raw, "images", split),
            records,
            split=split,
            num_shards=2,
            num_layers=int(config.data.num_layers),
            mask_target_size=int(config.data.mask_target_size),
            progress=False,
            **semantic_args,
        )
    return records


def tiny_config(records: str) -> ml_collections.ConfigDict:
    """The tiny test config reading ``records``."""
    config = load_tiny_config()
    config.data.dir = records
    return config


def _main_command(args, config: str | None) -> tuple[list[str], dict]:
    from xla_env import subprocess_env

    config_args = ["--config", config] if config else []
    return ([sys.executable, "-m", "sln_jax.main", *config_args, *args],
            dict(cwd=REPO, env=dict(subprocess_env(), PYTHONPATH=REPO), text=True))


def run_main(*args: str, timeout: int = 1500, config: str | None = TINY_CONFIG
             ) -> subprocess.CompletedProcess:
    """``python -m sln_jax.main [--config CONFIG] ARGS`` in the repo, with the test XLA flags."""
    command, kwargs = _main_command(args, config)
    return subprocess.run(command, capture_output=True, timeout=timeout, **kwargs)


def start_main(*args: str, config: str | None = TINY_CONFIG) -> subprocess.Popen:
    """``run_main`` started in the background (read its output with ``communicate``)."""
    command, kwargs = _main_command(args, config)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


# The overrides of the session's run (test_main checks that each reached it).
TINY_RUN_STEPS = 2
TINY_RUN_LEARNING_RATE = 0.001
TINY_RUN_PICTURES = 2
TINY_RUN_NUM_VAL = 3


@dataclasses.dataclass(frozen=True)
class TinyRun:
    """The tiny config trained and evaluated once by the CLI (``train_tiny_run``).

    Attributes:
      root: the dataset's root: ``raw/images/{train,val}/``, ``raw/annotations/*.json`` and
        ``records/``.
      records: the records directory (``config.data.dir``).
      workdir: the run's workdir (checkpoints, config.json, metrics, pictures, events).
      result: the finished ``python -m sln_jax.main`` process (its stderr holds the log).
      num_val: val images in the dataset.
    """

    root: pathlib.Path
    records: str
    workdir: pathlib.Path
    result: subprocess.CompletedProcess
    num_val: int = TINY_RUN_NUM_VAL

    @property
    def raw(self) -> pathlib.Path:
        return self.root / "raw"

    def config(self) -> ml_collections.ConfigDict:
        """The tiny test config reading the run's records, with the run's overrides."""
        config = tiny_config(self.records)
        config.train.num_steps = TINY_RUN_STEPS
        config.optim.learning_rate = TINY_RUN_LEARNING_RATE
        config.eval.num_pictures = TINY_RUN_PICTURES
        return config


def train_tiny_run(directory: pathlib.Path) -> TinyRun:
    """Makes the tiny dataset (8 train, 3 val images) under ``directory/data`` and runs
    ``python -m sln_jax.main`` (mode train_and_evaluate) on it into ``directory/workdir``."""
    root = directory / "data"
    records = make_tiny_dataset(str(root), num_val=TINY_RUN_NUM_VAL)
    workdir = directory / "workdir"
    result = run_main(
        f"--workdir={workdir}",
        f"--config.data.dir={records}",
        f"--config.train.num_steps={TINY_RUN_STEPS}",
        f"--config.optim.learning_rate={TINY_RUN_LEARNING_RATE}",
        f"--config.eval.num_pictures={TINY_RUN_PICTURES}",
    )
    return TinyRun(root, records, workdir, result)
