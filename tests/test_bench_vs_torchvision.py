"""benchmarks/bench_vs_torchvision.py: the sln-jax side is the matched configuration."""

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import bench_vs_torchvision as bench
from sln_jax.models.backbone import ResNet

# torchvision resnet50 without its 1000-way fc: the backbone of maskrcnn_resnet50_fpn.
TORCHVISION_RESNET50 = 25_557_032 - 2_049_000


def test_jax_side_runs_torchvisions_backbone_depth():
    # The paper's base config is ResNet-101 (twice ResNet-50's FLOPs); comparing it with
    # maskrcnn_resnet50_fpn made the backbone look 2x slower than it is.
    config = bench.paper_config(256, 10)
    model = ResNet(config.model.backbone, config.model.norm, config.model.backbone_width)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(variables["params"]))
    assert count == TORCHVISION_RESNET50
    assert config.model.norm == "frozen_bn"  # torchvision's FrozenBatchNorm2d
    assert config.data.image_size == 256 and config.data.max_instances == 10


def test_random_batch_layout():
    batch = bench.random_batch(2, 64, 10, 28)
    assert batch["image"].shape == (2, 64, 64, 3)
    assert batch["boxes"].shape == (2, 10, 4) and batch["layers"].shape == (2, 10, 28, 28)
    boxes = batch["boxes"]
    assert (boxes[..., 2:] > boxes[..., :2]).all() and boxes.min() >= 0 and boxes.max() <= 64
    # GT depth ranks (the order head's labels): a permutation per image.
    assert (np.sort(batch["order"], axis=1) == np.arange(10)).all()
