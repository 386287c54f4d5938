"""Convolution for the model's Flax convs: ``lax.conv_general_dilated`` with a faster gradient.

``conv_general_dilated`` has ``lax.conv_general_dilated``'s signature and is the convolution
of every ``sln_jax.models.layers.Conv`` (which adds its bias with ``add_bias``, below).
Its forward pass is ``lax.conv_general_dilated`` itself. What differs is the weight gradient of
1 x 1 convolutions (NHWC, no dilation, no groups, no padding), which every ResNet bottleneck
has two or three of, and the FPN, RPN and ROI heads several:

    dW [1, 1, C, D] = x[:, ::s, ::s].reshape(-1, C).T @ g.reshape(-1, D)

one matrix product over the batch and spatial positions. XLA lowers the same gradient to a
convolution whose "batch" is the channel axis, with a transposed copy of the activations and
of the incoming gradient in front of it. On XLA:CPU that path is 2.3-2.6x slower than the
plain product (2-core AVX-512 Xeon, f32 [2, 128, 128, 256] x [2, 128, 128, 64]: 31-33 ms
against 13 ms; ResNet-50 + FPN forward + backward at 512 px: 2077 -> 1602 ms per image).
``jnp.einsum('nhwc,nhwd->cd')`` on the 4-D arrays is as slow as XLA's own lowering (31 ms): the
2-D reshape is what makes it fast. On GPU and TPU the product is what cuDNN / XLA:TPU do for a
1 x 1 convolution's weight gradient anyway, so nothing is lost there. 3 x 3 and larger kernels
keep XLA's gradient: written as nine shifted products it was not faster on this CPU (22-73 ms
against 20-31 ms).

The input gradient and every other convolution are ``lax.conv_general_dilated``'s own; the
results equal XLA's up to float summation order (relative 1e-6 in f32; tested).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["NHWC", "add_bias", "conv_general_dilated"]

# The model's dimension numbers: activations NHWC, kernels HWIO.
NHWC = ("NHWC", "HWIO", "NHWC")


def _conv(x: jax.Array, w: jax.Array, strides: tuple[int, int], precision) -> jax.Array:
    return lax.conv_general_dilated(x, w, strides, "VALID", dimension_numbers=NHWC,
                                    precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_1x1(x: jax.Array, w: jax.Array, strides: tuple[int, int], precision) -> jax.Array:
    """x [N, H, W, C], w [1, 1, C, D] -> [N, ceil(H/s), ceil(W/s), D], unpadded."""
    return _conv(x, w, strides, precision)


def _conv_1x1_fwd(x, w, strides, precision):
    return _conv(x, w, strides, precision), (x, w)


def _conv_1x1_bwd(strides, precision, residuals, g):
    x, w = residuals
    dx = jax.vjp(lambda x_: _conv(x_, w, strides, precision), x)[1](g)[0]
    sub = x[:, ::strides[0], ::strides[1]] if strides != (1, 1) else x
    dw = jnp.matmul(sub.reshape(-1, sub.shape[-1]).T, g.reshape(-1, g.shape[-1]),
                    precision=precision, preferred_element_type=jnp.float32)
    return dx, dw.astype(w.dtype).reshape(w.shape)


_conv_1x1.defvjp(_conv_1x1_fwd, _conv_1x1_bwd)


def _is_nhwc(lhs, rhs, dimension_numbers) -> bool:
    if dimension_numbers is None:
        return False
    want = lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
    return lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == want


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision=None,
                         preferred_element_type=None) -> jax.Array:
    """``lax.conv_general_dilated``, with the matrix-product weight gradient for 1 x 1 kernels.

    Same arguments and result as ``lax.conv_general_dilated``. The fast path takes NHWC /
    HWIO / NHWC convolutions with a [1, 1, C, D] kernel, zero padding, no dilation, one
    feature and batch group and the default output type; any other call is passed through.
    """
    unit = lambda d: d is None or all(int(v) == 1 for v in d)  # noqa: E731
    if (lhs.ndim == 4 and rhs.ndim == 4 and tuple(rhs.shape[:2]) == (1, 1)
            and unit(lhs_dilation) and unit(rhs_dilation) and feature_group_count == 1
            and batch_group_count == 1 and preferred_element_type is None
            and _is_nhwc(lhs, rhs, dimension_numbers)):
        strides = tuple(int(s) for s in window_strides)
        pads = (lax.padtype_to_pads(lhs.shape[1:3], (1, 1), strides, padding)
                if isinstance(padding, str) else padding)
        if all(tuple(p) == (0, 0) for p in pads):
            return _conv_1x1(lhs, rhs, strides, precision)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    batch_group_count, precision, preferred_element_type)


@jax.custom_vjp
def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """``y + bias`` over the last axis, with the bias gradient as one matrix product.

    The bias gradient of a convolution is the sum of the incoming gradient over the batch
    and spatial axes. XLA:CPU runs that column reduction at ~0.7 G elements/s: 12-14 ms
    for [2, 128, 128, 256] or [64, 16, 16, 256] f32 (a P2 level at 512 px; the layering
    head's 64 ROIs), where ``ones[1, M] @ g.reshape(M, C)`` takes 0.8-1.3 ms (2-core
    AVX-512 Xeon). On GPU and TPU the product is as good as a reduction.

    Args:
      y: [..., C] (float32 or bfloat16).
      bias: [C], cast to y's dtype for the sum.

    Returns:
      [..., C] in y's dtype. The bias gradient is accumulated in float32 and returned in
      the bias's dtype; equal to the reduction's up to float summation order.
    """
    return y + bias.astype(y.dtype)


def _add_bias_fwd(y, bias):
    return y + bias.astype(y.dtype), bias


def _add_bias_bwd(bias, g):
    rows = g.reshape(-1, g.shape[-1])
    ones = jnp.ones((1, rows.shape[0]), g.dtype)
    db = jnp.matmul(ones, rows, preferred_element_type=jnp.float32)[0]
    return g, db.astype(bias.dtype)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)
