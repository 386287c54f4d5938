"""Training of SLN: the train / eval steps, the loop, and evaluation on the val split.

The state and optimizer live in ``sln_jax.train_state``, checkpoints in
``sln_jax.checkpoints``, the metrics in ``sln_jax.evaluation``, pictures in
``sln_jax.visualize``; this module only uses them (nothing imports it but ``main``).

Parallelism: one ``jax.jit`` over a 1-D device ``Mesh`` named ``'data'`` that spans every
device of every process. Batches are global arrays sharded on their leading (image) axis with
``NamedSharding(mesh, P('data'))``; the TrainState is replicated (``P()``). XLA inserts the
gradient all-reduce itself. We use sharded ``jit`` rather than ``pmap`` because the jax 0.10
docs call ``pmap`` the old way, and because the same code runs unchanged on 1 CPU, several
local devices and several hosts (each host feeds only its local slice through
``jax.make_array_from_process_local_data``). Losses are per-image means averaged over the
*global* batch, so a run on N devices computes the same update as a run on 1 device with the
same global batch (up to float summation order); ``jax.random`` values do not depend on how
the computation is sharded, so sampling does not depend on the device count either.

Determinism and resumption: the per-step random key is ``fold_in(state.rng, state.step)`` and
the input pipeline's position is derived from the step (``create_dataset(start_step=...)``),
so a run killed after a checkpoint and restarted from it ends with the same parameters as an
uninterrupted run.

Config fields owned here (see ``configs/synthetic.py`` for a complete example):

* ``config.seed``: int, seeds parameter init, sampling and data order.
* ``config.multihost``: bool, call ``jax.distributed.initialize()`` (in ``main``).
* ``config.train``: ``num_steps`` (int), ``batch_size`` (global images per step, divisible by
  the device count), ``log_every`` (steps between progress lines / TensorBoard points),
  ``frozen`` (tuple of regex patterns over parameter paths such as ``'^backbone/'``; matching
  parameters are not trained, see ``sln_jax.frozen``; absent = ()).
* ``config.optim``: see ``sln_jax.train_state``.
* ``config.eval``: ``every_steps`` (0 = only at the end), ``batch_size`` (global),
  ``gt_json`` (val annotations; '' = the one recorded in the dataset's metadata.json),
  ``format`` ('coco' | 'cocoa'), ``num_pictures`` (val predictions drawn at the end).
* ``config.checkpoint``: ``every_steps``, ``keep`` (last k kept).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import threading
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sln_jax import frozen as frozen_params
from sln_jax import (atomic, canvas, checkpoints, evaluation, input_pipeline, losses, postprocess,
                     records, runtime, visualize)
from sln_jax.checkpoints import create_checkpoint_manager, restore_checkpoint, save_checkpoint
from sln_jax.detections import Detections
from sln_jax.models import sln
from sln_jax.train_state import (DATA_AXIS, TrainState, create_mesh, create_optimizer,
                                 create_train_state, load_pretrained_backbone)

__all__ = [
    "NonFiniteLossError",
    "TrainingInterrupted",
    "shard_batch",
    "train_step",
    "eval_step",
    "MetricWriter",
    "EvalResult",
    "write_evaluation",
    "Trainer",
    "train",
    "evaluate",
    "train_and_evaluate",
]


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradient norm became NaN or inf; the run stops without saving."""


class TrainingInterrupted(Exception):
    """SIGINT / SIGTERM stopped training after a step whose checkpoint was written.

    Attributes:
      signum: the signal received (``signal.SIGINT`` or ``signal.SIGTERM``).
      step: the step of the checkpoint written before stopping.
      directory: the checkpoint directory.
      exit_status: ``128 + signum`` (130 for SIGINT, 143 for SIGTERM), the shell's convention.
    """

    def __init__(self, signum: int, step: int, directory: str):
        self.signum, self.step, self.directory = int(signum), int(step), str(directory)
        self.exit_status = 128 + self.signum
        super().__init__(f"{signal.Signals(signum).name}: training stopped after step {step}; "
                         f"checkpoint written to {directory}")


