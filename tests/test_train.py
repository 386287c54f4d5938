"""Tests of sln_jax.train: schedule, optimizer, steps, sharding, checkpoints, NaN guard.

The generic machinery is checked on a small stand-in model (fast); the train step, the
device-count invariance, kill-and-resume, the NaN guard in the loop and the 2-process run use
the real SLN on configs/tiny_test.py with a tiny synthetic dataset.
"""

import copy
import functools
import os
import socket
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sln_jax import checkpoints, input_pipeline, train, train_state
from sln_jax.models import pretrained
from tiny_dataset import REPO, TINY_CONFIG, make_tiny_dataset, tiny_config
from toy_model import optim_config, toy_batch, toy_loss, toy_state
from xla_env import subprocess_env


# ------------------------------------------------------------------ steps, sharding


def test_toy_train_step_updates_params_and_reports_metrics():
    mesh = train_state.create_mesh()
    state = toy_state(mesh)
    before = jax.device_get(state.params)
    stats_before = jax.device_get(state.batch_stats)
    step = train.jit_train_step(toy_loss, mesh)
    state, metrics = step(state, train.shard_batch(toy_batch(1, 2), mesh))
    metrics = jax.device_get(metrics)
    assert int(state.step) == 1
    assert set(metrics) == {"mse", "loss/total", "grad_norm", "finite"}
    assert np.isfinite(metrics["loss/total"]) and metrics["finite"] == 1.0
    after = jax.device_get(state.params)
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before, after)
    assert all(jax.tree.leaves(changed))
    # Frozen statistics are never touched by the update.
    same = jax.tree.map(np.array_equal, stats_before, jax.device_get(state.batch_stats))
    assert jax.tree.leaves(stats_before) and all(jax.tree.leaves(same))


def test_sampling_key_depends_on_the_step():
    mesh = train_state.create_mesh()
    step = train.jit_train_step(lambda out: (jnp.mean(out["pred"]), {}), mesh)
    batch = train.shard_batch(toy_batch(1, 2), mesh)
    state = toy_state(mesh)
    # Same params, different step -> different sampling noise -> different loss.
    _, m0 = step(toy_state(mesh), batch)
    _, m1 = step(state.replace(step=jnp.ones((), jnp.int32)), batch)
    assert float(m0["loss/total"]) != float(m1["loss/total"])


def test_shard_batch_rejects_a_missing_device_axis():
    mesh = train_state.create_mesh()
    with pytest.raises(ValueError, match="batch\\['image'\\]"):
        train.shard_batch({"image": np.zeros((4, 8, 8, 3), np.float32)}, mesh)


def test_batch_dims_require_divisible_batch():
    mesh = train_state.create_mesh()
    assert train._batch_dims(4, mesh, "train.batch_size") == (1, 4)


def test_nan_guard_raises_with_step_and_last_checkpoint(tmp_path):
    manager = checkpoints.create_checkpoint_manager(str(tmp_path), ml_collections.ConfigDict(dict(every_steps=1, keep=1)))
    bad = {"finite": np.float32(0.0), "loss/total": np.float32(np.nan), "grad_norm": np.float32(1.0)}
    with pytest.raises(train.NonFiniteLossError, match="non-finite loss at step 7.*last checkpoint: none"):
        train._check_finite(bad, 7, manager)
    train._check_finite({"finite": np.float32(1.0)}, 8, manager)


def test_train_step_flags_nan_loss():
    mesh = train_state.create_mesh()
    step = train.jit_train_step(lambda out: (jnp.log(-jnp.abs(out["pred"]).sum() - 1.0), {}), mesh)
    _, metrics = step(toy_state(mesh), train.shard_batch(toy_batch(1, 2), mesh))
    assert float(metrics["finite"]) == 0.0


def test_trainer_rejects_model_and_data_that_disagree(records):
    config = tiny_config(records)
    config.model.num_layers = 6  # a reference: data.num_layers follows ...
    assert config.data.num_layers == 6
    with pytest.raises(ValueError, match="records have num_layers = 3 but the config says 6"):
        train.Trainer(config).train("unused")
    plain = ml_collections.ConfigDict(tiny_config(records).to_dict())  # no references
    plain.model.num_layers = 6
    with pytest.raises(ValueError, match="config.model.num_layers = 6 but config.data"):
        train.Trainer(plain)


