"""The main job, end to end on a CPU: synthetic data -> TFRecords -> train -> evaluate.

  python -m sln_jax.demo --workdir workdir/demo [--config configs/synthetic.py]
      [--config.train.num_steps=...]

Steps, each skipped when its output is already complete (re-running resumes):
1. generate the built-in synthetic dataset (``config.synthetic``) in ``WORKDIR/data/synthetic``;
   with ``config.synthetic.semantic`` also its exact semantic maps (background and the 5
   classes, S_sem = 6), for a run with ``--config.model.semantic_channels=6``;
2. convert its train and val splits to sharded TFRecords in ``WORKDIR/data/records``
   (with the semantic maps when generated);
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
import shutil
import subprocess
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from sln_jax import atomic, cli, runtime

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


def define_flags() -> None:
    """The CLI's flags (defined when run as a program, so importing defines nothing)."""
    flags.DEFINE_string("workdir", None, "Directory for data, checkpoints, metrics and pictures.")
    config_flags.DEFINE_config_file(
        "config",
        os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "synthetic.py"),
        "The run's config file; its `synthetic` section describes the generated dataset.",
        lock_config=True)
    flags.mark_flags_as_required(["workdir"])


class DataStepFailed(RuntimeError):
    """A data_prep command of the demo failed; it has printed its own one-line error."""


def _run_module(module: str, *args) -> None:
    """Runs ``python -m module args``: the data_prep command lines (sln_jax imports nothing
    of data_prep, and the conversion workers never load what this process has loaded)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-m", module, *(str(a) for a in args)],
                          env=dict(os.environ, PYTHONPATH=path))
    if done.returncode in (130, -2):  # Ctrl-C reached the data step too: stop as it did
        raise KeyboardInterrupt
    if done.returncode:
        raise DataStepFailed(f"python -m {module} failed (exit status {done.returncode}); "
                             "its message is above")


def semantic_channels(config) -> int:
    """S_sem of the synthetic semantic maps the run needs: num_classes + 1 (background and
    every class) with ``config.synthetic.semantic``, else 0.

    Raises:
      ValueError: ``config.data.semantic_channels`` is not that (maps are made when, and
        only when, the model takes them).
    """
    semantic = bool(config.synthetic.semantic)
    want = int(config.data.num_classes) + 1
    channels = int(config.data.semantic_channels)
    if channels != (want if semantic else 0):
        raise ValueError(
            f"config.synthetic.semantic = {semantic} but config.model.semantic_channels = "
            f"{channels}: the synthetic semantic maps have num_classes + 1 = {want} classes; "
            f"set both (--config.synthetic.semantic=True "
            f"--config.model.semantic_channels={want}) or neither")
    return channels


def prepare_data(config, workdir: str) -> tuple[str, str]:
    """Generates and converts the synthetic dataset of ``config.synthetic`` (idempotent).

    Runs ``python -m data_prep.synthetic`` when the dataset's settings changed (or a split's
    annotations are missing), then ``python -m data_prep.convert`` per split (resumable).

    Returns:
      (records directory, val annotations JSON path).

    Raises:
      ValueError: from ``semantic_channels``.
    """
    raw = os.path.join(workdir, "data", "synthetic")
    records = os.path.join(workdir, "data", "records")
    syn = config.synthetic
    channels = semantic_channels(config)
    semantic = channels > 0
    counts = {"train": int(syn.num_train), "val": int(syn.num_val)}
    scene = {"image_size": int(syn.image_size), "min_objects": int(syn.min_objects),
             "max_objects": int(syn.max_objects)}
    # The settings are part of the dataset: regenerate when they change. (The semantic key
    # only when set: the stamps of datasets made before it existed stay valid.)
    settings = {"seed": int(syn.seed), "counts": counts, "scene": scene,
                **({"semantic": True} if semantic else {})}
    stamp = os.path.join(raw, "settings.json")
    current = None
    if os.path.exists(stamp):
        with open(stamp) as f:
            current = json.load(f)
    missing = any(not os.path.exists(os.path.join(raw, "annotations", f"{split}.json"))
                  for split in counts)
    if current != settings or missing:
        _run_module("data_prep.synthetic", "--output", raw, "--num_train", counts["train"],
                    "--num_val", counts["val"], "--seed", int(syn.seed),
                    "--image_size", scene["image_size"], "--min_objects", scene["min_objects"],
                    "--max_objects", scene["max_objects"], "--workers", int(syn.workers),
                    *(["--semantic"] if semantic else []))
    if current != settings:
        # Records of other data (another split may hold other settings, e.g. no maps) go.
        shutil.rmtree(records, ignore_errors=True)
        atomic.write_json(stamp, settings)
    for split in counts:
        semantic_args = (["--semantic_dir", os.path.join(raw, "semantic", split),
                          "--semantic_channels", channels] if semantic else [])
        _run_module("data_prep.convert", "--dataset", "synthetic",
                    "--annotations", os.path.join(raw, "annotations", f"{split}.json"),
                    "--images", os.path.join(raw, "images", split), "--output", records,
                    "--split", split, "--num_shards", int(syn.num_shards),
                    "--workers", int(syn.workers), "--num_layers", int(config.data.num_layers),
                    "--mask_target_size", int(config.data.mask_target_size),
                    *semantic_args, *(["--overwrite"] if current != settings else []))
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
    from sln_jax import train

    timings = {}
    start = time.perf_counter()
    records, val_json = prepare_data(config, workdir)
    timings["data"] = time.perf_counter() - start
    config.data.dir = records
    config.eval.gt_json = val_json
    start = time.perf_counter()
    metrics = train.train_and_evaluate(config, workdir)
    timings["train + evaluate"] = time.perf_counter() - start
    # The full table was logged by the evaluation (stderr); stdout gets the short summary.
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
    tf = runtime.import_tensorflow()
    runtime.quiet_jax_logs()
    tf.config.set_visible_devices([], "GPU")
    if "synthetic" not in FLAGS.config:
        raise app.UsageError(f"{FLAGS['config'].value}: the demo needs a config with a "
                             "`synthetic` section (see configs/synthetic.py)")
    try:
        semantic_channels(FLAGS.config)
    except ValueError as error:
        raise cli.error("python -m sln_jax.demo", error, status=2) from None
    from sln_jax import train, train_state

    train_state.use_classic_prng()
    logging.set_verbosity(logging.INFO)
    train.quiet_library_logs()
    os.makedirs(FLAGS.workdir, exist_ok=True)
    try:
        run(FLAGS.config, FLAGS.workdir)
    except train.TrainingInterrupted as stop:
        raise cli.stopped(stop.exit_status, f"{stop}.", "sln_jax.demo") from None
    except DataStepFailed as failure:
        raise cli.error("sln_jax.demo", failure) from None
    except KeyboardInterrupt:
        raise cli.stopped(130, "interrupted; the run resumes from its latest checkpoint.",
                          "sln_jax.demo") from None


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=cli.parse_global("python -m sln_jax.demo"))
