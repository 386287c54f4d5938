"""The model's convolution layer: ``nn.Conv``'s parameters and function, faster gradients.

``Conv`` has ``flax.linen.Conv``'s attributes (the subset the model uses), parameters (a
``kernel`` [kh, kw, C, D] then a ``bias`` [D], same initialisers, same names, so
checkpoints, ``models.pretrained`` and ``models.torchvision_import`` read it unchanged) and
forward pass, for NHWC inputs. Two gradients differ from what ``nn.Conv`` hands XLA:

* the convolution is ``sln_jax.ops.conv.conv_general_dilated``: 1 x 1 kernels get their
  weight gradient as one matrix product, 2.3-2.6x faster than XLA:CPU's lowering;
* the bias is added by ``sln_jax.ops.conv.add_bias``: its gradient, the sum of the incoming
  gradient over batch and space, is a product with a row of ones instead of XLA:CPU's column
  reduction (~10x faster on the layering head's and the P2 level's activations).

Every convolution of ``sln_jax.models`` is built with it.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import dtypes
from flax.linen.linear import canonicalize_padding, default_kernel_init

from sln_jax.ops.conv import NHWC, add_bias, conv_general_dilated

__all__ = ["Conv"]

def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"Conv {what} must be an int or two ints, got {value!r}")
    return pair


class Conv(nn.Module):
    """2-D convolution of NHWC arrays, ``nn.Conv``'s equal (see the module docstring).

    Attributes:
      features: D, output channels.
      kernel_size: (kh, kw).
      strides: int or (sh, sw).
      padding: 'SAME', 'VALID', an int p (p on every side), or ((top, bottom), (left,
        right)), as ``nn.Conv``.
      kernel_dilation: int or (dh, dw).
      use_bias: add a learned [D] bias.
      dtype: computation dtype (None: promoted from the input and the parameters).
      param_dtype: parameter dtype.
      precision: ``lax`` precision of the convolution.
      kernel_init, bias_init: initialisers (``nn.Conv``'s defaults).
      conv_general_dilated: the convolution function (``ops.conv``'s by default).
    """
    features: int
    kernel_size: Sequence[int]
    strides: int | Sequence[int] = 1
    padding: Any = "SAME"
    kernel_dilation: int | Sequence[int] = 1
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Callable = default_kernel_init
    bias_init: Callable = nn.initializers.zeros_init()
    conv_general_dilated: Callable = conv_general_dilated

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        """inputs: [N, H, W, C] -> [N, H', W', D] in the computation dtype."""
        if inputs.ndim != 4:
            raise ValueError(f"Conv expects NHWC inputs [N, H, W, C], got shape {inputs.shape}")
        kernel_size = _pair(tuple(self.kernel_size), "kernel_size")
        padding = canonicalize_padding(self.padding, 2)
        if isinstance(padding, str) and padding not in ("SAME", "VALID"):
            raise ValueError(f"Conv padding {padding!r} is not supported (SAME, VALID or pads)")
        kernel = self.param("kernel", self.kernel_init,
                            kernel_size + (inputs.shape[-1], self.features), self.param_dtype)
        bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
                if self.use_bias else None)
        inputs, kernel, bias = dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        y = self.conv_general_dilated(
            inputs, kernel, _pair(self.strides, "strides"), padding,
            rhs_dilation=_pair(self.kernel_dilation, "kernel_dilation"),
            dimension_numbers=NHWC, precision=self.precision)
        return add_bias(y, bias) if bias is not None else y