def test_trainer_rejects_a_bad_decoding_field_before_training(records):
    """A decoding field is read only at evaluation: checked when the Trainer is built."""
    config = tiny_config(records)
    config.model.occlusion = "pixels"
    with pytest.raises(ValueError, match="config.model.occlusion must be one of"):
        train.Trainer(config)


# --------------------------------------------------------- the real SLN, tiny config


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return make_tiny_dataset(str(tmp_path_factory.mktemp("tiny_data")))


@pytest.fixture(scope="module")
def trainer(records):
    """One Trainer for the module: its steps compile once and serve every test below."""
    return train.Trainer(tiny_config(records))


def first_train_batch(config, devices: int = 1) -> dict[str, np.ndarray]:
    per_device = int(config.train.batch_size) // devices
    batches = input_pipeline.create_dataset(
        config.data, "train", batch_dims=(devices, per_device), train=True, seed=int(config.seed)
    )
    return next(batches)


def changed_arrays(before, after) -> dict[str, bool]:
    leaves = jax.tree_util.tree_leaves_with_path(before)
    return {
        jax.tree_util.keystr(path): not np.array_equal(a, b)
        for (path, a), b in zip(leaves, jax.tree.leaves(after))
    }


def test_progress_line_has_rate_and_eta():
    line = train._progress_line(25, 100, {"train/loss/total": 1.5}, steps_per_sec=2.5)
    assert line.startswith("step 25/100 (25%) 2.5 steps/s ETA 30 s | ")
    assert "total=1.5" in line
    assert "ETA" not in train._progress_line(1, 100, {"train/lr": 0.1})
    assert train.format_duration(185) == "3 min 05 s"
    assert train.format_duration(2 * 3600 + 7 * 60) == "2 h 07 min"


def test_evaluation_shows_progress(trainer, capsys):
    trainer.evaluate_state(trainer.initial_state(pretrained_backbone=False))
    assert "evaluate val:" in capsys.readouterr().err


