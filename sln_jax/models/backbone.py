"""ResNet backbones and the feature pyramid network (FPN), in Flax linen.

* ``ResNet``: torchvision-layout ResNet (v1.5: the stride of a bottleneck block sits on its
  3x3 conv) with depth 18 / 50 / 101, or ``resnet_tiny``: one basic block per stage with a
  configurable base width, for tests and CPU training. Returns C2..C5 (strides 4..32).
* ``FPN``: lateral 1x1 convs, nearest top-down upsampling, 3x3 output convs; P6 is a stride-2
  subsampling of P5 (as in Mask R-CNN), so the pyramid is P2..P6 at strides 4..64.

Normalization: ``frozen_bn`` as in the reference (statistics in the ``batch_stats``
collection, always used in inference mode, never updated; scale and bias in ``params``), or
``group_norm`` (32 groups, or fewer when the width is small), better for training from scratch.

Module names follow torchvision's state-dict keys (``conv1``, ``bn1``, ``layer2_0`` ...) so
``sln_jax.models.pretrained`` maps weights by name.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sln_jax.models.layers import Conv
from sln_jax.ops.conv import add_bias, conv_general_dilated
from sln_jax.ops.pool import max_pool

__all__ = ["ResNet", "FPN", "Norm", "resnet_spec", "BACKBONES"]

# name -> (block kind, blocks per stage)
BACKBONES = {
    "resnet_tiny": ("basic", (1, 1, 1, 1)),
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
}


def resnet_spec(name: str) -> tuple[str, tuple[int, ...]]:
    """(block kind 'basic' | 'bottleneck', blocks per stage) of a backbone name."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name]


class FrozenBatchNorm(nn.Module):
    """BatchNorm in inference mode, as the per-channel affine map it is.

    Its variables are ``nn.BatchNorm``'s, under the same names and with the same initial
    values (``params``: ``scale``, ``bias``; ``batch_stats``: ``mean``, ``var``), so
    checkpoints and ``sln_jax.models.pretrained`` read them unchanged. The statistics are
    constants of the model; scale and bias train.
    """
    zero_init: bool = False

    @nn.compact
    def __call__(self, channels: int) -> tuple[jax.Array, jax.Array]:
        """-> (multiplier, offset), float32 [channels] each: norm(y) = y * multiplier + offset."""
        scale = self.param("scale", nn.initializers.zeros if self.zero_init
                           else nn.initializers.ones, (channels,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
        var = self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32)
        multiplier = scale * jax.lax.rsqrt(var.value + 1e-5)
        return multiplier, bias - mean.value * multiplier


class Norm(nn.Module):
    """Frozen BatchNorm or GroupNorm over the channel axis.

    Attributes:
      kind: 'frozen_bn' | 'group_norm'.
      zero_init: start with scale 0 (last norm of a residual branch, so blocks start as
        identities; used for group_norm and for tiny nets trained from scratch).
    """
    kind: str
    zero_init: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., C] -> [..., C] normalized."""
        if self.kind == "frozen_bn":
            multiplier, offset = FrozenBatchNorm(self.zero_init, name="bn")(x.shape[-1])
            return (x * multiplier + offset).astype(self.dtype)
        if self.kind == "group_norm":
            channels = x.shape[-1]
            groups = min(32, channels)
            while channels % groups:
                groups -= 1
            scale_init = nn.initializers.zeros if self.zero_init else nn.initializers.ones
            return nn.GroupNorm(num_groups=groups, epsilon=1e-5, scale_init=scale_init,
                                dtype=self.dtype, name="gn")(x)
        raise ValueError(f"unknown norm {self.kind!r}; choose 'frozen_bn' or 'group_norm'")


class _FrozenBatchNormAffine(nn.Module):
    """A ``Norm('frozen_bn')``'s affine map without applying it: same variable paths."""
    zero_init: bool = False

    @nn.compact
    def __call__(self, channels: int) -> tuple[jax.Array, jax.Array]:
        return FrozenBatchNorm(self.zero_init, name="bn")(channels)


