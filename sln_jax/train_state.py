"""The training state on a device mesh: TrainState, the optimizer and its schedule.

Config fields owned here:

* ``config.seed``: int, seeds parameter init (and, through ``TrainState.rng``, sampling).
* ``config.optim``: ``name`` ('sgd' | 'adamw'), ``learning_rate``, ``momentum`` (sgd),
  ``b1``, ``b2`` (adamw), ``weight_decay`` (kernels only: norms and biases are excluded),
  ``schedule`` ('cosine' | 'step' | 'constant'), ``warmup_steps``, ``warmup_factor`` (lr at
  step 0 = factor * learning_rate), ``decay_at`` (fractions of num_steps, 'step' schedule),
  ``decay_factor`` ('step' schedule), ``clip_norm`` (global gradient norm).

The state is replicated (``P()``) over a 1-D ``Mesh`` whose axis ``'data'`` spans every
device of every process; batches are sharded on that axis (``sln_jax.train.shard_batch``).
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sln_jax import frozen as frozen_params
from sln_jax.models import pretrained, torchvision_import

__all__ = [
    "use_classic_prng",
    "DATA_AXIS",
    "TrainState",
    "create_mesh",
    "create_learning_rate_schedule",
    "weight_decay_mask",
    "create_optimizer",
    "create_train_state",
    "load_pretrained_backbone",
]

DATA_AXIS = "data"

PyTree = Any


def use_classic_prng() -> None:
    """Selects the classic (non-partitionable) threefry PRNG for this process.

    The default partitionable threefry makes XLA:CPU compile every random op (parameter
    init, the samplers inside the train step) about 3x slower on this project's CPU
    machines; the classic threefry gives the same quality of randomness and compiles
    quickly. Random values differ between the two, so every entry point (main, demo,
    infer, the benchmarks) calls this at start-up, and the tests set
    ``JAX_THREEFRY_PARTITIONABLE=false`` in ``tests/conftest.py``; importing ``sln_jax``
    itself leaves the importer's JAX configuration alone.
    """
    jax.config.update("jax_threefry_partitionable", False)


class TrainState(flax.struct.PyTreeNode):
    """Everything a training step reads and writes; a replicated pytree.

    Attributes:
      step: int32 [] number of updates applied so far.
      params: the model's ``params`` collection (float32 leaves).
      batch_stats: the model's frozen ``batch_stats`` collection (never updated).
      opt_state: the optax state of ``tx``.
      rng: uint32 [2] base PRNG key; step s samples with ``fold_in(rng, s)``.
      apply_fn: the model's ``apply`` (static, not saved).
      tx: the optax transformation (static, not saved).
    """

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    rng: jax.Array
    apply_fn: Callable[..., Any] = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

    @property
    def variables(self) -> dict[str, PyTree]:
        """The variables dict ``{'params', 'batch_stats'}`` for ``apply_fn``."""
        return {"params": self.params, "batch_stats": self.batch_stats}


def create_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis ``'data'`` over ``devices`` (default: every device of every host)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


# ---------------------------------------------------------------------- optimizer


def create_learning_rate_schedule(optim_config, num_steps: int) -> optax.Schedule:
    """Linear warmup to ``learning_rate``, then cosine, step or constant decay.

    Args:
      optim_config: ``config.optim`` (fields in the module docstring).
      num_steps: total training steps; decay points are fractions of it.

    Returns:
      A function step (int32 []) -> learning rate (float32 []).
    """
    base = float(optim_config.learning_rate)
    warmup_steps = int(optim_config.warmup_steps)
    if warmup_steps < 0:
        raise ValueError(f"optim.warmup_steps={warmup_steps} must be >= 0")
    # A short run (--config.train.num_steps=20 on a config with 50 warmup steps) warms up over
    # all of its steps rather than stopping.
    warmup_steps = min(warmup_steps, num_steps)
    after_warmup = max(num_steps - warmup_steps, 1)
    if optim_config.schedule == "cosine":
        decay = optax.cosine_decay_schedule(base, after_warmup)
    elif optim_config.schedule == "step":
        boundaries = {
            int(round(f * num_steps)) - warmup_steps: float(optim_config.decay_factor)
            for f in optim_config.decay_at
        }
        decay = optax.piecewise_constant_schedule(base, boundaries)
    elif optim_config.schedule == "constant":
        decay = optax.constant_schedule(base)
    else:
        raise ValueError(
            f"optim.schedule={optim_config.schedule!r}: expected 'cosine', 'step' or 'constant'"
        )
    if warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(base * float(optim_config.warmup_factor), base, warmup_steps)
    return optax.join_schedules([warmup, decay], [warmup_steps])


def weight_decay_mask(params: PyTree) -> PyTree:
    """True for the leaves weight decay applies to: conv / dense kernels (ndim > 1).

    Norm scales and biases (named ``scale`` / ``bias``, 1-D) are excluded, as in the
    reference (Detectron's WEIGHT_DECAY_NORM = 0 and no decay on biases in practice).

    Args:
      params: a pytree of arrays (nested dicts of a Flax ``params`` collection).

    Returns:
      The same structure with bool leaves.
    """

    def decays(path, leaf) -> bool:
        name = getattr(path[-1], "key", None)
        return name not in ("bias", "scale") and jnp.ndim(leaf) > 1

    return jax.tree_util.tree_map_with_path(decays, params)


def create_optimizer(optim_config, num_steps: int, frozen: tuple[str, ...] = ()
                     ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax chain: clip by global norm, then SGD-momentum with decoupled-mask L2, or AdamW.

    SGD adds ``weight_decay * param`` to the clipped gradient of the masked leaves (PyTorch /
    Detectron semantics); AdamW decays the same leaves in its decoupled way.

    Args:
      optim_config: ``config.optim``.
      num_steps: total training steps (for the schedule).
      frozen: ``config.train.frozen`` path patterns; the chain runs on the other leaves only
        (``sln_jax.frozen.freeze``: no state, no decay, not in the clipping norm).

    Returns:
      (tx, schedule): the transformation and its learning-rate schedule.
    """
    schedule = create_learning_rate_schedule(optim_config, num_steps)
    clip = optax.clip_by_global_norm(float(optim_config.clip_norm))
    if optim_config.name == "sgd":
        tx = optax.chain(
            clip,
            optax.add_decayed_weights(float(optim_config.weight_decay), mask=weight_decay_mask),
            optax.sgd(schedule, momentum=float(optim_config.momentum)),
        )
    elif optim_config.name == "adamw":
        tx = optax.chain(
            clip,
            optax.adamw(
                schedule,
                b1=float(optim_config.b1),
                b2=float(optim_config.b2),
                weight_decay=float(optim_config.weight_decay),
                mask=weight_decay_mask,
            ),
        )
    else:
        raise ValueError(f"optim.name={optim_config.name!r}: expected 'sgd' or 'adamw'")
    return frozen_params.freeze(tx, tuple(frozen)), schedule


def create_train_state(
    model: flax.linen.Module,
    tx: optax.GradientTransformation,
    seed: int,
    image_shape: tuple[int, ...],
    mesh: Mesh,
) -> TrainState:
    """Initialises the model and optimizer directly into replicated device arrays.

    Initialisation runs inside ``jit`` with a replicated output sharding, so every host gets
    the same values without any host-to-device broadcast.

    Args:
      model: a Flax module with ``__call__(images, gt, train)`` whose ``train=False`` call
        creates every variable (``params``, optional ``batch_stats``).
      tx: the optimizer.
      seed: parameter init uses a key split from ``PRNGKey(seed)``, sampling another.
      image_shape: (B, S, S, 3) of the images; only the shape matters.
      mesh: the device mesh.

    Returns:
      A TrainState at step 0, replicated over ``mesh``.
    """
    init_key, state_key = jax.random.split(jax.random.PRNGKey(seed))

    def init() -> TrainState:
        variables = model.init(init_key, jnp.zeros(image_shape, jnp.float32), None, train=False)
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init(params),
            rng=state_key,
            apply_fn=model.apply,
            tx=tx,
        )

    return jax.jit(init, out_shardings=NamedSharding(mesh, P()))()


