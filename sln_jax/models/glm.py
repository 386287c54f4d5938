"""Global Layering Module (GLM): the image-level K-class layering map at stride 4.

A light semantic-FPN head (our choice, see ``docs/SLN.md`` section 3: the reference
uses a frozen DeepLab instead): every level P2..P5 goes through a 3x3 conv + ReLU and is
upsampled (nearest) to stride 4; the sum goes through one more 3x3 conv + ReLU and a 1x1 conv
to K logits per pixel. Its softmax is what the layering head ROI-aligns for every ROI.

With ``semantic_classes`` = S > 0 (``config.model.semantic_head``, our addition) a second 1x1
conv on the same features predicts the S-class map of visible classes (background + the
dataset's classes), trained on the records' class maps; the layering head then reads its
softmax where the reference reads a separate DeepLab's class probabilities.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sln_jax.models.layers import Conv

__all__ = ["GlobalLayeringModule"]


class GlobalLayeringModule(nn.Module):
    """Dense K-way layering logits from the FPN.

    Attributes:
      num_layers: K, layer classes (0 = background, k = k objects overlap, K-1 = K-1 or more).
      features: channels of the head (``glm_dim``).
      semantic_classes: S > 0 adds the semantic map's logits (0: none).
    """
    num_layers: int
    features: int
    semantic_classes: int = 0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, pyramid: Sequence[jax.Array]) -> jax.Array:
        """pyramid: [P2..P6] (P6 unused), P_l [B, S/2^l, S/2^l, C].

        Returns:
          float32 [B, S/4, S/4, K] logits of the global layering map, followed on the last
          axis by the S semantic logits when ``semantic_classes`` > 0 ([..., K + S]).
        """
        p2 = pyramid[0]
        h, w = p2.shape[1:3]
        total = 0.0
        for level, p in enumerate(pyramid[:4]):
            x = nn.relu(Conv(self.features, (3, 3), padding=1, dtype=self.dtype,
                             name=f"level{level + 2}")(p))
            factor = 2 ** level
            if factor > 1:
                x = jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)[:, :h, :w]
            total = total + x
        x = nn.relu(Conv(self.features, (3, 3), padding=1, dtype=self.dtype,
                         name="fuse")(total))
        logits = Conv(self.num_layers, (1, 1), dtype=self.dtype, name="logits")(x)
        if self.semantic_classes:
            semantic = Conv(self.semantic_classes, (1, 1), dtype=self.dtype,
                            name="semantic")(x)
            logits = jnp.concatenate([logits, semantic], axis=-1)
        return logits.astype(jnp.float32)
