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
        scale_init = nn.initializers.zeros if self.zero_init else nn.initializers.ones
        if self.kind == "frozen_bn":
            # Always inference mode: the running statistics are constants of the model.
            return nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5,
                                scale_init=scale_init, dtype=self.dtype, name="bn")(x)
        if self.kind == "group_norm":
            channels = x.shape[-1]
            groups = min(32, channels)
            while channels % groups:
                groups -= 1
            return nn.GroupNorm(num_groups=groups, epsilon=1e-5, scale_init=scale_init,
                                dtype=self.dtype, name="gn")(x)
        raise ValueError(f"unknown norm {self.kind!r}; choose 'frozen_bn' or 'group_norm'")


def _conv(features: int, kernel: int, stride: int, name: str, dtype) -> nn.Conv:
    return nn.Conv(features, (kernel, kernel), (stride, stride),
                   padding=[(kernel // 2, kernel // 2)] * 2, use_bias=False,
                   kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                   dtype=dtype, name=name)


class BasicBlock(nn.Module):
    """Two 3x3 convs; ``features`` output channels."""
    features: int
    stride: int
    norm: str
    dtype: jnp.dtype = jnp.float32
    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = _conv(self.features, 3, self.stride, "conv1", self.dtype)(x)
        y = nn.relu(Norm(self.norm, dtype=self.dtype, name="bn1")(y))
        y = _conv(self.features, 3, 1, "conv2", self.dtype)(y)
        y = Norm(self.norm, zero_init=True, dtype=self.dtype, name="bn2")(y)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = _conv(self.features, 1, self.stride, "downsample_conv", self.dtype)(x)
            x = Norm(self.norm, dtype=self.dtype, name="downsample_bn")(x)
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
        out = self.features * 4
        y = _conv(self.features, 1, 1, "conv1", self.dtype)(x)
        y = nn.relu(Norm(self.norm, dtype=self.dtype, name="bn1")(y))
        y = _conv(self.features, 3, self.stride, "conv2", self.dtype)(y)
        y = nn.relu(Norm(self.norm, dtype=self.dtype, name="bn2")(y))
        y = _conv(out, 1, 1, "conv3", self.dtype)(y)
        y = Norm(self.norm, zero_init=True, dtype=self.dtype, name="bn3")(y)
        if self.stride != 1 or x.shape[-1] != out:
            x = _conv(out, 1, self.stride, "downsample_conv", self.dtype)(x)
            x = Norm(self.norm, dtype=self.dtype, name="downsample_bn")(x)
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
        x = _conv(self.width, 7, 2, "conv1", self.dtype)(x)
        x = nn.relu(Norm(self.norm, dtype=self.dtype, name="bn1")(x))
        # torchvision pads the max pool with -inf (padding=1).
        x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
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
        laterals = [nn.Conv(self.features, (1, 1), kernel_init=init, dtype=self.dtype,
                            name=f"lateral{i + 2}")(c) for i, c in enumerate(inputs)]
        merged = [laterals[-1]]
        for lateral in reversed(laterals[:-1]):
            top = merged[0]
            up = jnp.repeat(jnp.repeat(top, 2, axis=1), 2, axis=2)
            merged.insert(0, lateral + up[:, :lateral.shape[1], :lateral.shape[2]])
        outputs = [nn.Conv(self.features, (3, 3), padding=1, kernel_init=init,
                           dtype=self.dtype, name=f"output{i + 2}")(m)
                   for i, m in enumerate(merged)]
        outputs.append(outputs[-1][:, ::2, ::2])  # P6: max_pool(k=1, s=2) of P5
        return outputs
