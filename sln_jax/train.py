"""Training and evaluation of SLN: TrainState, optimizer, train/eval steps, the loop.

Parallelism: one ``jax.jit`` over a 1-D device ``Mesh`` named ``'data'`` that spans every
device of every process. Batches are global arrays sharded on their leading (image) axis with
``NamedSharding(mesh, P('data'))``; the TrainState is replicated (``P()``). XLA inserts the
gradient all-reduce itself. We use sharded ``jit`` rather than ``pmap`` because the jax 0.10
docs call ``pmap`` the old way, and because the same code runs unchanged on 1 CPU, several
local devices and several hosts (each host feeds only its local slice through
``jax.make_array_from_process_local_data``). Losses are per-image means averaged over the
*global* batch, so a run on N devices computes the same update as a run on 1 device with the
same global batch (up to float summation order); random numbers are partitionable threefry
(jax's default), so sampling does not depend on the device count either.

Determinism and resumption: the per-step random key is ``fold_in(state.rng, state.step)`` and
the input pipeline's position is derived from the step (``create_dataset(start_step=...)``),
so a run killed after a checkpoint and restarted from it ends with the same parameters as an
uninterrupted run.

Config fields owned here (see ``configs/synthetic.py`` for a complete example):

* ``config.seed``: int, seeds parameter init, sampling and data order.
* ``config.multihost``: bool, call ``jax.distributed.initialize()`` (in ``main``).
* ``config.train``: ``num_steps`` (int), ``batch_size`` (global images per step, divisible by
  the device count), ``log_every`` (steps between progress lines / TensorBoard points).
* ``config.optim``: ``name`` ('sgd' | 'adamw'), ``learning_rate``, ``momentum`` (sgd),
  ``b1``, ``b2`` (adamw), ``weight_decay`` (kernels only: norms and biases are excluded),
  ``schedule`` ('cosine' | 'step' | 'constant'), ``warmup_steps``, ``warmup_factor`` (lr at
  step 0 = factor * learning_rate), ``decay_at`` (fractions of num_steps, 'step' schedule),
  ``decay_factor`` ('step' schedule), ``clip_norm`` (global gradient norm).
* ``config.eval``: ``every_steps`` (0 = only at the end), ``batch_size`` (global),
  ``gt_json`` (val annotations; '' = the one recorded in the dataset's metadata.json),
  ``format`` ('coco' | 'cocoa'), ``num_pictures`` (val predictions drawn at the end).
* ``config.checkpoint``: ``every_steps``, ``keep`` (last k kept).
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax.metrics import tensorboard
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "DATA_AXIS",
    "NonFiniteLossError",
    "TrainState",
    "create_mesh",
    "create_learning_rate_schedule",
    "weight_decay_mask",
    "create_optimizer",
    "create_train_state",
    "shard_batch",
    "train_step",
    "eval_step",
    "create_checkpoint_manager",
    "save_checkpoint",
    "restore_checkpoint",
    "load_checkpoint",
]

DATA_AXIS = "data"
CHECKPOINT_DIR = "checkpoints"

PyTree = Any


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradient norm became NaN or inf; the run stops without saving."""


# --------------------------------------------------------------------------- state


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
    if not 0 <= warmup_steps <= num_steps:
        raise ValueError(f"optim.warmup_steps={warmup_steps} must be in [0, num_steps={num_steps}]")
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


