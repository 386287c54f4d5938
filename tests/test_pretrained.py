"""Loading torchvision-layout ResNet state dicts (random files of that exact layout)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from sln_jax.models.backbone import ResNet
from sln_jax.models.pretrained import flax_path, load_torchvision_resnet


def torchvision_state_dict(block: str, layers, width: int, seed: int = 0) -> dict:
    """Random arrays named and shaped exactly as torchvision.models.ResNet.state_dict()."""
    rng = np.random.default_rng(seed)
    state = {}

    def conv(name, out_ch, in_ch, k):
        state[f"{name}.weight"] = rng.normal(0, np.sqrt(2 / (in_ch * k * k)),
                                             (out_ch, in_ch, k, k)).astype(np.float32)

    def bn(name, ch):
        state[f"{name}.weight"] = rng.uniform(0.5, 1.5, ch).astype(np.float32)
        state[f"{name}.bias"] = rng.normal(0, 0.1, ch).astype(np.float32)
        state[f"{name}.running_mean"] = rng.normal(0, 0.1, ch).astype(np.float32)
        state[f"{name}.running_var"] = rng.uniform(0.5, 2.0, ch).astype(np.float32)
        state[f"{name}.num_batches_tracked"] = np.array(100, np.int64)

    expansion = 1 if block == "basic" else 4
    conv("conv1", width, 3, 7)
    bn("bn1", width)
    in_ch = width
    for stage, count in enumerate(layers):
        planes = width * 2 ** stage
        for i in range(count):
            name = f"layer{stage + 1}.{i}"
            if block == "basic":
                conv(f"{name}.conv1", planes, in_ch, 3)
                bn(f"{name}.bn1", planes)
                conv(f"{name}.conv2", planes, planes, 3)
                bn(f"{name}.bn2", planes)
            else:
                conv(f"{name}.conv1", planes, in_ch, 1)
                bn(f"{name}.bn1", planes)
                conv(f"{name}.conv2", planes, planes, 3)
                bn(f"{name}.bn2", planes)
                conv(f"{name}.conv3", planes * 4, planes, 1)
                bn(f"{name}.bn3", planes * 4)
            if i == 0 and (stage > 0 or in_ch != planes * expansion):
                conv(f"{name}.downsample.0", planes * expansion, in_ch, 1)
                bn(f"{name}.downsample.1", planes * expansion)
            in_ch = planes * expansion
    state["fc.weight"] = rng.normal(0, 0.01, (10, in_ch)).astype(np.float32)
    state["fc.bias"] = np.zeros(10, np.float32)
    return state


def _torch_forward(state: dict, x: np.ndarray, layers) -> list[np.ndarray]:
    """torchvision's BasicBlock ResNet forward in NCHW with the state dict as is."""
    def conv(v, name, stride, pad):
        return lax.conv_general_dilated(v, state[f"{name}.weight"], (stride, stride),
                                        [(pad, pad)] * 2,
                                        dimension_numbers=("NCHW", "OIHW", "NCHW"))

    def bn(v, name):
        shape = (1, -1, 1, 1)
        mean, var = state[f"{name}.running_mean"], state[f"{name}.running_var"]
        return ((v - mean.reshape(shape)) / jnp.sqrt(var.reshape(shape) + 1e-5)
                * state[f"{name}.weight"].reshape(shape) + state[f"{name}.bias"].reshape(shape))

    v = jnp.asarray(x.transpose(0, 3, 1, 2))
    v = jax.nn.relu(bn(conv(v, "conv1", 2, 3), "bn1"))
    v = lax.reduce_window(v, -jnp.inf, lax.max, (1, 1, 3, 3), (1, 1, 2, 2),
                          ((0, 0), (0, 0), (1, 1), (1, 1)))
    outs = []
    for stage, count in enumerate(layers):
        for i in range(count):
            name = f"layer{stage + 1}.{i}"
            stride = 2 if (i == 0 and stage > 0) else 1
            y = jax.nn.relu(bn(conv(v, f"{name}.conv1", stride, 1), f"{name}.bn1"))
            y = bn(conv(y, f"{name}.conv2", 1, 1), f"{name}.bn2")
            if f"{name}.downsample.0.weight" in state:
                v = bn(conv(v, f"{name}.downsample.0", stride, 0), f"{name}.downsample.1")
            v = jax.nn.relu(v + y)
        outs.append(np.asarray(v).transpose(0, 2, 3, 1))
    return outs


def test_flax_path_examples():
    assert flax_path("conv1.weight") == ("params", ("conv1", "kernel"))
    assert flax_path("bn1.running_mean") == ("batch_stats", ("bn1", "bn", "mean"))
    assert flax_path("layer2.0.downsample.1.running_var") == (
        "batch_stats", ("layer2_0", "downsample_bn", "bn", "var"))
    assert flax_path("layer4.2.conv3.weight") == ("params", ("layer4_2", "conv3", "kernel"))
    assert flax_path("fc.weight") is None
    assert flax_path("layer1.0.bn1.num_batches_tracked") is None


