"""sln_jax.demo: the main job's data step and a whole run with semantic maps."""

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from sln_jax import checkpoints, demo, records
from tiny_dataset import load_tiny_config


def _config(semantic: bool) -> ml_collections.ConfigDict:
    """The tiny test config with a small ``synthetic`` section (64 px, 6 + 3 images)."""
    config = load_tiny_config()
    config.synthetic = ml_collections.ConfigDict(dict(
        seed=0, image_size=64, min_objects=2, max_objects=4, num_train=6, num_val=3,
        num_shards=2, workers=1, semantic=semantic))
    config.train.num_steps = 2
    config.eval.num_pictures = 0
    return config


def test_semantic_maps_and_semantic_channels_go_together():
    config = _config(semantic=True)
    with pytest.raises(ValueError, match=r"semantic = True but config.model.semantic_channels "
                                         r"= 0: .* num_classes \+ 1 = 6 classes"):
        demo.semantic_channels(config)
    config.model.semantic_channels = 6  # a reference: config.data's value changes too
    assert config.data.semantic_channels == 6 and demo.semantic_channels(config) == 6
    config.synthetic.semantic = False
    with pytest.raises(ValueError, match="semantic = False but"):
        demo.semantic_channels(config)


@pytest.mark.slow
def test_main_job_with_the_generators_semantic_maps(tmp_path):
    """synthetic.semantic -> maps generated and converted -> trained with the semantic
    input -> evaluated (the eval pass feeds the maps too)."""
    config = _config(semantic=True)
    config.model.semantic_channels = 6
    metrics = demo.run(config, str(tmp_path))
    records_dir = tmp_path / "data" / "records"
    metadata = records.read_metadata(records_dir, config.data)
    assert metadata["semantic_channels"] == 6
    pixels = metadata["splits"]["train"]["statistics"]["semantic_class_pixels"]
    assert len(pixels) == 6 and sum(pixels) == 6 * 64 * 64 and min(pixels[:1]) > 0
    assert checkpoints.load_checkpoint(str(tmp_path))["step"] == 2
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model"]["semantic_channels"] == saved["data"]["semantic_channels"] == 6
    assert set(metrics) >= {"amodal/AP", "order/accuracy"}
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert all(np.isfinite(v) for v in metrics.values())
    assert sorted(os.listdir(tmp_path / "data" / "synthetic" / "semantic")) == ["train", "val"]


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_failing_data_step_is_one_clear_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "sln_jax.demo", f"--workdir={tmp_path / 'w'}",
         "--config.synthetic.num_train=-3"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "--num_train must be >= 0, got -3" in done.stderr
    assert "sln_jax.demo: error: python -m data_prep.synthetic failed" in done.stderr


def test_synthetic_configs_min_hidden_fraction_is_the_generators_minimum():
    """The main job calls hidden parts under the generator's minimum occluded fraction
    visible; the two must move together."""
    import importlib.util

    from data_prep import synthetic

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "configs", "synthetic.py")
    spec = importlib.util.spec_from_file_location("synthetic_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    assert config.model.min_hidden_fraction == synthetic.SceneConfig().min_occluded_fraction
    assert config.model.min_hidden_fraction > 0