class _StopOnSignals:
    """Within ``with``: SIGINT / SIGTERM only set ``signum``, so the loop finishes its step.

    A second signal restores the default handlers and raises ``KeyboardInterrupt`` (a user who
    presses Ctrl-C twice does not wait). Outside the main thread, where Python cannot install
    handlers, nothing changes.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            self._restore()
            raise KeyboardInterrupt
        self.signum = signum
        logging.warning("%s received: finishing step, then writing a checkpoint "
                        "(send it again to stop at once)", signal.Signals(signum).name)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __enter__(self) -> "_StopOnSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()


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
    frozen: tuple[str, ...] = (),
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update; pure, so ``jit`` with shardings wraps it for any device count.

    Args:
      state: the replicated TrainState.
      batch: the global batch (keys of docs/interfaces.md, leading [B]).
      loss_fn: model outputs -> (total float32 [], per-term metrics {name: float32 []}); the
        total must be a mean over the batch's images.
      frozen: ``config.train.frozen``; those gradients are replaced by zeros (so XLA skips
        computing them) and the optimizer (``create_optimizer(frozen=...)``) leaves them out.

    Returns:
      (new state, metrics): metrics hold every loss term, ``loss/total``,
      ``grad_norm`` (before clipping) and ``finite`` (1.0 when loss and gradients are finite).
    """
    rng = jax.random.fold_in(state.rng, state.step)
    # The semantic map (config.model.semantic_channels > 0) is the model's only other input.
    inputs = {"semantic": batch["semantic"]} if "semantic" in batch else {}

    def total_loss(params):
        outputs = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            batch["image"],
            batch,
            train=True,
            rngs={"sampling": rng},
            **inputs,
        )
        return loss_fn(outputs)

    (loss, terms), grads = jax.value_and_grad(total_loss, has_aux=True)(state.params)
    grads = frozen_params.zero_frozen(grads, frozen)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        opt_state=opt_state,
    )
    metrics = dict(terms)
    metrics["loss/total"] = loss
    metrics["grad_norm"] = grad_norm
    metrics["finite"] = (jnp.isfinite(loss) & jnp.isfinite(grad_norm)).astype(jnp.float32)
    return new_state, metrics


def eval_step(state: TrainState, images: jax.Array,
              semantic: jax.Array | None = None) -> dict[str, jax.Array]:
    """Inference on a batch: the model's fixed-size detections.

    Args:
      state: the TrainState (only params and batch_stats are read).
      images: float32 [B, S, S, 3] normalized images.
      semantic: the batch's ``semantic`` maps when ``config.model.semantic_channels`` > 0.

    Returns:
      The model's train=False outputs (``boxes`` [B, D, 4], ``scores`` [B, D], ...).
    """
    inputs = {} if semantic is None else {"semantic": semantic}
    return state.apply_fn(state.variables, images, None, train=False, **inputs)


def jit_train_step(loss_fn, mesh: Mesh, frozen: tuple[str, ...] = ()):
    """``train_step`` compiled with a replicated state and a data-sharded batch; donates the state."""
    replicated = NamedSharding(mesh, P())
    return jax.jit(
        functools.partial(train_step, loss_fn=loss_fn, frozen=tuple(frozen)),
        in_shardings=(replicated, NamedSharding(mesh, P(DATA_AXIS))),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )


def jit_eval_step(mesh: Mesh):
    """``eval_step`` compiled with a replicated state and data-sharded images, semantic maps
    (when given) and outputs; called as ``eval_step(state, images[, semantic])``."""
    data = NamedSharding(mesh, P(DATA_AXIS))
    step = jax.jit(eval_step, in_shardings=(NamedSharding(mesh, P()), data, data),
                   out_shardings=data)

    # jit's in_shardings need every positional argument, the default one included.
    def run(state: TrainState, images: jax.Array,
            semantic: jax.Array | None = None) -> dict[str, jax.Array]:
        return step(state, images, semantic)

    return run


