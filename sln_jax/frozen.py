"""Frozen parameters by config: ``config.train.frozen``, a tuple of path regex patterns.

A parameter is frozen when one of the patterns matches (``re.search``) its path in the
``params`` collection written with slashes, e.g. ``backbone/layer2_0/conv1/kernel``. So
``('^backbone/',)`` freezes the whole ResNet (C1-C5, as the reference code does for all of its
training: its 'heads' stage sets ``requires_grad = False`` on the ResNet and no later stage sets
it back), ``('^backbone/(conv1|bn1|layer1_)',)`` only the stem and the first stage.

Frozen parameters:

* are left out of the optimizer: ``freeze(tx, patterns)`` is ``optax.multi_transform`` with
  ``tx`` on the trainable leaves and ``optax.set_to_zero()`` on the frozen ones, so they get no
  optimizer state (no momentum / Adam moments in memory), no weight decay, and do not count in
  the gradient-clipping norm (as in the reference, whose ``clip_grad_norm_`` skips parameters
  without gradients);
* get a zero gradient in the train step (``zero_frozen``): nothing reads their true gradient,
  so XLA drops the backward pass into a fully frozen backbone.

BatchNorm statistics (``batch_stats``) are never trained whatever the patterns say.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax

__all__ = ["param_path", "frozen_mask", "freeze", "zero_frozen", "count_params",
           "describe"]

PyTree = Any

TRAINABLE, FROZEN = "trainable", "frozen"


def param_path(path) -> str:
    """'backbone/layer1_0/conv1/kernel' from a jax key path of a params tree."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _compile(patterns: Sequence[str]) -> list[re.Pattern]:
    if isinstance(patterns, str):
        raise ValueError(f"config.train.frozen must be a tuple of patterns, got the string "
                         f"{patterns!r} (write ({patterns!r},))")
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as err:
            raise ValueError(f"config.train.frozen: bad pattern {pattern!r} ({err})") from err
    return compiled


def frozen_mask(params: PyTree, patterns: Sequence[str]) -> PyTree:
    """The params structure with bool leaves: True where a pattern matches the leaf's path."""
    compiled = _compile(patterns)
    return jax.tree_util.tree_map_with_path(
        lambda path, _: any(p.search(param_path(path)) for p in compiled), params)


def freeze(tx: optax.GradientTransformation,
           patterns: Sequence[str]) -> optax.GradientTransformation:
    """``tx`` on the trainable leaves, zero updates and no state for the frozen ones.

    Returns ``tx`` itself when ``patterns`` is empty (the optimizer state keeps its
    structure, so checkpoints of runs without frozen parameters are unchanged).
    """
    if not patterns:
        return tx
    _compile(patterns)

    def labels(params):
        return jax.tree.map(lambda frozen: FROZEN if frozen else TRAINABLE,
                            frozen_mask(params, patterns))

    return optax.multi_transform({TRAINABLE: tx, FROZEN: optax.set_to_zero()}, labels)


def zero_frozen(grads: PyTree, patterns: Sequence[str]) -> PyTree:
    """``grads`` with zeros (no data dependency on the gradient) on the frozen leaves."""
    if not patterns:
        return grads
    mask = frozen_mask(grads, patterns)
    return jax.tree.map(lambda g, frozen: jnp.zeros(g.shape, g.dtype) if frozen else g,
                        grads, mask)


def count_params(params: PyTree, patterns: Sequence[str]) -> tuple[int, int]:
    """(trainable, frozen) numbers of scalar parameters.

    Raises:
      ValueError: naming a pattern that matches no parameter (a typo would otherwise
        silently train everything).
    """
    compiled = _compile(patterns)
    paths = [(param_path(path), leaf)
             for path, leaf in jax.tree_util.tree_leaves_with_path(params)]
    for pattern in compiled:
        if not any(pattern.search(path) for path, _ in paths):
            example = paths[0][0] if paths else "(no parameters)"
            raise ValueError(f"config.train.frozen: pattern {pattern.pattern!r} matches no "
                             f"parameter (paths look like {example!r})")
    trainable = frozen = 0
    for path, leaf in paths:
        size = int(getattr(leaf, "size", 1))
        if any(p.search(path) for p in compiled):
            frozen += size
        else:
            trainable += size
    return trainable, frozen


def describe(params: PyTree, patterns: Sequence[str]) -> str:
    """One start-up line: 'parameters: 12,345 trainable, 6,789 frozen (patterns ...)'."""
    trainable, frozen = count_params(params, patterns)
    line = f"parameters: {trainable:,} trainable, {frozen:,} frozen"
    if patterns:
        line += f" (config.train.frozen = {tuple(patterns)})"
    return line
