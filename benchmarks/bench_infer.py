"""Inference speed on CPU: images/s and latency per 512 x 512 image, compile time apart.

Runs ``sln_jax.infer.Predictor`` with the default config (``configs/synthetic.py``) on
synthetic 512 x 512 scenes. The parameters are randomly initialized (speed does not depend
on their values); the score threshold is 0 so every one of the D detection slots is
postprocessed, the most work a real checkpoint can cause. Two canvas settings are measured:
the default buckets (a 512 px image is shrunk into the 2 S = 256 canvas) and a 512 canvas
(the image at full resolution).

Figures printed per setting: the first call (trace + compile + run), then over the timed
images: model-only latency (forward pass, device to host), postprocess latency (masks,
layers, depth order at image resolution), end-to-end ``predict`` latency (median, p90) and
images/s, with batch 1 and with ``--batch_size``; and the time to draw one picture.

  python benchmarks/bench_infer.py [--images 12] [--batch_size 4]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep import synthetic  # noqa: E402
from sln_jax import infer, visualize  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(path: str):
    """``get_config()`` of a config file."""
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def random_variables(config, seed: int = 0):
    """Randomly initialized model variables (jitted init: op-by-op init is minutes on CPU)."""
    import jax
    import jax.numpy as jnp
    from sln_jax.models.sln import SLN

    model = SLN(config.model)
    size = config.data.image_size
    init = jax.jit(lambda key, x: model.init({"params": key}, x, None, train=False))
    variables = init(jax.random.PRNGKey(seed), jnp.zeros((1, size, size, 3), jnp.float32))
    return jax.block_until_ready(variables)


def percentiles(seconds: list[float], cpu: list[float] | None = None) -> str:
    ms = 1000 * np.asarray(seconds)
    text = f"median {np.median(ms):7.1f} ms  p90 {np.percentile(ms, 90):7.1f} ms"
    if cpu is not None:
        text += f"  (CPU {1000 * np.median(cpu):7.1f} ms)"
    return text


class Clock:
    """Wall and process CPU time of a block (CPU time shows contention on a shared host)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def measure(predictor: infer.Predictor, images: list[np.ndarray], label: str) -> None:
    """Prints first-call, model, postprocess and end-to-end figures of one predictor."""
    start = time.perf_counter()
    predictor.predict(images[0])
    first = time.perf_counter() - start
    print(f"\n[{label}] canvases {predictor.canvas_sizes}, batch {predictor.batch_size}, "
          f"compiled shapes {predictor.compiled_shapes}")
    print(f"  first call (trace + compile + run): {first:6.2f} s")

    model_times, post_times, total_times = [], [], []
    model_cpu, post_cpu, total_cpu = [], [], []
    detections = 0
    for image in images:
        with Clock() as model:
            ((outputs, size),) = predictor.raw_outputs([image])
        with Clock() as post:
            instances = predictor.to_instances(outputs, size, image.shape[:2])
        model_times.append(model.wall)
        post_times.append(post.wall)
        total_times.append(model.wall + post.wall)
        model_cpu.append(model.cpu)
        post_cpu.append(post.cpu)
        total_cpu.append(model.cpu + post.cpu)
        detections += len(instances)
    print(f"  model (forward + device_get):      {percentiles(model_times, model_cpu)}")
    print(f"  postprocess (to_instances):        {percentiles(post_times, post_cpu)}  "
          f"({detections / len(images):.1f} detections / image)")
    print(f"  end to end, batch 1:               {percentiles(total_times, total_cpu)}  "
          f"{len(images) / sum(total_times):6.2f} images/s")

    instances = predictor.predict(images[0])
    visualize.draw_picture(images[0], instances)  # imports matplotlib, warms its caches
    pictures = []
    for image in images[:4]:
        instances = predictor.predict(image)
        with Clock() as picture:
            visualize.draw_picture(image, instances)
        pictures.append(picture.wall)
    print(f"  one picture (draw_picture):        {percentiles(pictures)}")


def measure_batched(predictor: infer.Predictor, images: list[np.ndarray], label: str) -> None:
    """Prints images/s of ``predict_batch`` with the predictor's batch size."""
    predictor.predict_batch(images[:predictor.batch_size])  # compile
    with Clock() as clock:
        predictor.predict_batch(images)
    print(f"\n[{label}] predict_batch, batch {predictor.batch_size}: "
          f"{len(images) / clock.wall:6.2f} images/s ({1000 * clock.wall / len(images):.1f} ms "
          f"per image, CPU {1000 * clock.cpu / len(images):.1f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "synthetic.py"))
    parser.add_argument("--images", type=int, default=12, help="timed images per setting")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--side", type=int, default=512, help="input image side")
    args = parser.parse_args()
    from sln_jax import train_state
    train_state.use_classic_prng()  # as the entry points do

    import jax
    config = load_config(args.config)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} x {jax.device_count()}, "
          f"{os.cpu_count()} CPU cores; config {os.path.relpath(args.config, ROOT)}: "
          f"S = {config.data.image_size}, backbone {config.model.backbone}, "
          f"D = {config.model.max_detections}, K = {config.model.num_layers}; random params; "
          f"load average {os.getloadavg()[0]:.1f}")
    start = time.perf_counter()
    variables = random_variables(config)
    print(f"random init (jitted): {time.perf_counter() - start:.1f} s")

    scene_config = synthetic.SceneConfig(image_size=args.side)
    images = [synthetic.make_scene(0, "val", i, scene_config).image
              for i in range(args.images)]
    print(f"{len(images)} synthetic {args.side} x {args.side} images")

    settings = [("default buckets", None), (f"canvas {args.side}", (args.side,))]
    for label, canvases in settings:
        predictor = infer.Predictor.from_variables(config, variables, canvas_sizes=canvases,
                                                   score_threshold=0.0)
        measure(predictor, images, label)
        batched = infer.Predictor.from_variables(config, variables, canvas_sizes=canvases,
                                                 score_threshold=0.0,
                                                 batch_size=args.batch_size)
        measure_batched(batched, images, label)


if __name__ == "__main__":
    main()