def _conv(features: int, kernel: int, stride: int, name: str, dtype,
          conv=conv_general_dilated) -> Conv:
    return Conv(features, (kernel, kernel), (stride, stride),
                padding=[(kernel // 2, kernel // 2)] * 2, use_bias=False,
                kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                dtype=dtype, name=name, conv_general_dilated=conv)


def conv_norm(x: jax.Array, features: int, kernel: int, stride: int, norm: str, dtype,
              conv_name: str, norm_name: str, zero_init: bool = False) -> jax.Array:
    """``Norm(norm)(conv(x))`` under the names ``conv_name`` / ``norm_name``, inside a compact
    method. x: [B, H, W, C] -> [B, H/stride, W/stride, features].

    With 'frozen_bn' the norm is an affine map, folded into the convolution: conv(x, kernel *
    multiplier) + offset. Same function and gradients (up to float rounding), one pass over
    the activations fewer each way: the norm's multiply in the forward pass, and in the
    backward pass the multiply into the conv's gradient and the reduction over the
    activations for the scale's gradient (which becomes a [k, k, C, D] product with the
    kernel's gradient). ResNet-50 + FPN forward + backward at 512 px on the 2-core CPU:
    1602 -> 1417-1452 ms per image (README; with no norm at all: 1275 ms).
    """
    if norm != "frozen_bn":
        y = _conv(features, kernel, stride, conv_name, dtype)(x)
        return Norm(norm, zero_init=zero_init, dtype=dtype, name=norm_name)(y)
    multiplier, offset = _FrozenBatchNormAffine(zero_init, name=norm_name)(features)

    def folded(lhs, rhs, *args, **kwargs):
        return conv_general_dilated(lhs, rhs * multiplier.astype(rhs.dtype), *args, **kwargs)

    y = _conv(features, kernel, stride, conv_name, dtype, conv=folded)(x)
    return add_bias(y, offset)


class BasicBlock(nn.Module):
    """Two 3x3 convs; ``features`` output channels."""
    features: int
    stride: int
    norm: str
    dtype: jnp.dtype = jnp.float32
    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        f, norm, dtype = self.features, self.norm, self.dtype
        y = nn.relu(conv_norm(x, f, 3, self.stride, norm, dtype, "conv1", "bn1"))
        y = conv_norm(y, f, 3, 1, norm, dtype, "conv2", "bn2", zero_init=True)
        if self.stride != 1 or x.shape[-1] != f:
            x = conv_norm(x, f, 1, self.stride, norm, dtype, "downsample_conv", "downsample_bn")
        return nn.relu(x + y)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 convs; ``4 * features`` output channels."""
    features: int
    stride: int
    norm: str
    dtype: jnp.dtype = jnp.float32
    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        f, out, norm, dtype = self.features, self.features * 4, self.norm, self.dtype
        y = nn.relu(conv_norm(x, f, 1, 1, norm, dtype, "conv1", "bn1"))
        y = nn.relu(conv_norm(y, f, 3, self.stride, norm, dtype, "conv2", "bn2"))
        y = conv_norm(y, out, 1, 1, norm, dtype, "conv3", "bn3", zero_init=True)
        if self.stride != 1 or x.shape[-1] != out:
            x = conv_norm(x, out, 1, self.stride, norm, dtype, "downsample_conv", "downsample_bn")
        return nn.relu(x + y)


class ResNet(nn.Module):
    """ResNet trunk returning C2..C5.

    Attributes:
      depth: 'resnet_tiny' | 'resnet18' | 'resnet50' | 'resnet101'.
      norm: 'frozen_bn' | 'group_norm'.
      width: base width (64 in the standard nets; ``backbone_width`` for the tiny one).
    """
    depth: str = "resnet50"
    norm: str = "frozen_bn"
    width: int = 64
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> list[jax.Array]:
        """images: float32 [B, S, S, 3] -> [C2, C3, C4, C5], C_l: [B, S/2^l, S/2^l, ch_l]
        with ch_l = width * 2^(l-2) * expansion (expansion 1 basic, 4 bottleneck)."""
        kind, blocks = resnet_spec(self.depth)
        block_cls = BasicBlock if kind == "basic" else Bottleneck
        x = images.astype(self.dtype)
        x = nn.relu(conv_norm(x, self.width, 7, 2, self.norm, self.dtype, "conv1", "bn1"))
        # torchvision pads the max pool with -inf (padding=1). ops.pool's gradient is
        # nn.max_pool's without XLA:CPU's scatter (124 -> 46 ms per step at 512 px).
        x = max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        outputs = []
        for stage, count in enumerate(blocks):
            for i in range(count):
                stride = 2 if (i == 0 and stage > 0) else 1
                x = block_cls(self.width * 2 ** stage, stride, self.norm, dtype=self.dtype,
                              name=f"layer{stage + 1}_{i}")(x)
            outputs.append(x)
        return outputs


class FPN(nn.Module):
    """Feature pyramid: C2..C5 -> P2..P6, all with ``features`` channels.

    Attributes:
      features: output channels (``fpn_dim``; 256 in the paper).
    """
    features: int = 256
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, inputs: Sequence[jax.Array]) -> list[jax.Array]:
        """inputs: [C2..C5], C_l [B, S/2^l, S/2^l, *] -> [P2..P6], P_l float [B, S/2^l, S/2^l,
        features]. S must be divisible by 64 for P6."""
        init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")  # kaiming_uniform(a=1)
        laterals = [Conv(self.features, (1, 1), kernel_init=init, dtype=self.dtype,
                         name=f"lateral{i + 2}")(c) for i, c in enumerate(inputs)]
        merged = [laterals[-1]]
        for lateral in reversed(laterals[:-1]):
            top = merged[0]
            up = jnp.repeat(jnp.repeat(top, 2, axis=1), 2, axis=2)
            merged.insert(0, lateral + up[:, :lateral.shape[1], :lateral.shape[2]])
        outputs = [Conv(self.features, (3, 3), padding=1, kernel_init=init,
                        dtype=self.dtype, name=f"output{i + 2}")(m)
                   for i, m in enumerate(merged)]
        outputs.append(outputs[-1][:, ::2, ::2])  # P6: max_pool(k=1, s=2) of P5
        return outputs