def test_evaluate_logs_metrics_and_pictures_to_tensorboard(trainer, tmp_path):
    import glob

    import tensorflow as tf

    state = trainer.initial_state(pretrained_backbone=False)
    trainer.evaluate(str(tmp_path), state)
    tags = {}
    for path in glob.glob(str(tmp_path / "events.out.tfevents*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags[value.tag] = value
    assert "val/amodal/AP" in tags
    pictures = sorted(tag for tag in tags if tag.startswith("val/picture_"))
    assert pictures == ["val/picture_00"]  # tiny config: eval.num_pictures = 1
    assert os.path.exists(tmp_path / "pictures" / "val_00.png")


def test_one_train_step_on_tiny_config(trainer):
    state = trainer.initial_state()
    before = jax.device_get(state.params)
    stats_before = jax.device_get(state.batch_stats)
    batch = first_train_batch(trainer.config)
    state, metrics = trainer.train_step(state, batch)
    metrics = jax.device_get(metrics)
    assert int(state.step) == 1
    expected = {f"loss/{t}" for t in ("rpn_cls", "rpn_box", "box_cls", "box_reg", "layers", "amodal", "glm",
                                      "order")}
    assert expected | {"loss/total", "grad_norm", "finite"} == set(metrics)
    assert all(np.isfinite(v) for v in metrics.values()) and metrics["finite"] == 1.0
    weights = trainer.config.loss
    total = sum(float(weights[name.split("/")[1]]) * metrics[name] for name in expected)
    np.testing.assert_allclose(metrics["loss/total"], total, rtol=1e-5)
    # Every sub-network learns from the first step ...
    changed = changed_arrays(before, jax.device_get(state.params))
    for module in before:
        assert any(v for k, v in changed.items() if k.startswith(f"['{module}']")), module
    # ... and every array by the second (residual branches sit behind zero-initialised
    # norm scales, which get their gradient first).
    state, _ = trainer.train_step(state, batch)
    unchanged = [k for k, v in changed_arrays(before, jax.device_get(state.params)).items() if not v]
    assert not unchanged
    same = jax.tree.map(np.array_equal, stats_before, jax.device_get(state.batch_stats))
    assert all(jax.tree.leaves(same))


TWO_DEVICE_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, jax
    sys.path[:0] = [{repo!r}, {tests!r}]
    from sln_jax import train
    from tiny_dataset import tiny_config
    assert jax.device_count() == 2, jax.devices()
    trainer = train.Trainer(tiny_config({records!r}))
    with np.load({batch!r}) as data:
        batch = {{k: data[k].reshape((2, 1) + data[k].shape[2:]) for k in data.files}}
    state, metrics = trainer.train_step(trainer.initial_state(), batch)
    leaves = jax.tree.leaves(jax.device_get(state.params)) + [np.asarray(metrics["loss/total"])]
    np.savez({out!r}, *leaves)
    """
)


@pytest.mark.slow
def test_two_devices_equal_one_device(trainer, records, tmp_path):
    batch = first_train_batch(trainer.config)
    np.savez(tmp_path / "batch.npz", **batch)
    state, metrics = trainer.train_step(trainer.initial_state(), batch)
    one = jax.tree.leaves(jax.device_get(state.params)) + [np.asarray(metrics["loss/total"])]
    script = TWO_DEVICE_SCRIPT.format(
        repo=REPO,
        tests=os.path.join(REPO, "tests"),
        records=records,
        batch=str(tmp_path / "batch.npz"),
        out=str(tmp_path / "two.npz"),
    )
    env = subprocess_env(device_count=2)
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=900)
    with np.load(tmp_path / "two.npz") as data:
        two = [data[f"arr_{i}"] for i in range(len(data.files))]
    assert len(one) == len(two)
    for a, b in zip(one, two):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted_run(trainer, tmp_path):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    final = jax.device_get(trainer.train(straight))
    stopped = trainer.train(resumed, stop_at_step=3)
    assert int(stopped.step) == 3
    assert checkpoints.load_checkpoint(resumed)["step"] == 3
    # A resume checks the config against the checkpoint's before any work.
    other = copy.deepcopy(trainer.config)
    other.model.glm_dim = 16
    with pytest.raises(ValueError, match="model.glm_dim: checkpoint 8, config 16"):
        train.Trainer(other).train(resumed)
    # A restart: everything comes back from the checkpoint and the step-derived data stream.
    again = jax.device_get(trainer.train(resumed))
    assert int(again.step) == int(final.step) == trainer.num_steps
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(again)):
        np.testing.assert_array_equal(a, b)
    assert sorted(os.listdir(os.path.join(straight, "checkpoints"))) == ["2", "4"]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(straight))


def poisoned(create_dataset, bad_step: int):
    """create_dataset whose batch for step ``bad_step`` (1-based) has NaN images."""

    def wrapped(*args, start_step=0, **kwargs):
        for step, batch in enumerate(create_dataset(*args, start_step=start_step, **kwargs), start_step + 1):
            if step == bad_step:
                batch = dict(batch, image=np.full_like(batch["image"], np.nan))
            yield batch

    return wrapped


@pytest.mark.slow
@pytest.mark.parametrize("log_every", [1, 100])
def test_nan_loss_stops_the_run_without_checkpointing_it(trainer, tmp_path, monkeypatch, log_every):
    monkeypatch.setattr(input_pipeline, "create_dataset", poisoned(input_pipeline.create_dataset, 3))
    nan_trainer = copy.copy(trainer)  # shares the compiled steps
    nan_trainer.config = copy.deepcopy(trainer.config)
    nan_trainer.config.train.log_every = log_every  # 100: caught by the one-step-late check
    with pytest.raises(train.NonFiniteLossError, match="non-finite loss at step 3 .*last checkpoint: step 2"):
        nan_trainer.train(str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]


DISTRIBUTED_COMMAND = [
    sys.executable, "-m", "sln_jax.main", "--config", TINY_CONFIG, "--mode", "train",
    "--config.train.num_steps=1", "--num_processes=2",
]


@pytest.mark.slow
def test_two_process_distributed_run_completes_a_step(records, tmp_path):
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    workdir = str(tmp_path / "workdir")
    env = dict(subprocess_env(), PYTHONPATH=REPO)
    processes = [
        subprocess.Popen(
            DISTRIBUTED_COMMAND
            + [f"--workdir={workdir}", f"--config.data.dir={records}",
               f"--coordinator_address=localhost:{port}", f"--process_id={i}"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=1200)[0] for p in processes]
    for i, (p, out) in enumerate(zip(processes, outputs)):
        assert p.returncode == 0, f"process {i} failed:\n{out[-3000:]}"
    assert "process 0/2, 1 local / 2 global devices" in outputs[0]
    assert "step 1/1" in outputs[0]
    assert checkpoints.load_checkpoint(workdir)["step"] == 1


# ------------------------------------------------------------- pretrained backbone


class BackboneDetector(nn.Module):
    """A ResNet under 'backbone' plus a head, as in SLN's variable tree."""

    @nn.compact
    def __call__(self, images, gt=None, train=False):
        from sln_jax.models.backbone import ResNet

        features = ResNet("resnet_tiny", "frozen_bn", 8, name="backbone")(images)
        last = features[-1] if isinstance(features, (list, tuple)) else list(features.values())[-1]
        return {"scores": nn.Dense(1, name="head")(last.mean(axis=(1, 2)))[:, 0]}


def test_load_pretrained_backbone_replaces_backbone_only(tmp_path):
    from test_pretrained import torchvision_state_dict

    mesh = train_state.create_mesh()
    tx, _ = train_state.create_optimizer(optim_config(), 20)
    state = train_state.create_train_state(BackboneDetector(), tx, 0, (1, 32, 32, 3), mesh)
    weights = torchvision_state_dict("basic", (1, 1, 1, 1), width=8, seed=5)
    np.savez(tmp_path / "r.npz", **weights)
    loaded = train_state.load_pretrained_backbone(state, str(tmp_path / "r.npz"), mesh)
    kernel = loaded.params["backbone"]["conv1"]["kernel"]
    assert kernel.sharding.is_fully_replicated
    np.testing.assert_array_equal(kernel, weights["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(loaded.batch_stats["backbone"]["bn1"]["bn"]["var"],
                                  weights["bn1.running_var"])
    np.testing.assert_array_equal(loaded.params["head"]["kernel"], state.params["head"]["kernel"])
    assert int(loaded.step) == 0
    with pytest.raises(ValueError, match=r"missing\.npz"):
        train_state.load_pretrained_backbone(state, str(tmp_path / "missing.npz"), mesh)


def test_trainer_starts_from_the_configured_backbone_but_not_on_resume(records, tmp_path,
                                                                       monkeypatch):
    from test_pretrained import torchvision_state_dict

    config = tiny_config(records)
    config.model.norm = "frozen_bn"
    weights = torchvision_state_dict("basic", (1, 1, 1, 1), width=config.model.backbone_width)
    np.savez(tmp_path / "tiny.npz", **weights)
    config.model.pretrained_backbone = str(tmp_path / "tiny.npz")
    trainer = train.Trainer(config)
    # The file fits SLN's own variable tree (shapes only: no compilation needed).
    size = config.data.image_size
    abstract = jax.eval_shape(functools.partial(trainer.model.init, train=False),
                              jax.random.key(0), jnp.zeros((1, size, size, 3)), None)
    loaded = pretrained.load_torchvision_resnet(config.model.pretrained_backbone, abstract)
    np.testing.assert_array_equal(loaded["params"]["backbone"]["conv1"]["kernel"],
                                  weights["conv1.weight"].transpose(2, 3, 1, 0))
    # initial_state loads it at a fresh start only.
    calls = []
    monkeypatch.setattr(train, "create_train_state", lambda *args: "state")
    monkeypatch.setattr(train, "load_pretrained_backbone",
                        lambda state, path, mesh: calls.append(path) or "loaded")
    assert trainer.initial_state() == "loaded" and calls == [str(tmp_path / "tiny.npz")]
    assert trainer.initial_state(pretrained_backbone=False) == "state" and len(calls) == 1
