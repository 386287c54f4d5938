"""The main job, end to end on a CPU: synthetic data -> TFRecords -> train -> evaluate.

  python -m sln_jax.demo --workdir workdir/demo [--config configs/synthetic.py]
      [--config.train.num_steps=...]

Steps, each skipped when its output is already complete (re-running resumes):
1. generate the built-in synthetic dataset (``config.synthetic``) in ``WORKDIR/data/synthetic``;
2. convert its train and val splits to sharded TFRecords in ``WORKDIR/data/records``;
3. train ``config`` (resuming from the latest checkpoint in ``WORKDIR``);
4. evaluate on the val split: print the metrics table, write ``WORKDIR/metrics.json``,
   ``WORKDIR/results_val.json`` and pictures of predictions in ``WORKDIR/pictures/``.
The latest checkpoint stays in ``WORKDIR`` for ``python -m sln_jax.infer``.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags, logging
from ml_collections import config_flags

from sln_jax import runtime

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for data, checkpoints, metrics and pictures.")
config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "synthetic.py"),
    "The run's config file; its `synthetic` section describes the generated dataset.",
    lock_config=True)
flags.mark_flags_as_required(["workdir"])


def prepare_data(config, workdir: str) -> tuple[str, str]:
    """Generates and converts the synthetic dataset of ``config.synthetic`` (idempotent).

    Returns:
      (records directory, val annotations JSON path).
    """
    from data_prep import convert, synthetic

    raw = os.path.join(workdir, "data", "synthetic")
    records = os.path.join(workdir, "data", "records")
    syn = config.synthetic
    scene_config = synthetic.SceneConfig(
        image_size=int(syn.image_size), min_objects=int(syn.min_objects),
        max_objects=int(syn.max_objects))
    counts = {"train": int(syn.num_train), "val": int(syn.num_val)}
    # The settings are part of the dataset: regenerate when they change.
    settings = {"seed": int(syn.seed), "counts": counts, "scene": repr(scene_config)}
    stamp = os.path.join(raw, "settings.json")
    current = None
    if os.path.exists(stamp):
        with open(stamp) as f:
            current = json.load(f)
    for split, count in counts.items():
        if current != settings or not os.path.exists(
                os.path.join(raw, "annotations", f"{split}.json")):
            synthetic.write_split(raw, split, count, int(syn.seed), scene_config,
                                  workers=int(syn.workers))
    if current != settings:
        with open(stamp + ".tmp", "w") as f:
            json.dump(settings, f)
        os.replace(stamp + ".tmp", stamp)
    for split in counts:
        convert.convert(
            "synthetic", os.path.join(raw, "annotations", f"{split}.json"),
            os.path.join(raw, "images", split), records, split=split,
            num_shards=int(syn.num_shards), workers=int(syn.workers),
            num_layers=int(config.data.num_layers),
            mask_target_size=int(config.data.mask_target_size),
            overwrite=current != settings)
    return records, os.path.join(raw, "annotations", "val.json")


def run(config, workdir: str) -> dict[str, float]:
    """Runs the whole job; returns the final val metrics (flat names of ARCHITECTURE.md)."""
    from sln_jax import evaluation, train

    timings = {}
    start = time.perf_counter()
    records, val_json = prepare_data(config, workdir)
    timings["data"] = time.perf_counter() - start
    config.data.dir = records
    config.eval.gt_json = val_json
    start = time.perf_counter()
    metrics = train.train_and_evaluate(config, workdir)
    timings["train + evaluate"] = time.perf_counter() - start
    print(evaluation.format_table(metrics))
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    print(f"metrics: {os.path.join(workdir, 'metrics.json')}; pictures: "
          f"{os.path.join(workdir, 'pictures')}; checkpoint: {workdir}")
    return metrics


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    runtime.configure_cpu()  # before JAX starts a backend
    # Imported here, not at the top: the data workers are spawned processes that import this
    # module again, and TensorFlow would cost each of them ~7 s of start-up.
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    if "synthetic" not in FLAGS.config:
        raise app.UsageError(f"{FLAGS['config'].value}: the demo needs a config with a "
                             "`synthetic` section (see configs/synthetic.py)")
    from sln_jax import train

    logging.set_verbosity(logging.INFO)
    train.quiet_library_logs()
    os.makedirs(FLAGS.workdir, exist_ok=True)
    run(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