def create_optimizer(optim_config, num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax chain: clip by global norm, then SGD-momentum with decoupled-mask L2, or AdamW.

    SGD adds ``weight_decay * param`` to the clipped gradient of the masked leaves (PyTorch /
    Detectron semantics); AdamW decays the same leaves in its decoupled way.

    Args:
      optim_config: ``config.optim``.
      num_steps: total training steps (for the schedule).

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
    return tx, schedule


def create_train_state(
    model: flax.linen.Module,
    tx: optax.GradientTransformation,
    seed: int,
    init_batch: dict[str, np.ndarray],
    mesh: Mesh,
) -> TrainState:
    """Initialises the model and optimizer directly into replicated device arrays.

    Initialisation runs inside ``jit`` with a replicated output sharding, so every host gets
    the same values without any host-to-device broadcast.

    Args:
      model: a Flax module with ``__call__(images, gt, train)`` and ``params`` /
        ``batch_stats`` collections.
      tx: the optimizer.
      seed: parameter init uses ``PRNGKey(seed)``; sampling a key folded from it.
      init_batch: one example batch (numpy, leading [B]) of the training input; only shapes
        and dtypes matter.
      mesh: the device mesh.

    Returns:
      A TrainState at step 0, replicated over ``mesh``.
    """
    root = jax.random.PRNGKey(seed)
    init_key, sample_key, state_key = jax.random.split(root, 3)
    init_batch = jax.tree.map(jnp.asarray, init_batch)

    def init() -> TrainState:
        variables = model.init(
            {"params": init_key, "sampling": sample_key},
            init_batch["image"],
            init_batch,
            train=True,
        )
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


# -------------------------------------------------------------------------- steps


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host batch -> global arrays sharded over the mesh's ``'data'`` axis.

    Args:
      batch: numpy leaves shaped [local_devices, per_device_batch, ...] (the input pipeline's
        layout) or already [local_batch, ...] when ``flatten`` is not needed.

    Returns:
      The same keys, jax arrays [global_batch, ...] with ``NamedSharding(mesh, P('data'))``.
    """
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    local_devices = len(mesh.local_devices)

    def put(name: str, x: np.ndarray) -> jax.Array:
        x = np.asarray(x)
        if x.ndim < 2 or x.shape[0] != local_devices:
            raise ValueError(
                f"batch[{name!r}] has shape {x.shape}; expected leading [local_devices="
                f"{local_devices}, per_device_batch, ...] from the input pipeline"
            )
        return jax.make_array_from_process_local_data(sharding, x.reshape((-1,) + x.shape[2:]))

    return {name: put(name, x) for name, x in batch.items()}


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    loss_fn: Callable[[dict[str, jax.Array]], tuple[jax.Array, dict[str, jax.Array]]],
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update; pure, so ``jit`` with shardings wraps it for any device count.

    Args:
      state: the replicated TrainState.
      batch: the global batch (keys of docs/interfaces.md, leading [B]).
      loss_fn: model outputs -> (total float32 [], per-term metrics {name: float32 []}); the
        total must be a mean over the batch's images.

    Returns:
      (new state, metrics): metrics hold every loss term, ``loss`` (the total),
      ``grad_norm`` (before clipping) and ``finite`` (1.0 when loss and gradients are finite).
    """
    rng = jax.random.fold_in(state.rng, state.step)

    def total_loss(params):
        outputs = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            batch["image"],
            batch,
            train=True,
            rngs={"sampling": rng},
        )
        return loss_fn(outputs)

    (loss, terms), grads = jax.value_and_grad(total_loss, has_aux=True)(state.params)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        opt_state=opt_state,
    )
    metrics = dict(terms)
    metrics["loss"] = loss
    metrics["grad_norm"] = grad_norm
    metrics["finite"] = (jnp.isfinite(loss) & jnp.isfinite(grad_norm)).astype(jnp.float32)
    return new_state, metrics


def eval_step(state: TrainState, images: jax.Array) -> dict[str, jax.Array]:
    """Inference on a batch: the model's fixed-size detections.

    Args:
      state: the TrainState (only params and batch_stats are read).
      images: float32 [B, S, S, 3] normalized images.

    Returns:
      The model's train=False outputs (``boxes`` [B, D, 4], ``scores`` [B, D], ...).
    """
    return state.apply_fn(state.variables, images, None, train=False)


def jit_train_step(loss_fn, mesh: Mesh):
    """``train_step`` compiled with a replicated state and a data-sharded batch; donates the state."""
    replicated = NamedSharding(mesh, P())
    return jax.jit(
        functools.partial(train_step, loss_fn=loss_fn),
        in_shardings=(replicated, NamedSharding(mesh, P(DATA_AXIS))),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )


def jit_eval_step(mesh: Mesh):
    """``eval_step`` compiled with a replicated state and data-sharded images and outputs."""
    data = NamedSharding(mesh, P(DATA_AXIS))
    return jax.jit(eval_step, in_shardings=(NamedSharding(mesh, P()), data), out_shardings=data)


# -------------------------------------------------------------------- checkpoints


def create_checkpoint_manager(workdir: str, checkpoint_config) -> ocp.CheckpointManager:
    """An orbax CheckpointManager in ``WORKDIR/checkpoints``: every N steps, keep the last k.

    Orbax writes each step to a temporary directory and renames it when complete, so a crash
    never leaves a half-written checkpoint that a restart would pick up.
    """
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=int(checkpoint_config.every_steps),
        max_to_keep=int(checkpoint_config.keep),
        create=True,
    )
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR),
        options=options,
        item_names=("state", "config"),
    )


def save_checkpoint(
    manager: ocp.CheckpointManager, state: TrainState, config, *, force: bool = False
) -> bool:
    """Saves ``state`` (and the config as JSON) at ``state.step`` if due or ``force``.

    Returns:
      True when a save was started (orbax finishes it asynchronously; call
      ``manager.wait_until_finished()`` before exiting).
    """
    step = int(state.step)
    return manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            config=ocp.args.JsonSave(json.loads(config.to_json())),
        ),
        force=force,
    )