def load_pretrained_backbone(state: TrainState, path: str, mesh: Mesh,
                             prefix: tuple[str, ...] = ("backbone",),
                             maskrcnn: bool = False) -> TrainState:
    """The state with its backbone weights loaded from a torchvision-layout ResNet file
    (or, with ``maskrcnn``, every weight a torchvision Mask R-CNN file provides).

    Every process reads the same file and builds the same replicated arrays, so this works
    on several hosts without a broadcast. The optimizer state is kept: at step 0 it does
    not depend on the parameter values.

    Args:
      state: a replicated step-0 TrainState (``create_train_state``).
      path: ``.npz`` or ``.safetensors`` (``sln_jax.models.pretrained``).
      mesh: the device mesh.
      prefix: path of the ResNet inside ``params`` and ``batch_stats``.
      maskrcnn: ``path`` is a torchvision ``maskrcnn_resnet50_fpn`` state dict
        (``sln_jax.models.torchvision_import``; ``prefix`` is not used).

    Returns:
      The TrainState with new ``params`` and ``batch_stats``, replicated over ``mesh``.

    Raises:
      ValueError: naming the file when it cannot be read or does not fit the backbone.
    """
    def local(tree):
        # A replicated array holds the whole value on each of this host's devices.
        return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)

    current = {"params": local(state.params), "batch_stats": local(state.batch_stats)}
    if maskrcnn:
        variables, report = torchvision_import.load_torchvision_maskrcnn(path, current)
        logging.info("Mask R-CNN weights: %d tensors loaded, %d partly (GLM inputs kept), "
                     "%d class-specific re-initialised, %d kept (no counterpart), %d file "
                     "keys unused", *(len(report[k]) for k in (
                         "loaded", "partial", "reinitialised", "kept", "unused")))
    else:
        variables = pretrained.load_torchvision_resnet(path, current, prefix=prefix)
    replicated = NamedSharding(mesh, P())

    def put(tree):
        return jax.tree.map(lambda x: jax.make_array_from_callback(
            x.shape, replicated, lambda index: x[index]), tree)

    return state.replace(params=put(variables["params"]),
                         batch_stats=put(variables["batch_stats"]))
