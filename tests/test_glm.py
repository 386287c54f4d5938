"""Global layering module: output shape, every level reaches the output."""

import jax
import numpy as np

from sln_jax.models.glm import GlobalLayeringModule


def test_glm_shape_and_every_level_contributes():
    keys = jax.random.split(jax.random.key(0), 5)
    pyramid = [jax.random.normal(k, (2, 64 // s, 64 // s, 8))
               for k, s in zip(keys, (4, 8, 16, 32, 64))]
    glm = GlobalLayeringModule(num_layers=4, features=6)
    variables = jax.jit(glm.init)(jax.random.key(1), pyramid)
    logits = jax.jit(glm.apply)(variables, pyramid)
    assert logits.shape == (2, 16, 16, 4) and logits.dtype == np.float32
    grads = jax.jit(jax.grad(lambda p: glm.apply(variables, p)[0, 3, 5].sum()))(pyramid)
    for level in range(4):  # P2..P5 all feed the map; P6 is not used
        assert np.abs(np.asarray(grads[level])).sum() > 0, level
    assert not np.asarray(grads[4]).any()
    # Image 1 is independent of image 0.
    assert not np.asarray(grads[0])[1].any()