def restore_checkpoint(manager: ocp.CheckpointManager, state: TrainState) -> TrainState:
    """Returns the latest checkpoint restored into ``state``'s structure and shardings, or ``state``
    itself when the directory holds none."""
    step = manager.latest_step()
    if step is None:
        return state
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
    )
    return restored["state"]


def load_checkpoint(workdir: str, step: int | None = None) -> dict[str, Any]:
    """Reads a checkpoint without a model: for inference and tools.

    Args:
      workdir: the training workdir (checkpoints live in ``WORKDIR/checkpoints``).
      step: which step; default the latest.

    Returns:
      ``{'step': int, 'params': pytree, 'batch_stats': pytree, 'config': dict}`` with numpy
      / jax arrays as saved.

    Raises:
      FileNotFoundError: when the workdir has no checkpoint.
    """
    directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    with ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(read_only=True), item_names=("state", "config")
    ) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {directory}: train first (sln_jax.main)")
        restored = manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(), config=ocp.args.JsonRestore()),
        )
    state = restored["state"]
    return {
        "step": int(step),
        "params": state["params"],
        "batch_stats": state["batch_stats"],
        "config": restored["config"],
    }


# ------------------------------------------------------------------------ metrics


class MetricWriter:
    """TensorBoard event files in the workdir plus a logged progress line; process 0 only."""

    def __init__(self, workdir: str):
        self._writer = tensorboard.SummaryWriter(workdir) if jax.process_index() == 0 else None

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        """Writes ``{name: value}`` at ``step`` to TensorBoard."""
        if self._writer is None:
            return
        for name, value in scalars.items():
            self._writer.scalar(name, value, step)
        self._writer.flush()

    def close(self) -> None:
        """Flushes and closes the event file."""
        if self._writer is not None:
            self._writer.close()


def _check_finite(metrics: dict[str, Any], step: int, manager: ocp.CheckpointManager) -> None:
    """Raises NonFiniteLossError when step ``step``'s loss or gradient norm is not finite."""
    if float(metrics["finite"]) == 1.0:
        return
    last = manager.latest_step()
    raise NonFiniteLossError(
        f"non-finite loss at step {step} (loss={float(metrics['loss'])}, grad_norm="
        f"{float(metrics['grad_norm'])}); stopping without saving it; last checkpoint: "
        f"{'none' if last is None else f'step {last}'} in {manager.directory}. Lower "
        "optim.learning_rate or raise optim.warmup_steps."
    )


def _mean_metrics(history: list[dict[str, jax.Array]]) -> dict[str, float]:
    """Host-side means over the steps since the last log line (one device->host transfer)."""
    history = jax.device_get(history)
    return {name: float(np.mean([h[name] for h in history])) for name in history[0]}


def _progress_line(step: int, num_steps: int, scalars: dict[str, float]) -> str:
    terms = " ".join(
        f"{name}={value:.4g}" for name, value in sorted(scalars.items()) if name.startswith("train/")
    ).replace("train/", "")
    return f"step {step}/{num_steps} {terms}"


# ---------------------------------------------------------------------- the loop


def _batch_dims(global_batch: int, mesh: Mesh, what: str) -> tuple[int, int]:
    """(local devices, per-device batch) for the input pipeline's ``batch_dims``."""
    if global_batch % mesh.size:
        raise ValueError(
            f"{what}={global_batch} is not divisible by the {mesh.size} devices; "
            f"use a multiple of {mesh.size}"
        )
    return len(mesh.local_devices), global_batch // mesh.size


