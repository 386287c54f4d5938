"""ResNet + FPN: shapes, parameter counts equal to torchvision's, norm semantics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sln_jax.models.backbone import FPN, Norm, ResNet, conv_norm


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("depth,channels", [
    ("resnet_tiny", (8, 16, 32, 64)),
    ("resnet18", (64, 128, 256, 512)),
    ("resnet50", (256, 512, 1024, 2048)),
    ("resnet101", (256, 512, 1024, 2048)),
])
def test_resnet_output_shapes(depth, channels):
    width = 8 if depth == "resnet_tiny" else 64
    model = ResNet(depth, "frozen_bn", width)
    images = jnp.zeros((2, 64, 64, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    outputs = jax.eval_shape(model.apply, variables, images)
    assert [o.shape for o in outputs] == [(2, 64 // 2 ** l, 64 // 2 ** l, c)
                                          for l, c in zip((2, 3, 4, 5), channels)]


@pytest.mark.parametrize("depth,expected", [
    # torchvision parameter counts without the 1000-way fc layer.
    ("resnet18", 11_689_512 - 513_000),
    ("resnet50", 25_557_032 - 2_049_000),
    ("resnet101", 44_549_160 - 2_049_000),
])
def test_resnet_parameter_count_matches_torchvision(depth, expected):
    model = ResNet(depth, "frozen_bn", 64)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    assert _count(variables["params"]) == expected
    # Running mean and variance of every BN: one pair per BN scale.
    bn_channels = sum(int(np.prod(x.shape)) for path, x in
                      jax.tree_util.tree_leaves_with_path(variables["params"])
                      if "scale" in jax.tree_util.keystr(path))
    assert _count(variables["batch_stats"]) == 2 * bn_channels


def test_frozen_bn_uses_stored_statistics_and_never_updates():
    norm = Norm("frozen_bn")
    x = jax.random.normal(jax.random.key(1), (2, 5, 5, 4)) * 3 + 1
    variables = norm.init(jax.random.key(0), x)
    mean = jnp.array([0.5, -1.0, 2.0, 0.0])
    var = jnp.array([4.0, 1.0, 0.25, 9.0])
    scale = jnp.array([1.0, 2.0, -1.0, 0.5])
    bias = jnp.array([0.0, 1.0, 3.0, -2.0])
    variables = {"params": {"bn": {"scale": scale, "bias": bias}},
                 "batch_stats": {"bn": {"mean": mean, "var": var}}}
    out, updates = norm.apply(variables, x, mutable=["batch_stats"])
    expected = (x - mean) / jnp.sqrt(var + 1e-5) * scale + bias
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(updates["batch_stats"]["bn"]["mean"], mean)
    np.testing.assert_array_equal(updates["batch_stats"]["bn"]["var"], var)


def test_group_norm_normalizes_each_group():
    norm = Norm("group_norm")
    x = jax.random.normal(jax.random.key(1), (2, 6, 6, 64)) * 5 + 3
    variables = norm.init(jax.random.key(0), x)
    out = norm.apply(variables, x)
    groups = np.asarray(out).reshape(2, 36, 32, 2)  # 32 groups of 2 channels
    np.testing.assert_allclose(groups.mean(axis=(1, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(groups.var(axis=(1, 3)), 1, atol=1e-2)


def test_unknown_norm_and_backbone_are_rejected():
    with pytest.raises(ValueError, match="unknown norm"):
        Norm("batch_norm").init(jax.random.key(0), jnp.zeros((1, 2, 2, 4)))
    with pytest.raises(ValueError, match="unknown backbone"):
        ResNet("resnet34").init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))


def test_tiny_blocks_start_as_identity_residuals():
    """The last norm of each residual branch starts at zero scale (trains from scratch)."""
    model = ResNet("resnet_tiny", "group_norm", 8)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    np.testing.assert_array_equal(variables["params"]["layer1_0"]["bn2"]["gn"]["scale"], 0)
    np.testing.assert_array_equal(variables["params"]["layer1_0"]["bn1"]["gn"]["scale"], 1)


def test_fpn_shapes_top_down_and_p6():
    c_shapes = [(2, 32, 32, 8), (2, 16, 16, 16), (2, 8, 8, 32), (2, 4, 4, 64)]
    keys = jax.random.split(jax.random.key(0), 4)
    inputs = [jax.random.normal(k, s) for k, s in zip(keys, c_shapes)]
    fpn = FPN(16)
    variables = jax.jit(fpn.init)(jax.random.key(1), inputs)
    outputs = jax.jit(fpn.apply)(variables, inputs)
    assert [o.shape for o in outputs] == [(2, 32, 32, 16), (2, 16, 16, 16), (2, 8, 8, 16),
                                          (2, 4, 4, 16), (2, 2, 2, 16)]
    np.testing.assert_array_equal(outputs[4], outputs[3][:, ::2, ::2])
    # Top-down: C5 reaches P2.
    grad = jax.jit(jax.grad(lambda c5: fpn.apply(variables, inputs[:3] + [c5])[0].sum()))(
        inputs[3])
    assert np.abs(np.asarray(grad)).sum() > 0


@pytest.mark.parametrize("kernel,stride,zero_init", [(1, 2, False), (3, 1, True), (7, 2, False)])
def test_frozen_bn_folded_into_conv_equals_conv_then_norm(kernel, stride, zero_init):
    """conv_norm folds the frozen BN into the kernel: same outputs and gradients (to float
    rounding) and the same variables, under the same names, as a conv followed by Norm."""
    import flax.linen as nn

    class Folded(nn.Module):
        @nn.compact
        def __call__(self, x):
            return conv_norm(x, 6, kernel, stride, "frozen_bn", jnp.float32, "conv1", "bn1",
                             zero_init=zero_init)

    class Unfolded(nn.Module):
        @nn.compact
        def __call__(self, x):
            y = nn.Conv(6, (kernel, kernel), (stride, stride),
                        padding=[(kernel // 2, kernel // 2)] * 2, use_bias=False,
                        name="conv1")(x)
            return Norm("frozen_bn", zero_init=zero_init, name="bn1")(y)

    x = jax.random.normal(jax.random.key(0), (2, 9, 9, 4))
    folded, unfolded = Folded(), Unfolded()
    variables = unfolded.init(jax.random.key(1), x)
    assert (jax.tree.structure(folded.init(jax.random.key(1), x))
            == jax.tree.structure(variables))
    keys = iter(jax.random.split(jax.random.key(2), 8))
    bn = {"scale": jax.random.normal(next(keys), (6,)), "bias": jax.random.normal(next(keys), (6,))}
    stats = {"mean": jax.random.normal(next(keys), (6,)),
             "var": jax.random.uniform(next(keys), (6,), minval=0.5, maxval=2.0)}
    variables = {"params": {"conv1": variables["params"]["conv1"], "bn1": {"bn": bn}},
                 "batch_stats": {"bn1": {"bn": stats}}}
    np.testing.assert_allclose(folded.apply(variables, x), unfolded.apply(variables, x),
                               rtol=1e-5, atol=1e-5)
    loss = lambda params, m: (m.apply({**variables, "params": params}, x) ** 2).mean()  # noqa
    ours = jax.grad(loss)(variables["params"], folded)
    ref = jax.grad(loss)(variables["params"], unfolded)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