# ------------------------------------------------------------------------ metrics


def quiet_library_logs() -> None:
    """Keeps the absl log readable: our progress lines, not orbax's per-save chatter."""
    checkpoints.quiet_orbax_logs()


class MetricWriter:
    """TensorBoard event files in the workdir plus a logged progress line; process 0 only."""

    def __init__(self, workdir: str):
        self._writer = None
        if jax.process_index() == 0:
            # Imported here: flax's TensorBoard writer imports TensorFlow (~5 s, ~570 MB of
            # RSS), which the train and eval steps themselves never need (benchmarks, users
            # driving ``jit_train_step`` from their own loop).
            from flax.metrics import tensorboard
            self._writer = tensorboard.SummaryWriter(workdir)

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        """Writes ``{name: value}`` at ``step`` to TensorBoard."""
        if self._writer is None:
            return
        for name, value in scalars.items():
            self._writer.scalar(name, value, step)
        self._writer.flush()

    def write_images(self, step: int, images: dict[str, np.ndarray]) -> None:
        """Writes ``{name: uint8 [H, W, 3]}`` pictures at ``step`` to TensorBoard."""
        if self._writer is None:
            return
        for name, image in images.items():
            self._writer.image(name, image, step)
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
        f"non-finite loss at step {step} (loss={float(metrics['loss/total'])}, grad_norm="
        f"{float(metrics['grad_norm'])}); stopping without saving it; last checkpoint: "
        f"{'none' if last is None else f'step {last}'} in {manager.directory}. Lower "
        "optim.learning_rate or raise optim.warmup_steps."
    )


def _mean_metrics(history: list[dict[str, jax.Array]]) -> dict[str, float]:
    """Host-side means over the steps since the last log line (one device->host transfer)."""
    history = jax.device_get(history)
    return {name: float(np.mean([h[name] for h in history])) for name in history[0]}


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``: a duration for progress lines."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _progress_line(step: int, num_steps: int, scalars: dict[str, float],
                   steps_per_sec: float | None = None) -> str:
    """``step 25/1000 (2%) 1.32 steps/s ETA 12 min 18 s | loss terms...``.

    The ETA counts training steps only (evaluations inside training add to it).
    """
    terms = " ".join(
        f"{name.removeprefix('train/').removeprefix('loss/')}={value:.4g}"
        for name, value in sorted(scalars.items())
    )
    head = f"step {step}/{num_steps} ({100 * step // max(num_steps, 1)}%)"
    if steps_per_sec:
        head += (f" {steps_per_sec:.3g} steps/s ETA "
                 f"{format_duration((num_steps - step) / steps_per_sec)}")
    return f"{head} | {terms}"


# --------------------------------------------------------------------- evaluation


@flax.struct.dataclass
class EvalResult:
    """What one evaluation pass produced (host side; metrics and results equal on every process).

    Attributes:
      metrics: flat metrics of ARCHITECTURE.md (``amodal/AP``, ...), floats.
      results: COCO results entries for the whole eval split.
      pictures: up to ``num_pictures`` (image uint8 [H, W, 3], instances, ground-truth
        instances of ``ImageGT.instances``) from this process, in original image pixels.
    """

    metrics: dict[str, float]
    results: list[dict[str, Any]]
    pictures: list[tuple[np.ndarray, list[dict[str, Any]], list[dict[str, Any]]]]


def _eval_gt_json(config) -> str:
    """The val annotations: ``config.eval.gt_json``, else the path the converter recorded."""
    if config.eval.gt_json:
        return config.eval.gt_json
    metadata = records.read_metadata(config.data.dir)
    split = metadata["splits"].get(config.data.eval_split)
    if split is None or not split.get("annotations"):
        raise ValueError(
            f"{config.data.dir}/metadata.json records no annotations for split "
            f"{config.data.eval_split!r}; set config.eval.gt_json"
        )
    return split["annotations"]


