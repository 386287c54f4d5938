"""Benchmark: synthetic scene generation + layer / sem-dist target encoding throughput.

Per scene: ``data_prep.synthetic.make_scene`` (512 x 512, 10 objects tried), then
``layering.instance_layers``, ``layering.global_layers`` and ``semdist.encode`` (with the
distance term). Prints the time per stage and scenes/s for generation + targets, single
process.

    python benchmarks/bench_targets.py [--scenes 30] [--image_size 512] [--instances 10]
        [--num_layers 4] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data_prep import synthetic  # noqa: E402
from sln_jax import layering, semdist  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=30)
    parser.add_argument("--image_size", type=int, default=512)
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = synthetic.SceneConfig(image_size=args.image_size, min_objects=args.instances,
                                   max_objects=args.instances)
    synthetic.make_scene(args.seed, "val", 0, config)  # loads the bundled photos once

    times = {"generate": 0.0, "instance_layers": 0.0, "global_layers": 0.0,
             "semdist.encode": 0.0}
    placed = []
    for index in range(args.scenes):
        t0 = time.perf_counter()
        scene = synthetic.make_scene(args.seed, "train", index, config)
        t1 = time.perf_counter()
        layers = layering.instance_layers(scene.amodal, scene.order)
        t2 = time.perf_counter()
        layering.global_layers(scene.amodal, args.num_layers)
        t3 = time.perf_counter()
        semdist.encode(layers, args.num_layers)
        t4 = time.perf_counter()
        for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            times[key] += dt
        placed.append(scene.amodal.shape[0])

    total = sum(times.values())
    print(f"{args.scenes} scenes of {args.image_size}x{args.image_size}, "
          f"{args.instances} objects tried, {np.mean(placed):.2f} placed on average, "
          f"K = {args.num_layers}")
    for key, value in times.items():
        print(f"  {key:16s} {1e3 * value / args.scenes:8.2f} ms/scene")
    print(f"  {'total':16s} {1e3 * total / args.scenes:8.2f} ms/scene")
    print(f"generation + targets: {args.scenes / total:.1f} scenes/s "
          f"(generation alone {args.scenes / times['generate']:.1f} scenes/s, "
          f"targets alone {args.scenes / (total - times['generate']):.1f} scenes/s)")


if __name__ == "__main__":
    main()
