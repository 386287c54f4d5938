"""configs/cocoa_reference.py and configs/d2sa_reference.py: the reference protocol, the
learning rate and steps following the batch size, and a model that builds and freezes."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sln_jax import frozen, train, train_state
from sln_jax.models import sln

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def load(name):
    spec = importlib.util.spec_from_file_location(f"test_configs_{name}",
                                                  os.path.join(CONFIGS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.parametrize("name", ["cocoa_reference", "d2sa_reference"])
def test_reference_protocol(name):
    config = load(name)
    base = load(name.removesuffix("_reference"))
    assert set(config.keys()) == set(base.keys())
    for section in base.keys():
        if hasattr(base[section], "keys"):
            assert set(base[section].keys()) <= set(config[section].keys()), section
    assert config.train.frozen == ("^backbone/",)
    assert config.data.box_jitter == pytest.approx(1 / 15)
    assert config.model.num_classes == config.data.num_classes == 1
    assert (config.model.score_threshold, config.model.nms_threshold) == (0.0, 1.0)
    assert config.model.backbone == "resnet50" and config.model.norm == "frozen_bn"
    sln.check_config(config.model)
    # Per image: lr 1e-3 x batch, 15000 images, decay after 12500 images.
    for batch in (1, 8, 16):
        config.train.batch_size = batch
        assert config.optim.learning_rate == pytest.approx(1e-3 * batch)
        assert config.train.num_steps == 15000 // batch
        schedule = train_state.create_learning_rate_schedule(config.optim, config.train.num_steps)
        decay = 12500 // batch
        assert float(schedule(0)) == pytest.approx(1e-3 * batch)
        assert float(schedule(decay - 1)) == pytest.approx(1e-3 * batch)
        assert float(schedule(decay + 1)) == pytest.approx(1e-4 * batch)
    config.lock()
    config.train.batch_size = 4  # as --config.train.batch_size=4 on a locked config
    assert config.optim.learning_rate == pytest.approx(4e-3)
    assert '"num_steps": 3750' in config.to_json()


def test_reference_model_builds_and_freezes_the_resnet():
    config = load("cocoa_reference")
    shapes = jax.eval_shape(sln.SLN(config.model).init, jax.random.key(0),
                            jnp.zeros((1, 64, 64, 3)), None)
    trainable, frozen_count = frozen.count_params(shapes["params"], config.train.frozen)
    # ResNet-50 without fc: 23.5 M parameters (BatchNorm scales and biases included).
    assert 23.4e6 < frozen_count < 23.6e6
    assert trainable > 10e6
    mask = frozen.frozen_mask(shapes["params"], config.train.frozen)
    assert all(jax.tree.leaves(mask["backbone"]))
    assert not any(jax.tree.leaves(mask["fpn"])) and not any(jax.tree.leaves(mask["glm"]))
    assert np.isfinite(trainable)
