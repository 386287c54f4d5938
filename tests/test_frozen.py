"""Tests of sln_jax.frozen and config.train.frozen in the train step and the Trainer."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sln_jax import frozen, train, train_state
from test_train import optim_config
from tiny_dataset import make_tiny_dataset, tiny_config


class BackboneRegressor(nn.Module):
    """A tiny ResNet + a dense head, with SLN's calling convention (train mode has a loss)."""

    @nn.compact
    def __call__(self, images, gt=None, train=False):
        from sln_jax.models.backbone import ResNet

        features = ResNet("resnet_tiny", "frozen_bn", 8, name="backbone")(images)
        y = nn.Dense(1, name="head")(features[-1].mean(axis=(1, 2)))[:, 0]
        if not train:
            return {"scores": y}
        return {"pred": y, "target": gt["target"]}


def mse(outputs):
    loss = jnp.mean((outputs["pred"] - outputs["target"]) ** 2)
    return loss, {"mse": loss}


def batch(seed):
    rng = np.random.RandomState(seed)
    return {"image": rng.randn(1, 2, 32, 32, 3).astype(np.float32),
            "target": rng.randn(1, 2).astype(np.float32)}


PARAMS = {
    "backbone": {"conv1": {"kernel": jnp.ones((3, 3, 3, 4))},
                 "layer1_0": {"conv1": {"kernel": jnp.ones((3, 3, 4, 4))},
                              "bn1": {"bn": {"scale": jnp.ones(4), "bias": jnp.ones(4)}}}},
    "fpn": {"lateral2": {"kernel": jnp.ones((1, 1, 4, 2)), "bias": jnp.ones(2)}},
}


def test_mask_and_counts_follow_the_path_patterns():
    mask = frozen.frozen_mask(PARAMS, ("^backbone/layer1_",))
    assert mask["backbone"]["conv1"]["kernel"] is False
    assert mask["backbone"]["layer1_0"]["conv1"]["kernel"] is True
    assert mask["backbone"]["layer1_0"]["bn1"]["bn"]["scale"] is True
    assert mask["fpn"]["lateral2"]["bias"] is False
    assert frozen.count_params(PARAMS, ()) == (108 + 144 + 8 + 10, 0)
    assert frozen.count_params(PARAMS, ("^backbone/",)) == (10, 108 + 144 + 8)
    assert frozen.count_params(PARAMS, ("kernel$",)) == (4 + 4 + 2, 108 + 144 + 8)
    assert "260 frozen" in frozen.describe(PARAMS, ("^backbone/",))


def test_bad_patterns_are_named():
    with pytest.raises(ValueError, match="matches no parameter.*'backbone/conv1/kernel'"):
        frozen.count_params(PARAMS, ("backbone/stage1",))
    with pytest.raises(ValueError, match="bad pattern"):
        frozen.count_params(PARAMS, ("backbone/(",))
    with pytest.raises(ValueError, match="tuple of patterns"):
        frozen.freeze(optax.sgd(0.1), "^backbone/")


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_frozen_leaves_get_no_update_no_decay_and_no_state(name):
    tx, _ = train_state.create_optimizer(optim_config(name=name, schedule="constant",
                                                warmup_steps=0, weight_decay=0.5),
                                   10, frozen=("^backbone/",))
    opt_state = tx.init(PARAMS)
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    updates, opt_state = tx.update(grads, opt_state, PARAMS)
    for leaf in jax.tree.leaves(updates["backbone"]):
        np.testing.assert_array_equal(leaf, 0.0)
    assert all(np.all(np.asarray(u) != 0) for u in jax.tree.leaves(updates["fpn"]))
    # Optimizer state exists for the trainable leaves only (momentum / moments of 'fpn').
    state_sizes = sum(np.size(x) for x in jax.tree.leaves(opt_state) if np.ndim(x) > 0)
    per_copy = 8 + 2
    assert state_sizes in (per_copy, 2 * per_copy)  # sgd: trace; adamw: mu and nu


