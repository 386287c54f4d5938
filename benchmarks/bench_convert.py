"""Conversion and input-pipeline throughput on synthetic 512 x 512 scenes with 10 instances.

Prints:
* conversion images/s with 1 and 2 worker processes, the median of ``--repeats`` runs
  (shared 2-core machines vary by +-15 % from run to run): wall clock of the whole run
  (including spawning the workers), per worker from the wall time the workers spent inside
  their shards, and per CPU-second (independent of other load on a shared machine);
* pipeline images/s reading the records back (training stream: decode, resize, flip,
  normalize, pad, batch), at the synthetic config's image size and at 512.

    python benchmarks/bench_convert.py [--images 96] [--repeats 3] [--batch 8] [--steps 30]

Targets (issue 3): >= 50 images/s per worker for conversion; a pipeline delivering >= 3x
what a training step consumes.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from data_prep import convert, synthetic  # noqa: E402


def _convert(root: str, workers: int, shards: int, k: int, p: int) -> tuple[float, dict]:
    output = os.path.join(root, f"records_w{workers}")
    start = time.perf_counter()
    meta = convert.convert("synthetic", os.path.join(root, "annotations", "train.json"),
                           os.path.join(root, "images", "train"), output, split="train",
                           num_shards=shards, workers=workers, num_layers=k,
                           mask_target_size=p, overwrite=True, progress=False)
    return time.perf_counter() - start, meta


def _pipeline(records: str, image_size: int, batch: int, steps: int, k: int, p: int,
              max_instances: int) -> float:
    from sln_jax import input_pipeline

    config = ml_collections.ConfigDict(dict(
        dir=records, image_size=image_size, max_instances=max_instances,
        mask_target_size=p, num_layers=k, num_classes=len(synthetic.CATEGORIES),
        train_split="train", eval_split="val", shuffle_buffer=64, flip=True))
    it = input_pipeline.create_dataset(config, "train", batch_dims=(1, batch), train=True,
                                       seed=0)
    list(itertools.islice(it, 3))  # warm-up: graph tracing, buffer fill
    start = time.perf_counter()
    list(itertools.islice(it, steps))
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument("--mask_target_size", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=3,
                        help="conversions per worker count; the median is printed")
    args = parser.parse_args()
    k, p = args.num_layers, args.mask_target_size
    with tempfile.TemporaryDirectory() as root:
        config = synthetic.SceneConfig(image_size=512, min_objects=10, max_objects=10)
        start = time.perf_counter()
        synthetic.write_split(root, "train", args.images, seed=0, config=config, workers=2,
                              progress=False)
        print(f"generated {args.images} synthetic 512x512 scenes in "
              f"{time.perf_counter() - start:.1f} s")
        for workers in (1, 2):
            runs = []
            for _ in range(args.repeats):
                seconds, meta = _convert(root, workers, shards=2 * workers, k=k, p=p)
                stats = meta["splits"]["train"]["statistics"]
                images = stats["images"]
                runs.append((images / seconds, images / sum(stats["shard_seconds"]),
                             images / sum(stats["shard_cpu_seconds"])))
            wall, in_shards, cpu = (np.median(column) for column in zip(*runs))
            spread = ", ".join(f"{r[1]:.1f}" for r in runs)
            size = sum(os.path.getsize(os.path.join(root, f"records_w{workers}", name))
                       for name in meta["splits"]["train"]["files"]) / images / 1024
            print(f"convert, {workers} worker(s), median of {args.repeats}: {wall:6.1f} images/s "
                  f"wall (incl. start-up); per worker {in_shards:6.1f} images/s wall in shards "
                  f"(runs: {spread}), {cpu:6.1f} images/s per CPU-second "
                  f"({stats['instances'] / images:.1f} instances/image, {size:.0f} KiB/record)")
        records = os.path.join(root, "records_w1")
        for image_size, max_instances in ((128, 8), (512, 16)):
            rate = _pipeline(records, image_size, args.batch, args.steps, k, p, max_instances)
            print(f"pipeline, S={image_size}, M={max_instances}, batch {args.batch}: "
                  f"{rate:6.1f} images/s")


if __name__ == "__main__":
    main()
