"""sln_jax.checkpoints: save / restore / load, the saved config, the compatibility check."""

import jax
import ml_collections
import numpy as np
import pytest

from sln_jax import checkpoints, train, train_state
from toy_model import toy_batch, toy_loss, toy_state


def test_checkpoint_round_trip_and_keep_last(tmp_path):
    mesh = train_state.create_mesh()
    step = train.jit_train_step(toy_loss, mesh)
    config = ml_collections.ConfigDict({"checkpoint": {"every_steps": 2, "keep": 2}, "seed": 0})
    manager = checkpoints.create_checkpoint_manager(str(tmp_path), config.checkpoint)
    state = toy_state(mesh)
    batch = train.shard_batch(toy_batch(1, 2), mesh)
    for _ in range(6):
        state, _ = step(state, batch)
        checkpoints.save_checkpoint(manager, state, config)
    manager.wait_until_finished()
    assert manager.all_steps() == [5, 6]  # keep = 2
    restored = checkpoints.restore_checkpoint(manager, toy_state(mesh, seed=1))
    expected = jax.device_get(state)
    got = jax.device_get(restored)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
        np.testing.assert_array_equal(a, b)
    assert restored.params["Conv_0"]["kernel"].sharding.is_fully_replicated
    loaded = checkpoints.load_checkpoint(str(tmp_path))
    assert loaded["step"] == 6 and loaded["config"] == config.to_dict()
    np.testing.assert_array_equal(loaded["params"]["Dense_0"]["kernel"], expected.params["Dense_0"]["kernel"])
    manager.close()


def test_restore_without_checkpoint_keeps_state(tmp_path):
    mesh = train_state.create_mesh()
    manager = checkpoints.create_checkpoint_manager(str(tmp_path), ml_collections.ConfigDict(dict(every_steps=1, keep=1)))
    state = toy_state(mesh)
    assert checkpoints.restore_checkpoint(manager, state) is state
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoints.load_checkpoint(str(tmp_path / "empty"))


def test_check_compatible_names_model_fields_and_frees_inference_ones():
    config = ml_collections.ConfigDict({"model": {"num_layers": 4, "anchor_sizes": (8, 16),
                                                  "score_threshold": 0.5}})
    saved = {"model": {"num_layers": 4, "anchor_sizes": [8, 16], "score_threshold": 0.1}}
    checkpoints.check_compatible(config, saved, "ckpt")
    saved["model"]["num_layers"] = 3
    with pytest.raises(ValueError, match="ckpt: .*model.num_layers: checkpoint 3, config 4"):
        checkpoints.check_compatible(config, saved, "ckpt")


def test_saved_config_is_the_workdirs_config(tmp_path):
    mesh = train_state.create_mesh()
    config = ml_collections.ConfigDict({"checkpoint": {"every_steps": 1, "keep": 1}, "seed": 3})
    manager = checkpoints.create_checkpoint_manager(str(tmp_path), config.checkpoint)
    checkpoints.save_checkpoint(manager, toy_state(mesh), config)
    manager.wait_until_finished()
    assert checkpoints.saved_config(manager) == config.to_dict()
    manager.close()
    # Without WORKDIR/config.json the checkpoint's config serves; with it, the file.
    assert checkpoints.load_config(tmp_path).to_dict() == config.to_dict()
    assert checkpoints.load_config(tmp_path / "checkpoints").seed == 3
    (tmp_path / "config.json").write_text('{"seed": 5}')
    assert checkpoints.load_config(tmp_path).seed == 5
    with pytest.raises(FileNotFoundError, match="training workdir"):
        checkpoints.load_config(tmp_path / "nothing")


def test_a_config_saved_before_a_field_existed_reads_as_it_was_trained(tmp_path):
    """Workdirs trained before ``model.instance_context`` existed had no such part: their
    saved config reads it as off, and a run with it on is told the checkpoint differs."""
    (tmp_path / "config.json").write_text('{"model": {"num_layers": 4}, "loss": {}}')
    config = checkpoints.load_config(tmp_path)
    assert config.model.instance_context is False
    assert config.loss.layers_form == "softmax"
    assert config.model.semantic_channels == 0
    current = ml_collections.ConfigDict({"model": {"num_layers": 4, "instance_context": True}})
    with pytest.raises(ValueError, match="model.instance_context: checkpoint False, config True"):
        checkpoints.check_compatible(current, {"model": {"num_layers": 4}}, "old")
    # A saved value is kept, never overwritten.
    upgraded = checkpoints.upgrade_config({"model": {"instance_context": True}})
    assert upgraded["model"]["instance_context"] is True
