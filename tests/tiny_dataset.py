"""A tiny synthetic dataset converted to TFRecords, and the tiny test config pointing at it.

Shared by tests/test_train.py and tests/test_main.py: 8 train and 4 val images of 64 px in
2 shards per split (enough for 2 processes), made with the real data_prep code; optionally
with the generator's exact semantic maps (``semantic=True``, S_sem = num_classes + 1).
"""

from __future__ import annotations

import importlib.util
import os

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
