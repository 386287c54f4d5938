"""sln_jax.ops.pool: nn.max_pool's values, its gradient (with ties), and no scatter."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sln_jax.ops import pool as pool_ops

CASES = [
    # (input H, W), window, strides, padding
    ((9, 9), (3, 3), (2, 2), ((1, 1), (1, 1))),   # the ResNet stem
    ((8, 10), (3, 3), (2, 2), ((1, 1), (1, 1))),  # even sides: the last row is padding only
    ((7, 7), (2, 2), (2, 2), "VALID"),
    ((6, 9), (3, 2), (1, 3), ((0, 2), (1, 0))),
    ((5, 5), (1, 1), (2, 2), "VALID"),
]


def _flax(x, window, strides, padding):
    return nn.max_pool(x, window, strides, padding=padding)


def _ours(x, window, strides, padding):
    return pool_ops.max_pool(x, window, strides, padding=padding)


@pytest.mark.parametrize("hw,window,strides,padding", CASES)
def test_values_and_gradient_equal_flax(hw, window, strides, padding):
    kx, kg = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (2, *hw, 3))
    args = (window, strides, padding)
    ours = _ours(x, *args)
    np.testing.assert_array_equal(ours, _flax(x, *args))
    g = jax.random.normal(kg, ours.shape)
    ours_dx = jax.vjp(lambda a: _ours(a, *args), x)[1](g)[0]
    ref_dx = jax.vjp(lambda a: _flax(a, *args), x)[1](g)[0]
    # Positions that are the maximum of several windows sum their gradients in another
    # order than XLA's scatter; which positions get a gradient is the same.
    np.testing.assert_array_equal(ours_dx != 0, ref_dx != 0)
    np.testing.assert_allclose(ours_dx, ref_dx, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("hw,window,strides,padding", CASES)
def test_ties_go_where_select_and_scatter_sends_them(hw, window, strides, padding):
    """Values in {0, 1, 2} (ties everywhere, as after a ReLU) and integer gradients (sums
    exact in float32): the gradient equals XLA's select_and_scatter's bit for bit."""
    kx, kg = jax.random.split(jax.random.key(1))
    x = jax.random.randint(kx, (3, *hw, 4), 0, 3).astype(jnp.float32)
    args = (window, strides, padding)
    g = jax.random.randint(kg, _flax(x, *args).shape, -4, 5).astype(jnp.float32)
    ours_dx = jax.vjp(lambda a: _ours(a, *args), x)[1](g)[0]
    ref_dx = jax.vjp(lambda a: _flax(a, *args), x)[1](g)[0]
    np.testing.assert_array_equal(ours_dx, ref_dx)


def test_gradient_has_no_scatter_or_gather_and_jits_under_vmap():
    x = jax.random.normal(jax.random.key(2), (2, 16, 16, 8))
    args = ((3, 3), (2, 2), ((1, 1), (1, 1)))
    grad = jax.grad(lambda a: jnp.sum(_ours(a, *args) ** 2))
    hlo = jax.jit(grad).lower(x).as_text()
    assert "scatter" not in hlo and "gather" not in hlo and "select_and_scatter" not in hlo
    ref_hlo = jax.jit(jax.grad(lambda a: jnp.sum(_flax(a, *args) ** 2))).lower(x).as_text()
    assert "select_and_scatter" in ref_hlo  # what ops.pool replaces
    batched = jax.vmap(grad)(x[:, None])
    np.testing.assert_allclose(batched[:, 0], grad(x), rtol=1e-6, atol=1e-6)


def test_bfloat16_keeps_its_dtype():
    x = jax.random.normal(jax.random.key(3), (1, 8, 8, 2)).astype(jnp.bfloat16)
    args = ((3, 3), (2, 2), ((1, 1), (1, 1)))
    y, vjp = jax.vjp(lambda a: _ours(a, *args), x)
    assert y.dtype == jnp.bfloat16 and vjp(jnp.ones_like(y))[0].dtype == jnp.bfloat16
    np.testing.assert_array_equal(y, _flax(x, *args))


@pytest.mark.parametrize("kwargs,message", [
    ({"window": (3,)}, "two ints"),
    ({"window": (3, 3), "strides": (0, 1)}, "two ints"),
    ({"window": (3, 3), "padding": "SAME"}, "'VALID' or explicit"),
    ({"window": (3, 3), "padding": ((1, 1), (-1, 0))}, "pairs >= 0"),
    ({"window": (9, 9)}, "larger than the padded input"),
])
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pool_ops.max_pool(jnp.zeros((1, 4, 4, 1)), **kwargs)
    with pytest.raises(ValueError, match="NHWC"):
        pool_ops.max_pool(jnp.zeros((4, 4, 1)), (2, 2))