def write_evaluation(workdir: str, result: EvalResult, class_names: dict[int, str] | None = None
                     ) -> list[np.ndarray]:
    """Writes ``metrics.json``, ``results_val.json`` and ``pictures/val_*.png`` (process 0 only).

    Returns:
      The pictures drawn (uint8 [H, W, 3]), in the order of their file names; [] on other
      processes.
    """
    if jax.process_index() != 0:
        return []
    evaluation.write_metrics(os.path.join(workdir, "metrics.json"), result.metrics)
    atomic.write_json(os.path.join(workdir, "results_val.json"), result.results)
    drawn = []
    for index, (image, instances, truths) in enumerate(result.pictures):
        drawn.append(visualize.draw_comparison(image, instances, truths, class_names))
        atomic.write_png(os.path.join(workdir, "pictures", f"val_{index:02d}.png"), drawn[-1])
    return drawn


def _format_val(metrics: dict[str, float]) -> str:
    keys = ("amodal/AP", "amodal/AP50", "modal/AP", "order/accuracy")
    return " ".join(f"{k}={metrics[k]:.4f}" for k in keys if k in metrics)


# ---------------------------------------------------------------------- the loop


def _batch_dims(global_batch: int, mesh: Mesh, what: str) -> tuple[int, int]:
    """(local devices, per-device batch) for the input pipeline's ``batch_dims``."""
    if global_batch % mesh.size:
        raise ValueError(
            f"{what}={global_batch} is not divisible by the {mesh.size} devices; "
            f"use a multiple of {mesh.size}"
        )
    return len(mesh.local_devices), global_batch // mesh.size


def check_shared_fields(config) -> None:
    """Raises when ``config.model`` and ``config.data`` disagree on K, the class count or
    S_sem (the semantic map's classes; absent = 0).

    The configs link them (``FieldReference``, ``configs/base.py``); a config built another
    way could still set them apart, and the model would then train on targets of another K.
    """
    for field in ("num_layers", "num_classes", "semantic_channels"):
        model = int(config.model.get(field, 0) or 0)
        data = int(config.data.get(field, 0) or 0)
        if model != data:
            raise ValueError(f"config.model.{field} = {model} but config.data.{field} = {data}: "
                             f"the records' {field} is config.data.{field}; set that one")


