"""A toy detector, its loss, batches and TrainState: small models for the state, step and
checkpoint tests (test_train_state.py, test_train.py, test_checkpoints.py)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sln_jax import train_state


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
    tx, _ = train_state.create_optimizer(optim or optim_config(), 20)
    return train_state.create_train_state(ToyDetector(), tx, seed, (2, 8, 8, 3), mesh)
