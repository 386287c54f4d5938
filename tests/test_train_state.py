"""sln_jax.train_state: the learning-rate schedule, the optimizer, weight decay."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sln_jax import train_state
from toy_model import optim_config


def test_cosine_schedule_values():
    schedule = train_state.create_learning_rate_schedule(optim_config(), 20)
    np.testing.assert_allclose(float(schedule(0)), 0.01, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(2)), 0.01 + 0.5 * 0.09, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(4)), 0.1, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(12)), 0.05, rtol=1e-5)  # half-way through cosine
    np.testing.assert_allclose(float(schedule(20)), 0.0, atol=1e-7)


def test_step_schedule_values():
    schedule = train_state.create_learning_rate_schedule(optim_config(schedule="step"), 20)
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
    schedule = train_state.create_learning_rate_schedule(config, steps)
    values = np.broadcast_to(np.asarray(schedule(jnp.arange(steps))), (steps,))
    assert np.all(values >= 0) and np.all(values <= 0.1 + 1e-7)
    if warmup:
        np.testing.assert_allclose(values[0], 0.01, rtol=1e-6)
        assert np.all(np.diff(values[:warmup]) > 0)
    passed = sum(round(f * steps) <= warmup for f in config.decay_at) if kind == "step" else 0
    np.testing.assert_allclose(values[warmup], 0.1 * 0.1**passed, rtol=1e-5)


def test_bad_optimizer_config_names_the_field():
    with pytest.raises(ValueError, match="optim.schedule"):
        train_state.create_learning_rate_schedule(optim_config(schedule="linear"), 10)
    with pytest.raises(ValueError, match="optim.name"):
        train_state.create_optimizer(optim_config(name="lamb"), 10)
    with pytest.raises(ValueError, match="optim.warmup_steps"):
        train_state.create_learning_rate_schedule(optim_config(warmup_steps=-1), 10)


def test_weight_decay_mask_excludes_norms_and_biases():
    params = {
        "conv": {"kernel": jnp.ones((3, 3, 2, 4)), "bias": jnp.ones(4)},
        "norm": {"scale": jnp.ones(4), "bias": jnp.ones(4)},
        "dense": {"kernel": jnp.ones((4, 2))},
    }
    mask = train_state.weight_decay_mask(params)
    assert mask == {
        "conv": {"kernel": True, "bias": False},
        "norm": {"scale": False, "bias": False},
        "dense": {"kernel": True},
    }


def test_sgd_update_equals_manual_momentum_decay_and_clipping():
    config = optim_config(schedule="constant", warmup_steps=0, clip_norm=1.0)
    tx, _ = train_state.create_optimizer(config, 10)
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
    tx, _ = train_state.create_optimizer(config, 10)
    params = {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.full((2,), 3.0)}
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5 * 2.0, rtol=1e-6)
    np.testing.assert_allclose(updates["bias"], 0.0)


def test_a_run_shorter_than_its_warmup_warms_up_over_all_its_steps():
    """--config.train.num_steps=20 on a config with 50 warmup steps trains (it used to stop
    with 'warmup_steps=50 must be in [0, 20]'); a negative warmup is still an error."""
    schedule = train_state.create_learning_rate_schedule(
        optim_config(schedule="cosine", warmup_steps=50), 20)
    values = np.asarray([float(schedule(s)) for s in range(20)])
    np.testing.assert_allclose(values[0], 0.01, rtol=1e-6)
    assert np.all(np.diff(values) > 0)
    with pytest.raises(ValueError, match="warmup_steps=-1"):
        train_state.create_learning_rate_schedule(optim_config(warmup_steps=-1), 20)
