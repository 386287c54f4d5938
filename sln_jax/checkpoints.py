"""Checkpoints of a training workdir: save, restore, load for inference, check compatibility.

A workdir holds ``WORKDIR/checkpoints/<step>/`` (orbax; items ``state``, the TrainState
without its static fields, and ``config``, the run's config as JSON) and
``WORKDIR/config.json`` (the same config, written when training starts).

The compatibility check (``check_compatible``) runs wherever a checkpoint meets a config: on
resume (``sln_jax.train.Trainer.train``) and on inference (``sln_jax.infer.Predictor``). It
names every ``config.model`` field that differs from the checkpoint's, except the
inference-time settings (``INFERENCE_FIELDS``) that may change freely.
"""

from __future__ import annotations

import json
import logging as pylogging
import os
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

__all__ = [
    "quiet_orbax_logs",
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "INFERENCE_FIELDS",
    "create_checkpoint_manager",
    "save_checkpoint",
    "restore_checkpoint",
    "saved_config",
    "load_checkpoint",
    "find_workdir",
    "load_config",
    "check_compatible",
]

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
# config.model fields that only steer post-processing: a checkpoint serves any value.
INFERENCE_FIELDS = frozenset({"score_threshold", "nms_threshold", "max_detections",
                              "order_pairs_eval", "occlusion", "occluder_score",
                              "order_rule", "min_hidden_fraction"})


class _QuietOrbax(pylogging.Filter):
    """Drops orbax's INFO records (dozens per checkpoint) and the warnings a read-only
    manager (``load_checkpoint``) always logs; keeps its other warnings."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        if f"{os.sep}orbax{os.sep}" not in record.pathname:
            return True
        if record.levelno < pylogging.WARNING:
            return False
        message = record.getMessage()
        return not ("read_only=True" in message or "directory is read only" in message)


def quiet_orbax_logs() -> None:
    """For the command-line tools: the absl log without orbax's routine chatter."""
    from absl import logging

    handler = logging.get_absl_handler()
    if not any(isinstance(f, _QuietOrbax) for f in handler.filters):
        handler.addFilter(_QuietOrbax())


def create_checkpoint_manager(workdir: str, checkpoint_config) -> ocp.CheckpointManager:
    """An orbax CheckpointManager in ``WORKDIR/checkpoints`` keeping the last k checkpoints.

    The loop decides when to save (every ``checkpoint.every_steps`` and at the end). Orbax
    writes each step to a temporary directory and renames it when complete, so a crash never
    leaves a half-written checkpoint that a restart would pick up.
    """
    options = ocp.CheckpointManagerOptions(max_to_keep=int(checkpoint_config.keep), create=True)
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR),
        options=options,
        item_names=("state", "config"),
    )


def save_checkpoint(manager: ocp.CheckpointManager, state, config) -> None:
    """Starts saving ``state`` (and the config as JSON) at step ``state.step``.

    Orbax finishes the write in the background; ``manager.wait_until_finished()`` (or
    ``close()``) waits for it.
    """
    manager.save(
        int(state.step),
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            config=ocp.args.JsonSave(json.loads(config.to_json())),
        ),
        force=True,
    )


def restore_checkpoint(manager: ocp.CheckpointManager, state) -> Any:
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
    """Reads a checkpoint without a model, onto this process's first device: for inference.

    Works whatever topology saved it (e.g. trained on 8 devices or 2 hosts, loaded on 1 CPU):
    the arrays are restored with the shapes and dtypes recorded in the checkpoint.

    Args:
      workdir: the training workdir (checkpoints live in ``WORKDIR/checkpoints``).
      step: which step; default the latest.

    Returns:
      ``{'step': int, 'params': pytree, 'batch_stats': pytree, 'config': dict}`` with jax
      arrays on ``jax.local_devices()[0]``.

    Raises:
      FileNotFoundError: when the workdir has no checkpoint.
    """
    directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    handlers = {"state": ocp.StandardCheckpointHandler(), "config": ocp.JsonCheckpointHandler()}
    with ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(read_only=True), item_handlers=handlers
    ) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {directory}: train first (sln_jax.main)")
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(
            lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device),
            manager.item_metadata(step)["state"],
        )
        restored = manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), config=ocp.args.JsonRestore()),
        )
    state = restored["state"]
    return {
        "step": int(step),
        "params": state["params"],
        "batch_stats": state["batch_stats"],
        "config": restored["config"],
    }



