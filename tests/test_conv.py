"""sln_jax.ops.conv: lax's convolution, its gradients, and the 1 x 1 fast path's coverage."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from sln_jax.models.layers import Conv
from sln_jax.ops import conv as conv_ops

NHWC = ("NHWC", "HWIO", "NHWC")


def _inputs(shape, kernel, seed=0):
    kx, kw, kg = jax.random.split(jax.random.key(seed), 3)
    return jax.random.normal(kx, shape), jax.random.normal(kw, kernel) * 0.1, kg


@pytest.mark.parametrize("size,stride,padding", [
    (8, 1, "SAME"), (8, 2, "SAME"), (9, 2, "VALID"), (7, 3, ((0, 0), (0, 0))), (6, 1, "VALID"),
])
def test_1x1_values_and_gradients_equal_lax(size, stride, padding):
    x, w, kg = _inputs((2, size, size, 5), (1, 1, 5, 3))
    args = ((stride, stride), padding)
    kwargs = {"dimension_numbers": NHWC}
    ours = conv_ops.conv_general_dilated(x, w, *args, **kwargs)
    ref = lax.conv_general_dilated(x, w, *args, **kwargs)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
    g = jax.random.normal(kg, ref.shape)
    ours_dx, ours_dw = jax.vjp(lambda a, b: conv_ops.conv_general_dilated(a, b, *args, **kwargs),
                               x, w)[1](g)
    ref_dx, ref_dw = jax.vjp(lambda a, b: lax.conv_general_dilated(a, b, *args, **kwargs),
                             x, w)[1](g)
    np.testing.assert_allclose(ours_dx, ref_dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours_dw, ref_dw, rtol=1e-5, atol=1e-5)


def test_1x1_takes_the_matrix_product_gradient_and_others_pass_through():
    """The fast path's gradient (a dot_general where lax's transpose rule writes a
    weight-gradient convolution) is what runs for unpadded 1 x 1 NHWC convolutions, and
    for nothing else."""
    def grad_jaxpr(kernel, padding, dilation=None):
        x, w, _ = _inputs((1, 6, 6, 4), kernel)
        fn = lambda w_: conv_ops.conv_general_dilated(  # noqa: E731
            x, w_, (1, 1), padding, rhs_dilation=dilation, dimension_numbers=NHWC).sum()
        return str(jax.make_jaxpr(jax.grad(fn))(w))

    fast = grad_jaxpr((1, 1, 4, 2), "SAME")
    assert "dot_general" in fast
    for kernel, padding, dilation in [((3, 3, 4, 2), "SAME", None),
                                      ((1, 1, 4, 2), ((1, 1), (1, 1)), None),
                                      ((1, 1, 4, 2), "SAME", (2, 2))]:
        assert "dot_general" not in grad_jaxpr(kernel, padding, dilation)


def test_bfloat16_gradient_accumulates_in_float32():
    x, w, kg = _inputs((2, 16, 16, 8), (1, 1, 8, 4))
    x16, w16 = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    fn = lambda a, b: conv_ops.conv_general_dilated(a, b, (1, 1), "SAME",  # noqa: E731
                                                    dimension_numbers=NHWC)
    g = jax.random.normal(kg, (2, 16, 16, 4)).astype(jnp.bfloat16)
    dx, dw = jax.vjp(fn, x16, w16)[1](g)
    assert dx.dtype == dw.dtype == jnp.bfloat16
    ref_dw = jnp.einsum("nhwc,nhwd->cd", x16.astype(jnp.float32), g.astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(dw[0, 0], np.float32), ref_dw, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("kwargs", [
    {"kernel_size": (1, 1), "strides": (2, 2)},
    {"kernel_size": (3, 3)},
    {"kernel_size": (3, 3), "padding": 1, "strides": 2},
    {"kernel_size": (3, 3), "padding": ((1, 1), (1, 1)), "use_bias": False},
    {"kernel_size": (3, 3), "padding": "VALID", "kernel_dilation": 2},
    {"kernel_size": (1, 1), "kernel_init": jax.nn.initializers.normal(0.5),
     "bias_init": jax.nn.initializers.ones},
])
def test_flax_conv_layer_keeps_nn_conv_parameters_and_outputs(kwargs):
    """Same parameter tree and initial values (so checkpoints and weight imports read it),
    same outputs, same gradients up to float summation order."""
    import flax.linen as nn
    x, _, _ = _inputs((2, 9, 9, 6), (1, 1, 6, 3))
    ours, ref = Conv(4, **kwargs), nn.Conv(4, **kwargs)
    variables = ref.init(jax.random.key(1), x)
    mine = ours.init(jax.random.key(1), x)
    assert jax.tree.structure(mine) == jax.tree.structure(variables)
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(variables)):
        np.testing.assert_array_equal(a, b)
    loss = lambda v, m: (m.apply(v, x) ** 2).sum()  # noqa: E731
    np.testing.assert_allclose(ours.apply(variables, x), ref.apply(variables, x),
                               rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(jax.grad(loss)(variables, ours)),
                    jax.tree.leaves(jax.grad(loss)(variables, ref))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_flax_conv_layer_bfloat16_and_bad_input():
    import flax.linen as nn
    x, _, _ = _inputs((1, 6, 6, 3), (1, 1, 3, 2))
    ours, ref = Conv(2, (3, 3), dtype=jnp.bfloat16), nn.Conv(2, (3, 3), dtype=jnp.bfloat16)
    variables = ref.init(jax.random.key(0), x)
    out = ours.apply(variables, x)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(out, ref.apply(variables, x))
    with pytest.raises(ValueError, match="NHWC"):
        Conv(2, (3, 3)).init(jax.random.key(0), x[0])
    with pytest.raises(ValueError, match="not supported"):
        Conv(2, (3, 3), padding="CIRCULAR").init(jax.random.key(0), x)


@pytest.mark.parametrize("shape", [(2, 5, 7, 3), (4, 16), (3,)])
def test_add_bias_values_and_gradients_equal_plain_add(shape):
    ky, kb, kg = jax.random.split(jax.random.key(4), 3)
    y, b = jax.random.normal(ky, shape), jax.random.normal(kb, shape[-1:])
    g = jax.random.normal(kg, shape)
    ours, (dy, db) = conv_ops.add_bias(y, b), jax.vjp(conv_ops.add_bias, y, b)[1](g)
    ref, (ref_dy, ref_db) = y + b, jax.vjp(lambda a, c: a + c, y, b)[1](g)
    np.testing.assert_array_equal(ours, ref)
    np.testing.assert_array_equal(dy, ref_dy)
    np.testing.assert_allclose(db, ref_db, rtol=1e-5, atol=1e-5)


def test_add_bias_gradient_is_a_product_accumulated_in_float32():
    """The bias gradient is a dot_general with a row of ones (no reduce_sum over the
    activations); in bfloat16 it is accumulated in float32, and the bias keeps its dtype."""
    y = jax.random.normal(jax.random.key(5), (8, 16, 16, 4))
    b = jnp.zeros((4,))
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda b_: conv_ops.add_bias(y, b_).sum()))(b))
    assert "dot_general" in jaxpr and "reduce_sum" not in jaxpr.split("dot_general")[1]
    g = jnp.full(y.shape, 1.0 / 64, jnp.bfloat16)  # 2048 terms of 1/64 per channel: 32
    db = jax.vjp(conv_ops.add_bias, y.astype(jnp.bfloat16), b)[1](g)[1]
    assert db.dtype == jnp.float32
    np.testing.assert_array_equal(db, np.full(4, 32.0, np.float32))
