"""Tests of sln_jax.train: schedule, optimizer, steps, sharding, checkpoints, NaN guard."""

import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sln_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def optim_config(**overrides) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(
        dict(
            name="sgd",
            learning_rate=0.1,
            momentum=0.9,
            b1=0.9,
            b2=0.999,
            weight_decay=1e-2,
            schedule="cosine",
            warmup_steps=4,
            warmup_factor=0.1,
            decay_at=(0.5, 0.75),
            decay_factor=0.1,
            clip_norm=5.0,
        )
    )
    config.update(overrides)
    return config


class ToyDetector(nn.Module):
    """A stand-in with SLN's calling convention and collections, for the generic machinery."""

    @nn.compact
    def __call__(self, images, gt=None, train=False):
        x = nn.Conv(4, (3, 3))(images)
        x = nn.BatchNorm(use_running_average=True)(x)
        y = nn.Dense(1)(nn.relu(x).mean(axis=(1, 2)))[:, 0]
        if not train:
            return {"scores": y}
        noise = jax.random.normal(self.make_rng("sampling"), y.shape)
        return {"pred": y + 0.1 * noise, "target": gt["target"]}


def toy_loss(outputs):
    mse = jnp.mean((outputs["pred"] - outputs["target"]) ** 2)
    return mse, {"mse": mse}


def toy_batch(devices: int, per_device: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(seed)
    return {
        "image": rng.randn(devices, per_device, 8, 8, 3).astype(np.float32),
        "target": rng.randn(devices, per_device).astype(np.float32),
    }


def toy_state(mesh, seed=0, optim=None):
    tx, _ = train.create_optimizer(optim or optim_config(), 20)
    init = {k: v[0] for k, v in toy_batch(1, 2).items()}
    return train.create_train_state(ToyDetector(), tx, seed, init, mesh)


# ---------------------------------------------------------------- schedule, optimizer


def test_cosine_schedule_values():
    schedule = train.create_learning_rate_schedule(optim_config(), 20)
    np.testing.assert_allclose(float(schedule(0)), 0.01, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(2)), 0.01 + 0.5 * 0.09, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(4)), 0.1, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(12)), 0.05, rtol=1e-5)  # half-way through cosine
    np.testing.assert_allclose(float(schedule(20)), 0.0, atol=1e-7)


def test_step_schedule_values():
    schedule = train.create_learning_rate_schedule(optim_config(schedule="step"), 20)
    got = [float(schedule(s)) for s in (4, 9, 10, 14, 15, 19)]
    np.testing.assert_allclose(got, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-5)


@settings(max_examples=10, deadline=None)
@given(
    steps=st.integers(20, 500),
    warmup=st.integers(0, 10),
    kind=st.sampled_from(["cosine", "step", "constant"]),
)
def test_schedule_is_bounded_and_warms_up(steps, warmup, kind):
    config = optim_config(schedule=kind, warmup_steps=warmup)
    schedule = train.create_learning_rate_schedule(config, steps)
    values = np.broadcast_to(np.asarray(schedule(jnp.arange(steps))), (steps,))
    assert np.all(values >= 0) and np.all(values <= 0.1 + 1e-7)
    if warmup:
        np.testing.assert_allclose(values[0], 0.01, rtol=1e-6)
        assert np.all(np.diff(values[:warmup]) > 0)
    passed = sum(round(f * steps) <= warmup for f in config.decay_at) if kind == "step" else 0
    np.testing.assert_allclose(values[warmup], 0.1 * 0.1**passed, rtol=1e-5)


def test_bad_optimizer_config_names_the_field():
    with pytest.raises(ValueError, match="optim.schedule"):
        train.create_learning_rate_schedule(optim_config(schedule="linear"), 10)
    with pytest.raises(ValueError, match="optim.name"):
        train.create_optimizer(optim_config(name="lamb"), 10)
    with pytest.raises(ValueError, match="optim.warmup_steps"):
        train.create_learning_rate_schedule(optim_config(warmup_steps=11), 10)


