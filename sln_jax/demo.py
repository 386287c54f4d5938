"""The main job, end to end on a CPU: synthetic data -> TFRecords -> train -> evaluate.

  python -m sln_jax.demo --workdir workdir/demo [--config configs/synthetic.py]
      [--config.train.num_steps=...]

Steps, each skipped when its output is already complete (re-running resumes):
1. generate the built-in synthetic dataset (``config.synthetic``) in ``WORKDIR/data/synthetic``;
2. convert its train and val splits to sharded TFRecords in ``WORKDIR/data/records``;
3. train ``config`` (resuming from the latest checkpoint in ``WORKDIR``);
4. evaluate on the val split: print the metrics table, write ``WORKDIR/metrics.json``,
   ``WORKDIR/results_val.json``, pictures of predictions in ``WORKDIR/pictures/`` and the
   README's results table in ``WORKDIR/metrics.md`` (``benchmarks/check_readme.py`` compares
   the two).
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
METRICS_MARKDOWN = "metrics.md"
# The README's results table: (left metric, right metric) per row.
RESULTS_TABLE_ROWS = (
    ("amodal/AP", "modal/AP"),
    ("amodal/AP50", "modal/AP50"),
    ("amodal/AP75", "occlusion/accuracy"),
    ("amodal/AR100", "occlusion/f1"),
    ("amodal/AR100_none", "order/accuracy"),
    ("amodal/AR100_partial", "order/accuracy_decided"),
    ("amodal/AR100_heavy", "order/recall"),
)
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


def results_table(metrics: dict[str, float]) -> str:
    """The README's results table (Markdown) of the main job's metrics.

    Every value has three decimals (-1 where a metric has no ground truth, as in
    ``metrics.json``); ``order/accuracy`` also gives the number of matched pairs.
    """
    def cell(name: str) -> str:
        value = f"{metrics.get(name, -1.0):.3f}"
        if name == "order/accuracy" and "order/pairs" in metrics:
            value += f" ({int(metrics['order/pairs'])} pairs)"
        return value

    lines = ["| metric | value | metric | value |", "|---|---|---|---|"]
    lines += [f"| {left} | {cell(left)} | {right} | {cell(right)} |"
              for left, right in RESULTS_TABLE_ROWS]
    return "\n".join(lines) + "\n"


def write_results_table(workdir: str, metrics: dict[str, float]) -> str:
    """Writes ``results_table(metrics)`` to ``WORKDIR/metrics.md`` atomically; returns it."""
    table = results_table(metrics)
    path = os.path.join(workdir, METRICS_MARKDOWN)
    with open(path + ".tmp", "w") as f:
        f.write(table)
    os.replace(path + ".tmp", path)
    return table


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
    print(write_results_table(workdir, metrics), end="")
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    print(f"metrics: {os.path.join(workdir, 'metrics.json')} and {METRICS_MARKDOWN}; pictures: "
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