class Trainer:
    """One run's model, optimizer and compiled steps, built once from its config.

    ``train`` and ``evaluate`` may be called several times (a restart after a stop, periodic
    and final evaluation): they reuse the compiled steps instead of compiling again.

    Attributes:
      config: the run's ConfigDict.
      mesh: the device mesh (every device of every process).
      model: ``SLN(config.model)``.
      num_steps: ``config.train.num_steps``.
      tx, schedule: the optimizer and its learning-rate schedule.
    """

    def __init__(self, config, mesh: Mesh | None = None):
        check_shared_fields(config)
        sln.check_config(config.model)
        postprocess.check_config(config.model)
        self.config = config
        self.mesh = create_mesh() if mesh is None else mesh
        self.model = sln.SLN(config.model)
        self.num_steps = int(config.train.num_steps)
        self.frozen = tuple(config.train.get("frozen", ()))
        self.tx, self.schedule = create_optimizer(config.optim, self.num_steps, self.frozen)
        self._train_step = jit_train_step(
            functools.partial(_compute_loss, loss_config=config.loss), self.mesh, self.frozen
        )
        self._eval_step = jit_eval_step(self.mesh)

    def initial_state(self, pretrained_backbone: bool = True) -> TrainState:
        """The step-0 TrainState (replicated), seeded by ``config.seed``.

        Args:
          pretrained_backbone: load the backbone from ``config.model.pretrained_backbone``
            when it names a file (False when a checkpoint will replace the values anyway).
        """
        size = int(self.config.data.image_size)
        state = create_train_state(self.model, self.tx, int(self.config.seed), (1, size, size, 3), self.mesh)
        path = self.config.model.get("pretrained_backbone", "")
        maskrcnn = self.config.model.get("pretrained_maskrcnn", "")
        if maskrcnn and path:
            raise ValueError("config.model.pretrained_backbone and pretrained_maskrcnn are both "
                             "set: the Mask R-CNN file holds the backbone too; set one")
        if path and pretrained_backbone:
            state = load_pretrained_backbone(state, path, self.mesh)
            logging.info("backbone weights loaded from %s", path)
        if maskrcnn and pretrained_backbone:
            state = load_pretrained_backbone(state, maskrcnn, self.mesh, maskrcnn=True)
            logging.info("Mask R-CNN weights loaded from %s", maskrcnn)
        if self.frozen and pretrained_backbone and not (path or maskrcnn):
            logging.warning("config.train.frozen keeps parameters at their random "
                            "initialisation: no pretrained_backbone / pretrained_maskrcnn set")
        return state

    def train_step(self, state: TrainState, host_batch: dict[str, np.ndarray]) -> tuple[TrainState, dict[str, jax.Array]]:
        """One compiled update on a host batch [local_devices, per_device_batch, ...]; donates ``state``."""
        return self._train_step(state, shard_batch(host_batch, self.mesh))

    def train(self, workdir: str, *, evaluate_every: bool = True, stop_at_step: int | None = None) -> TrainState:
        """Trains to ``num_steps``, resuming from the latest checkpoint in ``workdir``.

        Writes checkpoints (every ``config.checkpoint.every_steps`` and at the end),
        TensorBoard events and ``config.json`` to ``workdir``; logs a progress line every
        ``config.train.log_every`` steps.

        Args:
          workdir: the run's directory.
          evaluate_every: run the val evaluation every ``config.eval.every_steps`` (> 0).
          stop_at_step: stop after this step with a checkpoint, as a preempted job would
            (time-boxed jobs, the kill-and-resume test); None = run to num_steps.

        Returns:
          The final TrainState.

        Raises:
          NonFiniteLossError: when a step's loss or gradient norm is NaN / inf.
          TrainingInterrupted: after SIGINT / SIGTERM (handled while the loop runs): the
            current step finished and its checkpoint was written.
        """
        config = self.config
        # K, P and the class count of the records must be the config's: fail before any work.
        records.read_metadata(config.data.dir, config.data)
        os.makedirs(workdir, exist_ok=True)
        manager = create_checkpoint_manager(workdir, config.checkpoint)
        fresh = manager.latest_step() is None
        if not fresh:
            checkpoints.check_compatible(config, checkpoints.saved_config(manager),
                                         manager.directory)
        if jax.process_index() == 0:
            atomic.write_json(os.path.join(workdir, checkpoints.CONFIG_FILE),
                              json.loads(config.to_json()), indent=2)
        state = restore_checkpoint(manager, self.initial_state(pretrained_backbone=fresh))
        logging.info("%s", frozen_params.describe(state.params, self.frozen))
        start_step = int(state.step)
        if start_step:
            logging.info("Resumed from step %d in %s", start_step, manager.directory)
        last_step = self.num_steps if stop_at_step is None else min(stop_at_step, self.num_steps)
        if start_step >= last_step:
            manager.close()
            return state
        # The stream is a function of the step, so a resumed run sees the same batches.
        train_batches = input_pipeline.create_dataset(
            config.data,
            config.data.train_split,
            batch_dims=_batch_dims(int(config.train.batch_size), self.mesh, "train.batch_size"),
            train=True,
            seed=int(config.seed),
            start_step=start_step,
        )
        writer = MetricWriter(workdir)
        log_every = int(config.train.log_every)
        save_every = int(config.checkpoint.every_steps)
        eval_every = int(config.eval.every_steps) if evaluate_every else 0
        images_per_step = int(config.train.batch_size)
        history: list[dict[str, jax.Array]] = []
        previous: dict[str, jax.Array] | None = None
        timer_start, timed_steps = None, 0
        saved_step = start_step
        stop = _StopOnSignals().__enter__()
        try:
            for step in range(start_step + 1, last_step + 1):
                state, metrics = self.train_step(state, next(train_batches))
                # Check the previous step while this one runs: the guard adds no stall.
                if previous is not None:
                    _check_finite(previous, step - 1, manager)
                previous = metrics
                history.append(metrics)
                if timer_start is None:
                    jax.block_until_ready(metrics)  # the first step includes compilation
                    runtime.release_host_memory()  # the compiler's freed heap (~1 GB)
                    timer_start, timed_steps = time.perf_counter(), 0
                    logging.info("step %d done (with compilation)", step)
                else:
                    timed_steps += 1
                is_last = step == last_step
                if step % log_every == 0 or is_last:
                    _check_finite(metrics, step, manager)
                    scalars = {f"train/{k}": v for k, v in _mean_metrics(history).items() if k != "finite"}
                    scalars["train/lr"] = float(self.schedule(step - 1))
                    steps_per_sec = None
                    if timed_steps:
                        steps_per_sec = timed_steps / (time.perf_counter() - timer_start)
                        scalars["train/images_per_sec"] = steps_per_sec * images_per_step
                    writer.write_scalars(step, scalars)
                    logging.info("%s", _progress_line(step, self.num_steps, scalars,
                                                      steps_per_sec))
                    history, timer_start, timed_steps = [], time.perf_counter(), 0
                if step % save_every == 0 or is_last:
                    _check_finite(metrics, step, manager)
                    save_checkpoint(manager, state, config)
                    saved_step = step
                if (stop.signum is None and eval_every and step % eval_every == 0
                        and step != self.num_steps):
                    val = self.evaluate_state(state)
                    writer.write_scalars(step, {f"val/{k}": v for k, v in val.metrics.items()})
                    logging.info("step %d val %s", step, _format_val(val.metrics))
                    timer_start, timed_steps = time.perf_counter(), 0
                if stop.signum is not None:
                    if saved_step != step:
                        _check_finite(metrics, step, manager)
                        save_checkpoint(manager, state, config)
                    manager.wait_until_finished()
                    raise TrainingInterrupted(stop.signum, step, str(manager.directory))
        finally:
            stop.__exit__()
            manager.wait_until_finished()
            manager.close()
            writer.close()
        return state

    def evaluate_state(self, state: TrainState, *, num_pictures: int = 0) -> EvalResult:
        """One pass over the val split: detections -> COCO results -> metrics.

        Every process runs the model on its shard of the split (padding images skipped),
        turns the fixed-size detections into ``Detections`` on the host and feeds them to an
        ``evaluation.Evaluator``, which gathers those of all processes before scoring.

        Args:
          state: the replicated TrainState.
          num_pictures: keep this many (image, instances) pairs for pictures.
        """
        config = self.config
        batches = input_pipeline.create_dataset(
            config.data,
            config.data.eval_split,
            batch_dims=_batch_dims(int(config.eval.batch_size), self.mesh, "eval.batch_size"),
            train=False,
            seed=int(config.seed),
        )
        evaluator = evaluation.Evaluator(_eval_gt_json(config), config.eval.format)
        pictures: list[tuple[np.ndarray, list[dict[str, Any]], list[dict[str, Any]]]] = []
        truths = {gt.image_id: gt for gt in evaluator.images} if num_pictures else {}
        split = records.read_metadata(config.data.dir)["splits"].get(config.data.eval_split, {})
        total = split.get("num_examples")
        batch_size = int(config.eval.batch_size)
        bar = tqdm.tqdm(
            total=None if total is None else -(-int(total) // batch_size),
            desc=f"evaluate {config.data.eval_split}", unit="batch", file=sys.stderr,
            disable=jax.process_index() != 0, leave=False, mininterval=2.0)
        for host_batch in batches:
            bar.update(1)
            inputs = shard_batch({key: host_batch[key] for key in ("image", "semantic")
                                  if key in host_batch}, self.mesh)
            outputs = multihost_utils.global_array_to_host_local_array(
                self._eval_step(state, inputs["image"], inputs.get("semantic")), self.mesh,
                P(DATA_AXIS)
            )
            outputs = jax.device_get(outputs)
            meta = {k: v.reshape((-1,) + v.shape[2:]) for k, v in host_batch.items()}
            for i in np.flatnonzero(meta["image_valid"]):
                instances = postprocess.to_instances(
                    {k: np.asarray(v[i]) for k, v in outputs.items()},
                    meta["image_size"][i],
                    meta["orig_size"][i],
                    config.model,
                )
                height, width = (int(v) for v in meta["orig_size"][i])
                evaluator.add(int(meta["image_id"][i]),
                              Detections.from_instances(instances, height, width))
                if len(pictures) < num_pictures:
                    image = canvas.canvas_to_image(meta["image"][i], meta["image_size"][i],
                                                   meta["orig_size"][i])
                    truth = truths.get(int(meta["image_id"][i]))
                    pictures.append((image, instances, truth.instances() if truth else []))
        bar.close()
        evaluator.gather()
        return EvalResult(evaluator.compute(), evaluator.results(), pictures)

    def evaluate(self, workdir: str, state: TrainState | None = None) -> dict[str, float]:
        """Evaluates ``state`` (default: the latest checkpoint in ``workdir``) and writes outputs.

        Writes ``WORKDIR/metrics.json`` (flat names of ARCHITECTURE.md),
        ``WORKDIR/results_val.json`` (COCO results) and ``config.eval.num_pictures`` pictures
        to ``WORKDIR/pictures/``; logs the metrics table; writes ``val/*`` metrics and the
        pictures (``val/picture_NN``) to TensorBoard.

        Returns:
          The flat metrics.

        Raises:
          FileNotFoundError: when no state is given and the workdir has no checkpoint.
        """
        if state is None:
            manager = create_checkpoint_manager(workdir, self.config.checkpoint)
            if manager.latest_step() is None:
                raise FileNotFoundError(f"no checkpoint in {manager.directory}: train first")
            checkpoints.check_compatible(self.config, checkpoints.saved_config(manager),
                                         manager.directory)
            state = restore_checkpoint(manager, self.initial_state(pretrained_backbone=False))
            manager.close()
        step = int(state.step)
        result = self.evaluate_state(state, num_pictures=int(self.config.eval.num_pictures))
        metadata = records.read_metadata(self.config.data.dir)
        class_names = {int(k): str(v) for k, v in metadata.get("classes", {}).items()}
        drawn = write_evaluation(workdir, result, class_names)
        writer = MetricWriter(workdir)
        writer.write_scalars(step, {f"val/{k}": v for k, v in result.metrics.items()})
        writer.write_images(step, {f"val/picture_{i:02d}": p for i, p in enumerate(drawn)})
        writer.close()
        logging.info("Evaluation at step %d:\n%s", step, evaluation.format_table(result.metrics))
        return result.metrics


def _compute_loss(outputs: dict[str, jax.Array], loss_config) -> tuple[jax.Array, dict[str, jax.Array]]:
    return losses.compute(outputs, loss_config)


def train(config, workdir: str, *, evaluate_every: bool = True) -> TrainState:
    """``Trainer(config).train(workdir)``: train to num_steps, resuming from ``workdir``."""
    return Trainer(config).train(workdir, evaluate_every=evaluate_every)


def evaluate(config, workdir: str) -> dict[str, float]:
    """``Trainer(config).evaluate(workdir)``: evaluate the latest checkpoint and write outputs."""
    return Trainer(config).evaluate(workdir)


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
    """Trains (resuming if possible), then evaluates the final state and writes the outputs."""
    trainer = Trainer(config)
    return trainer.evaluate(workdir, trainer.train(workdir))
