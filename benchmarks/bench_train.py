"""Training throughput: the train step on 1 and 2 CPU devices, the input pipeline alone.

  python benchmarks/bench_train.py [--config configs/synthetic.py] [--data_dir RECORDS]
      [--steps 10] [--pipeline_batches 50]

Without --data_dir a small synthetic dataset of the config's image size is generated and
converted in a temporary directory. The step is timed on batches already in memory, after
compilation (reported apart), in a subprocess per device count
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``) with the config's global batch; the
pipeline is timed by pulling batches from ``input_pipeline.create_dataset`` alone. The
ratio pipeline / step > 1 means the pipeline keeps up with the step.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def make_dataset(config, root: str, num_train: int) -> str:
    """Generates + converts ``num_train`` synthetic train images (and a few val); returns records."""
    from data_prep import convert, synthetic

    raw, records = os.path.join(root, "raw"), os.path.join(root, "records")
    scene = synthetic.SceneConfig(image_size=int(config.data.image_size))
    for split, count in (("train", num_train), ("val", 4)):
        synthetic.write_split(raw, split, count, seed=0, config=scene, workers=2, progress=False)
        convert.convert("synthetic", os.path.join(raw, "annotations", f"{split}.json"),
                        os.path.join(raw, "images", split), records, split=split, num_shards=2,
                        workers=2, num_layers=int(config.data.num_layers),
                        mask_target_size=int(config.data.mask_target_size), progress=False)
    return records


def bench_pipeline(config, num_batches: int) -> float:
    """Images per second pulled from the training input pipeline (after the first batch)."""
    from sln_jax import input_pipeline

    batch = int(config.train.batch_size)
    batches = input_pipeline.create_dataset(config.data, config.data.train_split,
                                            batch_dims=(1, batch), train=True,
                                            seed=int(config.seed))
    next(batches)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(batches)
    return num_batches * batch / (time.perf_counter() - start)


def bench_step(config, steps: int) -> dict[str, float]:
    """Compile time and images/s of Trainer.train_step on this process's devices."""
    import jax

    from sln_jax import input_pipeline, train

    trainer = train.Trainer(config)
    devices = jax.local_device_count()
    batch = int(config.train.batch_size)
    stream = input_pipeline.create_dataset(config.data, config.data.train_split,
                                           batch_dims=(devices, batch // devices), train=True,
                                           seed=int(config.seed))
    batches = [next(stream) for _ in range(min(steps, 8))]
    start = time.perf_counter()
    state = trainer.initial_state()
    state, metrics = trainer.train_step(state, batches[0])
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(steps):
        state, metrics = trainer.train_step(state, batches[i % len(batches)])
    jax.block_until_ready((state, metrics))
    elapsed = time.perf_counter() - start
    return {"devices": devices, "compile_s": compile_s, "images_per_sec": steps * batch / elapsed}


def run_step_subprocess(args, records: str, devices: int) -> dict[str, float]:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    command = [sys.executable, os.path.abspath(__file__), "--config", args.config,
               "--data_dir", records, "--steps", str(args.steps), "--step_only"]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(REPO, "configs", "synthetic.py"))
    parser.add_argument("--data_dir", default=None, help="converted records (default: generate)")
    parser.add_argument("--num_train", type=int, default=64, help="images to generate")
    parser.add_argument("--steps", type=int, default=10, help="timed train steps")
    parser.add_argument("--pipeline_batches", type=int, default=50, help="timed batches")
    parser.add_argument("--step_only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from sln_jax import train_state
    train_state.use_classic_prng()  # as the entry points do
    config = load_config(args.config)

    if args.step_only:  # child process: one device count, JSON on the last line
        config.data.dir = args.data_dir
        print(json.dumps(bench_step(config, args.steps)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        records = args.data_dir or make_dataset(config, tmp, args.num_train)
        config.data.dir = records
        pipeline = bench_pipeline(config, args.pipeline_batches)
        steps = [run_step_subprocess(args, records, n) for n in (1, 2)]
    print(f"config {os.path.relpath(args.config, REPO)}: {config.data.image_size} px, "
          f"global batch {config.train.batch_size}, backbone {config.model.backbone}")
    print(f"input pipeline alone: {pipeline:8.1f} images/s")
    for result in steps:
        print(f"train step, {result['devices']} CPU device(s): {result['images_per_sec']:8.2f} "
              f"images/s (first step with compilation {result['compile_s']:.1f} s); "
              f"pipeline / step = {pipeline / result['images_per_sec']:.1f}")


if __name__ == "__main__":
    main()