def saved_config(manager: ocp.CheckpointManager, step: int | None = None) -> dict[str, Any]:
    """The config saved with checkpoint ``step`` (default the latest) as a plain dict.

    Raises:
      FileNotFoundError: when the manager's directory holds no checkpoint.
    """
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {manager.directory}: train first")
    restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return restored["config"]


def find_workdir(path: str | os.PathLike) -> Path:
    """The training workdir named by ``path``: the workdir itself or its ``checkpoints``."""
    directory = Path(path)
    if directory.name == CHECKPOINT_DIR and not (directory / CHECKPOINT_DIR).exists():
        directory = directory.parent
    return directory


# Fields added to the config after checkpoints existed, with the value that reproduces a
# run saved without them (its model had no such part): a saved config is read through
# ``upgrade_config``, so older workdirs keep evaluating and predicting as they were trained.
ADDED_FIELDS = {
    ("model", "instance_context"): False,
    ("model", "order_head"): False,
    ("model", "occlusion"): "layers",
    ("model", "order_rule"): "soft",
    ("model", "occluder_score"): 0.5,
    ("model", "min_hidden_fraction"): 0.0,
    ("loss", "layers_form"): "softmax",
    ("model", "semantic_channels"): 0,
    ("model", "semantic_head"): False,
    ("loss", "semantic"): 1.0,
    ("data", "semantic_channels"): 0,
}


def upgrade_config(saved: dict) -> dict:
    """A copy of a saved config dict with every ``ADDED_FIELDS`` entry it lacks filled in."""
    upgraded = {key: dict(value) if isinstance(value, dict) else value
                for key, value in saved.items()}
    for (section, field), value in ADDED_FIELDS.items():
        if isinstance(upgraded.get(section), dict):
            upgraded[section].setdefault(field, value)
    return upgraded


def load_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """The config a training run saved in its workdir (``WORKDIR/config.json``, else the
    latest checkpoint's), for evaluating or predicting with the run as it was trained.

    Raises:
      FileNotFoundError: naming the workdir when it holds neither.
    """
    workdir = find_workdir(workdir)
    path = workdir / CONFIG_FILE
    if path.is_file():
        with open(path) as f:
            return ml_collections.ConfigDict(upgrade_config(json.load(f)))
    try:
        return ml_collections.ConfigDict(upgrade_config(load_checkpoint(str(workdir))["config"]))
    except FileNotFoundError:
        raise FileNotFoundError(f"{workdir}: no {CONFIG_FILE} and no checkpoint; is it a "
                                "training workdir (python -m sln_jax.main --workdir)?") from None


def check_compatible(config, saved: dict, where: str | os.PathLike) -> None:
    """Raises when a checkpoint was trained with another model config than ``config``.

    Args:
      config: the run's ConfigDict (``config.model`` is compared).
      saved: the checkpoint's config as a dict (``load_checkpoint(...)['config']``).
      where: the checkpoint's directory, for the message.

    Raises:
      ValueError: naming ``where`` and every differing field with both values.
    """
    saved_model = upgrade_config(saved).get("model", {}) if isinstance(saved, dict) else {}
    current = config.model.to_dict()
    differences = []
    for key, value in saved_model.items():
        if key in INFERENCE_FIELDS or (key not in current and ("model", key) in ADDED_FIELDS):
            continue
        here = current.get(key)
        if isinstance(value, list):
            value, here = tuple(value), tuple(here) if isinstance(here, (list, tuple)) else here
        if here != value:
            differences.append(f"model.{key}: checkpoint {value!r}, config {here!r}")
    if differences:
        raise ValueError(f"{where}: checkpoint does not match --config ("
                         + "; ".join(differences) + ")")