def train(config, workdir: str, *, evaluate_every: bool = True, stop_at_step: int | None = None) -> TrainState:
    """Trains SLN to ``config.train.num_steps``, resuming from the latest checkpoint in ``workdir``.

    Args:
      config: the run's ConfigDict (``configs/*.py``).
      workdir: checkpoints, TensorBoard events and ``config.json`` go here.
      evaluate_every: run the periodic val evaluation every ``config.eval.every_steps``.
      stop_at_step: stop after this step with a checkpoint, as a preempted job would (used
        by time-boxed jobs and the kill-and-resume test); None = run to num_steps.

    Returns:
      The final TrainState (replicated device arrays).

    Raises:
      NonFiniteLossError: when a step's loss or gradient norm is NaN / inf.
    """
    from sln_jax import input_pipeline, losses
    from sln_jax.models import sln

    os.makedirs(workdir, exist_ok=True)
    mesh = create_mesh()
    num_steps = int(config.train.num_steps)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json(indent=2))

    manager = create_checkpoint_manager(workdir, config.checkpoint)
    start_step = manager.latest_step() or 0
    train_iter = iter(
        input_pipeline.create_dataset(
            config.data,
            config.data.train_split,
            batch_dims=_batch_dims(int(config.train.batch_size), mesh, "train.batch_size"),
            train=True,
            seed=int(config.seed),
            start_step=start_step,
        )
    )
    first_batch = next(train_iter)

    model = sln.SLN(config.model)
    tx, schedule = create_optimizer(config.optim, num_steps)
    state = create_train_state(
        model, tx, int(config.seed), {k: v[0] for k, v in first_batch.items()}, mesh
    )
    state = restore_checkpoint(manager, state)
    if int(state.step) != start_step:
        raise RuntimeError(f"checkpoint step {int(state.step)} != latest step {start_step}")
    if start_step:
        logging.info("Resumed from step %d in %s", start_step, manager.directory)

    p_train_step = jit_train_step(lambda outputs: losses.compute(outputs, config.loss), mesh)
    writer = MetricWriter(workdir)
    log_every = int(config.train.log_every)
    eval_every = int(config.eval.every_steps) if evaluate_every else 0
    last_step = num_steps if stop_at_step is None else min(stop_at_step, num_steps)
    global_batch = int(config.train.batch_size)

    history: list[dict[str, jax.Array]] = []
    previous: dict[str, jax.Array] | None = None
    timer_start, timer_steps = None, 0
    host_batch = first_batch
    for step in range(start_step + 1, last_step + 1):
        if host_batch is None:
            host_batch = next(train_iter)
        state, metrics = p_train_step(state, shard_batch(host_batch, mesh))
        host_batch = None
        # Check the previous step while this one runs: the NaN guard costs no pipeline stall.
        if previous is not None:
            _check_finite(previous, step - 1, manager)
        previous = metrics
        history.append(metrics)
        if timer_start is None:
            jax.block_until_ready(metrics)  # the first step includes compilation
            timer_start, timer_steps, history = time.perf_counter(), 0, [metrics]
            logging.info("First step (with compilation) done at step %d", step)
        else:
            timer_steps += 1

        is_last = step == last_step
        if step % log_every == 0 or is_last:
            _check_finite(metrics, step, manager)
            means = _mean_metrics(history)
            scalars = {f"train/{k}": v for k, v in means.items() if k != "finite"}
            scalars["train/lr"] = float(schedule(step - 1))
            elapsed = time.perf_counter() - timer_start
            if timer_steps:
                scalars["train/images_per_sec"] = timer_steps * global_batch / elapsed
            timer_start, timer_steps, history = time.perf_counter(), 0, []
            writer.write_scalars(step, scalars)
            logging.info("%s", _progress_line(step, num_steps, scalars))
        if manager.should_save(step) or is_last:
            _check_finite(metrics, step, manager)
            save_checkpoint(manager, state, config, force=is_last)
        if eval_every and step % eval_every == 0 and step != num_steps:
            val = evaluate_state(config, state, mesh)
            writer.write_scalars(step, {f"val/{k}": v for k, v in val.metrics.items()})
            logging.info("step %d val %s", step, _format_val(val.metrics))
            timer_start, timer_steps = time.perf_counter(), 0

    manager.wait_until_finished()
    manager.close()
    writer.close()
    return state


# --------------------------------------------------------------------- evaluation


@flax.struct.dataclass
class EvalResult:
    """What one evaluation pass produced (host side, identical on every process).

    Attributes:
      metrics: flat metrics of ARCHITECTURE.md (``amodal/AP``, ...), floats.
      results: COCO results entries for the whole eval split.
      pictures: up to ``config.eval.num_pictures`` (image uint8 [H, W, 3], instances) pairs
        from this process, in original image pixels.
    """

    metrics: dict[str, float]
    results: list[dict[str, Any]]
    pictures: list[tuple[np.ndarray, list[dict[str, Any]]]]


def _gather_json(obj: Any) -> list[Any]:
    """Every process's JSON-serialisable ``obj``, in process order."""
    if jax.process_count() == 1:
        return [obj]
    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([data.size], np.int64)))[:, 0]
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: data.size] = data
    gathered = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(bytes(gathered[i, : sizes[i]])) for i in range(len(sizes))]


def _format_val(metrics: dict[str, float]) -> str:
    keys = ("amodal/AP", "amodal/AP50", "modal/AP", "order/accuracy")
    return " ".join(f"{k}={metrics[k]:.4f}" for k in keys if k in metrics)
