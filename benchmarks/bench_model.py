"""Model speed: compile time and steady-state forward+backward time per image.

Measures, for each image size, (a) the backbone alone (ResNet + FPN, gradient of a scalar of
the pyramid) and (b) the whole SLN training loss (RPN, sampling, box head, GLM, layering head,
every loss term), then prints (b) / (a) so the cost of heads and sampling is visible.
Default: ResNet-50-FPN with the paper's head settings, batch 2, sizes 256 and 512.

  python benchmarks/bench_model.py [--sizes 256 512] [--batch 2] [--iters 3]
                                   [--backbone resnet50]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sln_jax import losses  # noqa: E402
from sln_jax.models.backbone import FPN, ResNet  # noqa: E402
from sln_jax.models.sln import SLN  # noqa: E402


def paper_model_config(backbone: str) -> ml_collections.ConfigDict:
    """The paper's settings (``docs/SLN.md`` section 3), K = 4, class-agnostic."""
    return ml_collections.ConfigDict(dict(
        backbone=backbone, norm="frozen_bn", backbone_width=64, fpn_dim=256, num_classes=1,
        num_layers=4, anchor_sizes=(32, 64, 128, 256, 512), anchor_ratios=(0.5, 1.0, 2.0),
        rpn_pre_nms_topk=2000, rpn_post_nms_topk=1000, rpn_nms_threshold=0.7,
        rpn_batch_per_image=256, rpn_positive_fraction=0.5, roi_batch_per_image=100,
        roi_positive_fraction=0.7, roi_positive_iou=0.5, mask_rois_per_image=64,
        mask_head_dim=256, box_pool_size=7, mask_pool_size=16,
        mask_size=32, head="layers", class_agnostic_masks=True, glm=True, glm_dim=256,
        score_threshold=0.7, nms_threshold=0.3, max_detections=100, dtype="float32"))


class Backbone(nn.Module):
    """ResNet + FPN alone, named as inside SLN."""
    depth: str
    norm: str
    fpn_dim: int

    @nn.compact
    def __call__(self, images):
        features = ResNet(self.depth, self.norm, 64, name="backbone")(images)
        return FPN(self.fpn_dim, name="fpn")(features)


def loss_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({**{name: 1.0 for name in losses.TERMS},
                                      "occluded_pixel_weight": 1.0})


def random_batch(batch: int, size: int, num_layers: int, max_instances: int = 8,
                 crop: int = 28, seed: int = 0) -> dict:
    """A batch in the layout of docs/interfaces.md with random boxes and layer targets."""
    rng = np.random.default_rng(seed)
    yx = rng.uniform(0, size * 0.6, (batch, max_instances, 2))
    hw = rng.uniform(size * 0.1, size * 0.4, (batch, max_instances, 2))
    boxes = np.concatenate([yx, np.minimum(yx + hw, size)], -1).astype(np.float32)
    return {
        "image": rng.normal(size=(batch, size, size, 3)).astype(np.float32),
        "image_size": np.full((batch, 2), size, np.int32),
        "boxes": boxes,
        "classes": np.ones((batch, max_instances), np.int32),
        "valid": np.ones((batch, max_instances), bool),
        "layers": rng.integers(-1, num_layers, (batch, max_instances, crop, crop)).astype(
            np.int8),
        "semdist": rng.uniform(0, num_layers + 1, (batch, max_instances, crop, crop)).astype(
            np.float32),
        "global_layers": rng.integers(0, num_layers, (batch, size, size)).astype(np.int8),
    }


def timed(fn, args, iters: int) -> tuple[float, float]:
    """(compile + first run seconds, mean steady-state seconds per call)."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(iters):
        jax.block_until_ready(fn(*args))
    return first, (time.perf_counter() - start) / iters


def bench_size(cfg: ml_collections.ConfigDict, batch: int, size: int, iters: int) -> None:
    data = random_batch(batch, size, cfg.num_layers)
    images = jnp.asarray(data["image"])
    gt = {k: jnp.asarray(v) for k, v in data.items()}

    backbone = Backbone(cfg.backbone, cfg.norm, cfg.fpn_dim)
    bb_vars = jax.jit(backbone.init)(jax.random.key(0), images)

    @jax.jit
    def backbone_step(params, x):
        def loss(p):
            pyramid = backbone.apply({"params": p, "batch_stats": bb_vars["batch_stats"]}, x)
            return sum(jnp.mean(level) for level in pyramid)
        return jax.value_and_grad(loss)(params)

    model = SLN(cfg)
    variables = jax.jit(model.init)(jax.random.key(0), images)

    @jax.jit
    def model_step(params, x, key):
        def loss(p):
            outputs = model.apply({"params": p, "batch_stats": variables["batch_stats"]}, x, gt,
                                  train=True, rngs={"sampling": key})
            return losses.compute(outputs, loss_config())[0]
        return jax.value_and_grad(loss)(params)

    bb_first, bb_step = timed(backbone_step, (bb_vars["params"], images), iters)
    print(f"{size:>4}  backbone+FPN  compile+1st {bb_first:7.1f} s   fwd+bwd "
          f"{bb_step / batch * 1e3:8.0f} ms/image", flush=True)
    key = jax.random.key(1)
    full_first, full_step = timed(model_step, (variables["params"], images, key), iters)
    print(f"{size:>4}  whole SLN     compile+1st {full_first:7.1f} s   fwd+bwd "
          f"{full_step / batch * 1e3:8.0f} ms/image", flush=True)
    print(f"{size:>4}  ratio whole / backbone: step {full_step / bb_step:.2f}x, "
          f"compile {full_first / bb_first:.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--backbone", default="resnet50")
    args = parser.parse_args()
    from sln_jax import train_state
    train_state.use_classic_prng()  # as the entry points do
    cfg = paper_model_config(args.backbone)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs; "
          f"{args.backbone}-FPN, batch {args.batch}, {args.iters} timed steps")
    for size in args.sizes:
        bench_size(cfg, args.batch, size, args.iters)


if __name__ == "__main__":
    main()