def test_weight_decay_mask_excludes_norms_and_biases():
    params = {
        "conv": {"kernel": jnp.ones((3, 3, 2, 4)), "bias": jnp.ones(4)},
        "norm": {"scale": jnp.ones(4), "bias": jnp.ones(4)},
        "dense": {"kernel": jnp.ones((4, 2))},
    }
    mask = train.weight_decay_mask(params)
    assert mask == {
        "conv": {"kernel": True, "bias": False},
        "norm": {"scale": False, "bias": False},
        "dense": {"kernel": True},
    }


def test_sgd_update_equals_manual_momentum_decay_and_clipping():
    config = optim_config(schedule="constant", warmup_steps=0, clip_norm=1.0)
    tx, _ = train.create_optimizer(config, 10)
    params = {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.full((2,), 3.0)}
    grads = {"kernel": jnp.full((2, 2), 3.0), "bias": jnp.full((2,), 4.0)}
    opt_state = tx.init(params)
    norm = np.sqrt(4 * 9 + 2 * 16)
    for step in range(2):
        updates, opt_state = tx.update(grads, opt_state, params)
        clipped = {k: np.asarray(g) / norm for k, g in grads.items()}
        effective_k = clipped["kernel"] + 1e-2 * 2.0  # decay on the kernel only
        effective_b = clipped["bias"]
        factor = 1.0 if step == 0 else 1.9  # momentum trace: g, then g + 0.9 g
        np.testing.assert_allclose(updates["kernel"], -0.1 * factor * effective_k, rtol=1e-5)
        np.testing.assert_allclose(updates["bias"], -0.1 * factor * effective_b, rtol=1e-5)


def test_adamw_decays_kernels_only():
    config = optim_config(name="adamw", schedule="constant", warmup_steps=0, weight_decay=0.5)
    tx, _ = train.create_optimizer(config, 10)
    params = {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.full((2,), 3.0)}
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5 * 2.0, rtol=1e-6)
    np.testing.assert_allclose(updates["bias"], 0.0)


# ------------------------------------------------------------------ steps, sharding


def test_toy_train_step_updates_params_and_reports_metrics():
    mesh = train.create_mesh()
    state = toy_state(mesh)
    before = jax.device_get(state.params)
    stats_before = jax.device_get(state.batch_stats)
    step = train.jit_train_step(toy_loss, mesh)
    state, metrics = step(state, train.shard_batch(toy_batch(1, 2), mesh))
    metrics = jax.device_get(metrics)
    assert int(state.step) == 1
    assert set(metrics) == {"mse", "loss", "grad_norm", "finite"}
    assert np.isfinite(metrics["loss"]) and metrics["finite"] == 1.0
    after = jax.device_get(state.params)
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before, after)
    assert all(jax.tree.leaves(changed))
    # Frozen statistics are never touched by the update.
    same = jax.tree.map(np.array_equal, stats_before, jax.device_get(state.batch_stats))
    assert jax.tree.leaves(stats_before) and all(jax.tree.leaves(same))


def test_sampling_key_depends_on_the_step():
    mesh = train.create_mesh()
    step = train.jit_train_step(lambda out: (jnp.mean(out["pred"]), {}), mesh)
    batch = train.shard_batch(toy_batch(1, 2), mesh)
    state = toy_state(mesh)
    # Same params, different step -> different sampling noise -> different loss.
    _, m0 = step(toy_state(mesh), batch)
    _, m1 = step(state.replace(step=jnp.ones((), jnp.int32)), batch)
    assert float(m0["loss"]) != float(m1["loss"])


def test_shard_batch_rejects_a_missing_device_axis():
    mesh = train.create_mesh()
    with pytest.raises(ValueError, match="batch\\['image'\\]"):
        train.shard_batch({"image": np.zeros((4, 8, 8, 3), np.float32)}, mesh)


def test_batch_dims_require_divisible_batch():
    mesh = train.create_mesh()
    assert train._batch_dims(4, mesh, "train.batch_size") == (1, 4)


