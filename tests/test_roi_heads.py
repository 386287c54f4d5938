"""Box head and layering head: shapes, per-class selection, pooling from FPN and GLM."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flax.linen as nn
import optax

from sln_jax.models.roi_heads import BoxHead, InstanceContext, LayeringHead, pool_glm, pool_rois
from sln_jax.ops import roi_align as roi_ops

B, N, C, K = 2, 5, 3, 4


def test_box_head_shapes():
    pooled = jax.random.normal(jax.random.key(0), (B, N, 7, 7, 8))
    head = BoxHead(C, 32)
    variables = jax.jit(head.init)(jax.random.key(1), pooled)
    logits, deltas = jax.jit(head.apply)(variables, pooled)
    assert logits.shape == (B, N, C + 1) and deltas.shape == (B, N, C + 1, 4)
    assert variables["params"]["fc1"]["kernel"].shape == (7 * 7 * 8, 32)


def _predictor_marks_class(variables, head_kind):
    """Zero the predictor kernel and give channel set c the bias value c + 1."""
    params = jax.tree_util.tree_map(lambda x: x, variables["params"])
    pred = params["predictor"]
    per_set = K if head_kind == "layers" else 1
    pred["kernel"] = jnp.zeros_like(pred["kernel"])
    pred["bias"] = jnp.repeat(jnp.arange(1, C + 1, dtype=jnp.float32), per_set)
    return {"params": params}


@pytest.mark.parametrize("head_kind", ["layers", "semdist"])
def test_layering_head_shapes_and_class_selection(head_kind):
    pooled = jax.random.normal(jax.random.key(0), (B, N, 7, 7, 8))
    glm = jax.nn.softmax(jax.random.normal(jax.random.key(2), (B, N, 7, 7, K)))
    classes = jnp.array([[1, 2, 3, 1, 2], [3, 3, 2, 1, 1]])
    head = LayeringHead(head_kind, K, C, False, 8)
    variables = jax.jit(head.init)(jax.random.key(1), pooled, classes, glm)
    out = jax.jit(head.apply)(variables, pooled, classes, glm)
    expected = (B, N, 14, 14, K) if head_kind == "layers" else (B, N, 14, 14)
    assert out.shape == expected
    # The first conv sees FPN channels + K GLM channels.
    assert variables["params"]["conv1"]["kernel"].shape == (3, 3, 8 + K, 8)
    marked = jax.jit(head.apply)(_predictor_marks_class(variables, head_kind), pooled,
                                 classes, glm)
    per_roi = np.asarray(marked).reshape(B, N, -1)
    np.testing.assert_array_equal(per_roi, np.broadcast_to(
        np.asarray(classes, np.float32)[..., None], per_roi.shape))
    # The GLM maps reach the output.
    grad = jax.grad(lambda g: head.apply(variables, pooled, classes, g).sum())(glm)
    assert np.abs(np.asarray(grad)).sum() > 0


def test_class_agnostic_head_ignores_classes():
    pooled = jax.random.normal(jax.random.key(0), (B, N, 7, 7, 8))
    head = LayeringHead("layers", K, C, True, 8)
    ones = jnp.ones((B, N), jnp.int32)
    variables = jax.jit(head.init)(jax.random.key(1), pooled, ones)
    assert variables["params"]["predictor"]["kernel"].shape[-1] == K
    a = head.apply(variables, pooled, ones)
    b = head.apply(variables, pooled, 3 * ones)
    np.testing.assert_array_equal(a, b)


def test_pool_rois_and_pool_glm_equal_per_image_roi_align():
    keys = jax.random.split(jax.random.key(0), 5)
    pyramid = [jax.random.normal(k, (B, 128 // s, 128 // s, 6))
               for k, s in zip(keys, (4, 8, 16, 32, 64))]
    rois = jnp.array([[[0, 0, 20, 30], [10, 10, 120, 110], [5, 60, 60, 128]],
                      [[30, 30, 50, 40], [0, 0, 128, 128], [64, 0, 100, 90]]], jnp.float32)
    pooled = jax.jit(pool_rois, static_argnums=2)(pyramid, rois, 7)
    assert pooled.shape == (B, 3, 7, 7, 6)
    for b in range(B):
        expected = roi_ops.multilevel_roi_align([p[b] for p in pyramid[:4]], rois[b], 7)
        np.testing.assert_allclose(pooled[b], expected, rtol=1e-5, atol=1e-5)
    glm = jax.random.uniform(keys[0], (B, 32, 32, K))
    pooled_glm = pool_glm(glm, rois, 5)
    assert pooled_glm.shape == (B, 3, 5, 5, K)
    np.testing.assert_allclose(pooled_glm[1], roi_ops.roi_align(glm[1], rois[1], 5, 0.25),
                               rtol=1e-5, atol=1e-5)


def _own_colour_task(key, rois=64, side=6, colours=8):
    """Crops of one-hot colours: each crop's own colour on ~70 % of its pixels, another on the
    rest; label 1 where a pixel has the crop's own colour. Which colour is 'own' changes from
    crop to crop, so a pixel's features alone cannot tell (the overlap of two objects)."""
    k1, k2, k3 = jax.random.split(key, 3)
    own = jax.random.randint(k1, (rois,), 0, colours)
    other = (own + jax.random.randint(k2, (rois,), 1, colours)) % colours
    is_own = jax.random.uniform(k3, (rois, side, side)) < 0.7
    colour = jnp.where(is_own, own[:, None, None], other[:, None, None])
    return jax.nn.one_hot(colour, colours), is_own.astype(jnp.float32)


