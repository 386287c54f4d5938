"""benchmarks/bench_vs_torchvision.py: the sln-jax side is the matched configuration."""

import re

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


def test_timing_table_columns_stay_apart_with_many_rounds():
    results = {"train": {"jax": [7372.0, 6201.0, 5960.0, 6629.0],
                         "torch": [5180.0, 5357.0, 6032.0, 6575.0]},
               "infer": {"jax": [2447.0, 2922.0, 2430.0, 2758.0],
                         "torch": [1416.0, 2734.0, 2106.0, 2761.0]},
               "backbone": {"jax": [2964.0, 2933.0, 3001.0, 3072.0],
                            "torch": [2280.0, 2233.0, 2076.0, 2386.0]}}
    lines = bench.timing_table(results)
    assert len(lines) == 5 and len({len(line) for line in lines}) == 1  # aligned
    # Cells are separated by at least two spaces (4 rounds once ran "6629" into "5180").
    cells = [re.split(r"\s{2,}", line.strip()) for line in lines]
    assert cells[0] == ["ms per image, rounds", "sln-jax", "torchvision", "ratio"]
    assert cells[1] == ["train step", "7372 / 6201 / 5960 / 6629", "5180 / 5357 / 6032 / 6575",
                        "1.42x / 1.16x / 0.99x / 1.01x"]
    assert cells[4][:2] == ["heads (step - backbone)", "4408 / 3268 / 2959 / 3557"]
    jax_only = bench.timing_table({op: {"jax": sides["jax"], "torch": []}
                                   for op, sides in results.items()})
    assert re.split(r"\s{2,}", jax_only[1].strip())[2:] == ["-", "-"]