def test_nan_guard_raises_with_step_and_last_checkpoint(tmp_path):
    manager = train.create_checkpoint_manager(str(tmp_path), ml_collections.ConfigDict(dict(every_steps=1, keep=1)))
    bad = {"finite": np.float32(0.0), "loss": np.float32(np.nan), "grad_norm": np.float32(1.0)}
    with pytest.raises(train.NonFiniteLossError, match="non-finite loss at step 7.*last checkpoint: none"):
        train._check_finite(bad, 7, manager)
    train._check_finite({"finite": np.float32(1.0)}, 8, manager)


def test_train_step_flags_nan_loss():
    mesh = train.create_mesh()
    step = train.jit_train_step(lambda out: (jnp.log(-jnp.abs(out["pred"]).sum() - 1.0), {}), mesh)
    _, metrics = step(toy_state(mesh), train.shard_batch(toy_batch(1, 2), mesh))
    assert float(metrics["finite"]) == 0.0


TWO_DEVICE_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, jax
    sys.path[:0] = [{repo!r}, {tests!r}]
    import test_train as t
    from sln_jax import train
    assert jax.device_count() == {devices}, jax.devices()
    mesh = train.create_mesh()
    batch = t.toy_batch(1, 4, seed=3)
    batch = {{k: v.reshape(({devices}, 4 // {devices}) + v.shape[2:]) for k, v in batch.items()}}
    state = t.toy_state(mesh)
    step = train.jit_train_step(t.toy_loss, mesh)
    for _ in range(2):
        state, metrics = step(state, train.shard_batch(batch, mesh))
    leaves = jax.tree.leaves(jax.device_get(state.params)) + [jax.device_get(metrics["loss"])]
    np.savez({out!r}, *leaves)
    """
)


def run_devices(devices: int, out: str) -> list[np.ndarray]:
    script = TWO_DEVICE_SCRIPT.format(
        repo=REPO, tests=os.path.join(REPO, "tests"), devices=devices, out=out
    )
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=300)
    with np.load(out) as data:
        return [data[k] for k in sorted(data.files, key=lambda n: int(n.split("_")[1]))]


@pytest.mark.slow
def test_toy_two_devices_equal_one_device(tmp_path):
    one = run_devices(1, str(tmp_path / "one.npz"))
    two = run_devices(2, str(tmp_path / "two.npz"))
    for a, b in zip(one, two):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_and_keep_last(tmp_path):
    mesh = train.create_mesh()
    step = train.jit_train_step(toy_loss, mesh)
    config = ml_collections.ConfigDict({"checkpoint": {"every_steps": 2, "keep": 2}, "seed": 0})
    manager = train.create_checkpoint_manager(str(tmp_path), config.checkpoint)
    state = toy_state(mesh)
    batch = train.shard_batch(toy_batch(1, 2), mesh)
    for _ in range(6):
        state, _ = step(state, batch)
        train.save_checkpoint(manager, state, config)
    manager.wait_until_finished()
    assert manager.all_steps() == [4, 6]
    restored = train.restore_checkpoint(manager, toy_state(mesh, seed=1))
    expected = jax.device_get(state)
    got = jax.device_get(restored)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
        np.testing.assert_array_equal(a, b)
    assert restored.params["Conv_0"]["kernel"].sharding.is_fully_replicated
    loaded = train.load_checkpoint(str(tmp_path))
    assert loaded["step"] == 6 and loaded["config"] == config.to_dict()
    np.testing.assert_array_equal(loaded["params"]["Dense_0"]["kernel"], expected.params["Dense_0"]["kernel"])
    manager.close()


def test_restore_without_checkpoint_keeps_state(tmp_path):
    mesh = train.create_mesh()
    manager = train.create_checkpoint_manager(str(tmp_path), ml_collections.ConfigDict(dict(every_steps=1, keep=1)))
    state = toy_state(mesh)
    assert train.restore_checkpoint(manager, state) is state
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train.load_checkpoint(str(tmp_path / "empty"))
