"""Timing of the detection ops on this CPU: ROIAlign (single gather vs compute-all-levels-and-
select), NMS and the samplers, jitted, at a 256 px canvas.

Usage: python benchmarks/bench_ops.py [--boxes 1000] [--size 256] [--channels 256] [--repeats 5]
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from sln_jax.ops import boxes as box_ops
from sln_jax.ops.anchors import generate_anchors
from sln_jax.ops.roi_align import fpn_levels, multilevel_roi_align, roi_align
from sln_jax.ops.sampling import rpn_targets, sample_rois


def masked_multilevel_roi_align(features, boxes, output_size, sampling_ratio=2):
    """Baseline: pool every box on every level, keep the one of its FPN level."""
    level = fpn_levels(boxes, 2, 1 + len(features))
    out = 0.0
    for i, f in enumerate(features):
        pooled = roi_align(f, boxes, output_size, 1.0 / 2 ** (i + 2), sampling_ratio)
        out = out + jnp.where((level == i + 2)[:, None, None, None], pooled, 0.0)
    return out


def timed(fn, *args, repeats):
    """(compile + first run seconds, median steady-state seconds)."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return first, float(np.median(times))


def random_boxes(rng, n, size):
    start = rng.uniform(0, size * 0.9, (n, 2))
    extent = np.exp(rng.uniform(np.log(8), np.log(size), (n, 2)))
    return np.concatenate([start, np.minimum(start + extent, size)], 1).astype(np.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from sln_jax import train_state
    train_state.use_classic_prng()  # as the entry points do
    rng = np.random.default_rng(0)
    size, n, c = args.size, args.boxes, args.channels
    features = [jnp.asarray(rng.normal(size=(size // s, size // s, c)), jnp.float32)
                for s in (4, 8, 16, 32)]
    boxes = jnp.asarray(random_boxes(rng, n, size))
    print(f"devices: {jax.devices()}  canvas {size}px, {n} boxes, {c} channels, "
          f"levels {[f.shape[:2] for f in features]}")
    print("levels used:", np.bincount(np.asarray(fpn_levels(boxes)), minlength=6)[2:])

    gather = jax.jit(multilevel_roi_align, static_argnums=(2, 3))
    masked = jax.jit(masked_multilevel_roi_align, static_argnums=(2, 3))
    np.testing.assert_allclose(gather(features, boxes, 7, 2), masked(features, boxes, 7, 2),
                               rtol=1e-4, atol=1e-5)
    for out in (7, 14):
        for name, fn in (("single gather", gather), ("all levels + select", masked)):
            first, steady = timed(fn, features, boxes, out, 2, repeats=args.repeats)
            print(f"multilevel_roi_align {out}x{out} {name:20s}: compile+run {first:6.2f} s, "
                  f"steady {steady * 1e3:8.1f} ms ({steady / n * 1e6:6.1f} us/box)")

    scores = jnp.asarray(rng.uniform(size=n), jnp.float32)
    nms = jax.jit(box_ops.nms, static_argnums=(3,))
    for max_output in (100, 1000):
        first, steady = timed(nms, boxes, scores, 0.7, max_output, repeats=args.repeats)
        print(f"nms {n} boxes -> {max_output:4d}: compile+run {first:6.2f} s, "
              f"steady {steady * 1e3:8.1f} ms")

    anchors, _ = generate_anchors(size)
    gt = jnp.asarray(random_boxes(rng, 20, size))
    valid = jnp.arange(20) < 12
    first, steady = timed(jax.jit(rpn_targets), anchors, gt, valid, jax.random.PRNGKey(0),
                          repeats=args.repeats)
    print(f"rpn_targets {len(anchors)} anchors x 20 GT: compile+run {first:6.2f} s, "
          f"steady {steady * 1e3:8.1f} ms")
    classes = jnp.ones((20,), jnp.int32)
    sampler = jax.jit(sample_rois, static_argnums=(6, 7))
    first, steady = timed(sampler, boxes, jnp.ones((n,), bool), gt, classes, valid,
                          jax.random.PRNGKey(0), 512, 0.25, repeats=args.repeats)
    print(f"sample_rois {n} proposals -> 512: compile+run {first:6.2f} s, "
          f"steady {steady * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