def test_resnet18_layout_loads_and_matches_torchvision_forward(tmp_path):
    layers = (2, 2, 2, 2)
    state = torchvision_state_dict("basic", layers, width=8)
    np.savez(tmp_path / "r18.npz", **state)
    model = ResNet("resnet18", "frozen_bn", 8)
    x = np.random.default_rng(1).normal(size=(1, 64, 64, 3)).astype(np.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    variables = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    loaded = load_torchvision_resnet(tmp_path / "r18.npz", variables, prefix=())
    np.testing.assert_array_equal(loaded["params"]["layer3_0"]["downsample_conv"]["kernel"],
                                  state["layer3.0.downsample.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(loaded["batch_stats"]["layer1_1"]["bn2"]["bn"]["var"],
                                  state["layer1.1.bn2.running_var"])
    ours = jax.jit(model.apply)(loaded, x)
    reference = _torch_forward(state, x, layers)
    for level, (a, b) in enumerate(zip(ours, reference)):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-3, atol=1e-3,
                                   err_msg=f"C{level + 2}")


def test_bottleneck_layout_loads_every_leaf_inside_a_larger_tree(tmp_path):
    state = torchvision_state_dict("bottleneck", (3, 4, 6, 3), width=4)
    np.savez(tmp_path / "r50.npz", **state)
    model = ResNet("resnet50", "frozen_bn", 4)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    variables = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    variables = {"params": {"backbone": variables["params"], "head": {"w": np.ones(3)}},
                 "batch_stats": {"backbone": variables["batch_stats"]}}
    loaded = load_torchvision_resnet(tmp_path / "r50.npz", variables)
    np.testing.assert_array_equal(loaded["params"]["head"]["w"], np.ones(3))
    used = [k for k in state if flax_path(k) is not None]
    assert len(used) == len(jax.tree_util.tree_leaves(loaded["params"]["backbone"])) + len(
        jax.tree_util.tree_leaves(loaded["batch_stats"]["backbone"]))
    for key in used:
        collection, path = flax_path(key)
        leaf = loaded[collection]["backbone"]
        for part in path:
            leaf = leaf[part]
        expected = state[key].transpose(2, 3, 1, 0) if state[key].ndim == 4 else state[key]
        np.testing.assert_array_equal(leaf, expected, err_msg=key)


def test_mismatches_are_reported_with_file_and_key(tmp_path):
    model = ResNet("resnet_tiny", "frozen_bn", 8)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    state = torchvision_state_dict("basic", (1, 1, 1, 1), width=8)
    bad = dict(state)
    bad["layer1.0.conv1.weight"] = bad["layer1.0.conv1.weight"][:, :4]
    np.savez(tmp_path / "shape.npz", **bad)
    with pytest.raises(ValueError, match=r"shape\.npz.*layer1\.0\.conv1\.weight"):
        load_torchvision_resnet(tmp_path / "shape.npz", variables, prefix=())
    missing = {k: v for k, v in state.items() if not k.startswith("layer4")}
    np.savez(tmp_path / "missing.npz", **missing)
    with pytest.raises(ValueError, match=r"missing\.npz.*layer4_0"):
        load_torchvision_resnet(tmp_path / "missing.npz", variables, prefix=())
    deeper = torchvision_state_dict("basic", (2, 1, 1, 1), width=8)
    np.savez(tmp_path / "deeper.npz", **deeper)
    with pytest.raises(ValueError, match="layer1.1"):
        load_torchvision_resnet(tmp_path / "deeper.npz", variables, prefix=())
    gn = jax.eval_shape(ResNet("resnet_tiny", "group_norm", 8).init, jax.random.key(0),
                        jnp.zeros((1, 64, 64, 3)))
    np.savez(tmp_path / "ok.npz", **state)
    with pytest.raises(ValueError, match="frozen_bn"):
        load_torchvision_resnet(tmp_path / "ok.npz", gn, prefix=())


def test_safetensors_and_npz_load_the_same_weights(tmp_path):
    from safetensors.numpy import save_file

    model = ResNet("resnet_tiny", "frozen_bn", 8)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    state = torchvision_state_dict("basic", (1, 1, 1, 1), width=8, seed=3)
    np.savez(tmp_path / "w.npz", **state)
    save_file(state, str(tmp_path / "w.safetensors"))
    a = load_torchvision_resnet(tmp_path / "w.npz", variables, prefix=())
    b = load_torchvision_resnet(tmp_path / "w.safetensors", variables, prefix=())
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a["params"]["conv1"]["kernel"],
                                  state["conv1.weight"].transpose(2, 3, 1, 0))
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"bad\.safetensors: cannot read a \.safetensors"):
        load_torchvision_resnet(tmp_path / "bad.safetensors", variables, prefix=())
    with pytest.raises(ValueError, match=r"nope\.npz: cannot read a \.npz"):
        load_torchvision_resnet(tmp_path / "nope.npz", variables, prefix=())