class _PixelClassifier(nn.Module):
    context: bool

    @nn.compact
    def __call__(self, x):
        if self.context:
            x = InstanceContext()(x)
        return nn.Dense(1)(nn.relu(nn.Dense(16)(x)))[..., 0]


def _own_colour_accuracy(context: bool) -> float:
    model = _PixelClassifier(context)
    x, _ = _own_colour_task(jax.random.key(0))
    params = model.init(jax.random.key(1), x)
    tx = optax.adam(1e-2)
    state = tx.init(params)

    @jax.jit
    def step(p, s, key):
        # Fresh crops every step: the rule must be learned, not the crops memorized.
        x, y = _own_colour_task(key)
        g = jax.grad(lambda p: optax.sigmoid_binary_cross_entropy(model.apply(p, x), y).mean())(p)
        updates, s = tx.update(g, s)
        return optax.apply_updates(p, updates), s

    for i in range(300):
        params, state = step(params, state, jax.random.key(100 + i))
    x_test, y_test = _own_colour_task(jax.random.key(7), rois=256)
    predicted = model.apply(params, x_test) > 0
    return float(jnp.mean(predicted == (y_test > 0.5)))


def test_instance_context_tells_the_rois_own_object_from_the_other():
    """The asymmetric cue: with the ROI's descriptor a pixel-wise classifier learns which
    pixels belong to the crop's own object; without it, it can only guess the majority."""
    assert _own_colour_accuracy(context=True) > 0.97
    assert _own_colour_accuracy(context=False) < 0.8


def test_layering_head_with_instance_context():
    pooled = jax.random.normal(jax.random.key(0), (B, N, 7, 7, 8))
    classes = jnp.ones((B, N), jnp.int32)
    head = LayeringHead("layers", K, C, True, 8, instance_context=True)
    variables = jax.jit(head.init)(jax.random.key(1), pooled, classes)
    params = variables["params"]
    # The product with the ROI's descriptor is projected back to the head's width.
    assert params["conv3"]["kernel"].shape == (3, 3, 8, 8)
    assert params["context"]["compare"]["kernel"].shape == (1, 1, 8, 8)
    assert params["context"]["position_prior"].shape == (7, 7)
    out = head.apply(variables, pooled, classes)
    assert out.shape == (B, N, 14, 14, K)
    # Each ROI's output depends on its own crop only (the descriptor is per ROI).
    changed = pooled.at[0, 1].set(0.0)
    out2 = head.apply(variables, changed, classes)
    diff = np.abs(np.asarray(out2 - out)).reshape(B, N, -1).max(-1)
    assert diff[0, 1] > 0 and np.all(np.delete(diff.ravel(), 1) == 0)