def test_clipping_norm_counts_trainable_leaves_only():
    config = optim_config(schedule="constant", warmup_steps=0, clip_norm=1.0, weight_decay=0.0,
                          momentum=0.0)
    tx, _ = train_state.create_optimizer(config, 10, frozen=("^backbone/",))
    grads = jax.tree.map(lambda p: jnp.full(p.shape, 100.0), PARAMS)
    grads["fpn"] = {"lateral2": {"kernel": jnp.full((1, 1, 4, 2), 0.1),
                                 "bias": jnp.full((2,), 0.1)}}
    updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
    # ||fpn grads|| = 0.1 * sqrt(10) < 1: not clipped although the frozen grads are huge.
    np.testing.assert_allclose(updates["fpn"]["lateral2"]["bias"], -0.1 * 0.1, rtol=1e-6)


def test_frozen_parameters_do_not_move_in_train_steps():
    mesh = train_state.create_mesh()
    patterns = ("^backbone/(conv1|bn1|layer1_|layer2_)",)
    tx, _ = train_state.create_optimizer(optim_config(), 20, frozen=patterns)
    state = train_state.create_train_state(BackboneRegressor(), tx, 0, (1, 32, 32, 3), mesh)
    before = jax.device_get(state.params)
    step = train.jit_train_step(mse, mesh, frozen=patterns)
    for seed in range(3):
        state, metrics = step(state, train.shard_batch(batch(seed), mesh))
        assert float(metrics["finite"]) == 1.0
    after = jax.device_get(state.params)
    mask = frozen.frozen_mask(before, patterns)
    moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), before, after)
    flat_mask = jax.tree.leaves(mask)
    flat_moved = jax.tree.leaves(moved)
    assert sum(flat_mask) >= 8 and sum(not m for m in flat_mask) >= 8
    for is_frozen, has_moved in zip(flat_mask, flat_moved):
        assert has_moved != is_frozen
    # Kernels that are not frozen moved; stage 3 and 4 and the head are among them.
    assert not np.array_equal(before["backbone"]["layer3_0"]["conv1"]["kernel"],
                              after["backbone"]["layer3_0"]["conv1"]["kernel"])


def test_a_frozen_backbone_is_not_differentiated():
    """XLA drops the backward pass of a fully frozen backbone: far fewer flops per step."""
    mesh = train_state.create_mesh()

    def flops(patterns):
        tx, _ = train_state.create_optimizer(optim_config(), 20, frozen=patterns)
        state = train_state.create_train_state(BackboneRegressor(), tx, 0, (1, 32, 32, 3), mesh)
        step = train.jit_train_step(mse, mesh, frozen=patterns)
        compiled = step.lower(state, train.shard_batch(batch(0), mesh)).compile()
        analysis = compiled.cost_analysis()
        analysis = analysis[0] if isinstance(analysis, list) else analysis
        return float(analysis["flops"])

    full, frozen_backbone = flops(()), flops(("^backbone/",))
    assert frozen_backbone < 0.6 * full, (frozen_backbone, full)


@pytest.mark.slow
def test_trainer_with_a_frozen_backbone_on_the_tiny_sln(tmp_path, caplog):
    config = tiny_config(make_tiny_dataset(str(tmp_path / "data"), num_train=4, num_val=2))
    config.model.norm = "frozen_bn"
    config.train.frozen = ("^backbone/",)
    config.train.num_steps = 2
    trainer = train.Trainer(config)
    before = jax.device_get(trainer.initial_state().params)
    with caplog.at_level("INFO"):
        state = trainer.train(str(tmp_path / "run"), evaluate_every=False)
    messages = [r.getMessage() for r in caplog.records]
    trainable, frozen_count = frozen.count_params(before, config.train.frozen)
    assert f"parameters: {trainable:,} trainable, {frozen_count:,} frozen" in "\n".join(messages)
    assert any("random initialisation" in m for m in messages)
    assert int(state.step) == 2
    after = jax.device_get(state.params)
    for leaf_before, leaf_after in zip(jax.tree.leaves(before["backbone"]),
                                       jax.tree.leaves(after["backbone"])):
        np.testing.assert_array_equal(leaf_before, leaf_after)
    assert not np.array_equal(before["fpn"]["lateral2"]["kernel"],
                              after["fpn"]["lateral2"]["kernel"])
    assert not np.array_equal(before["rpn"]["conv"]["kernel"], after["rpn"]["conv"]["kernel"])
