"""Command line entry point: train and / or evaluate SLN from a config file.

  python -m sln_jax.main --config configs/synthetic.py --workdir DIR \\
      [--mode train|evaluate|train_and_evaluate] [--config.train.num_steps=100 ...]
  python -m sln_jax.main --workdir DIR --mode evaluate

Any config field can be overridden as ``--config.<path>=<value>``. Without ``--config`` the run
uses the config saved in ``--workdir`` (``WORKDIR/config.json``, written when training
starts), so a trained workdir is evaluated (or resumed) as it was trained. A run resumes from
the latest checkpoint in ``--workdir`` automatically; its config must fit the checkpoint
(``sln_jax.checkpoints.check_compatible``). ``train_and_evaluate`` (the default) ends with the
evaluation of the final state on the val split, written to ``WORKDIR/metrics.json``,
``WORKDIR/results_val.json`` and ``WORKDIR/pictures/``.

Several hosts: set ``--config.multihost=True`` on a cluster jax can detect (TPU pods, SLURM,
...), or pass ``--coordinator_address``, ``--num_processes`` and ``--process_id`` explicitly
(also how two processes on one machine are started in the tests).
"""

from __future__ import annotations

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from sln_jax import checkpoints, cli, runtime, train_state

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The CLI's flags (defined when run as a program, so importing defines nothing)."""
    flags.DEFINE_string("workdir", None,
                        "Directory for checkpoints, TensorBoard events and outputs.")
    flags.DEFINE_enum(
        "mode",
        "train_and_evaluate",
        ["train", "evaluate", "train_and_evaluate"],
        "train: train only; evaluate: evaluate the latest checkpoint; train_and_evaluate: both.",
    )
    flags.DEFINE_string("coordinator_address", None,
                        "host:port of process 0 for jax.distributed.")
    flags.DEFINE_integer("num_processes", None, "Number of processes for jax.distributed.")
    flags.DEFINE_integer("process_id", None, "This process's index for jax.distributed.")
    config_flags.DEFINE_config_file(
        "config", None, "The run's config file (configs/*.py); default: the config saved in "
        "--workdir by its training run.", lock_config=True)
    flags.mark_flags_as_required(["workdir"])


def run(config, workdir: str, mode: str) -> dict[str, float] | None:
    """Runs ``mode`` ('train' | 'evaluate' | 'train_and_evaluate') of ``config`` in ``workdir``.

    Returns:
      The final val metrics (flat names of ARCHITECTURE.md) for the evaluating modes, else None.
    """
    from sln_jax import train

    if mode == "train":
        train.train(config, workdir, evaluate_every=False)
        return None
    if mode == "evaluate":
        return train.evaluate(config, workdir)
    if mode == "train_and_evaluate":
        return train.train_and_evaluate(config, workdir)
    raise ValueError(f"mode={mode!r}: expected 'train', 'evaluate' or 'train_and_evaluate'")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    runtime.configure_cpu()  # before JAX starts a backend
    runtime.quiet_jax_logs()
    tf = runtime.import_tensorflow()  # before sln_jax.train imports it
    from sln_jax import train

    # tf.data only: keep TensorFlow off any accelerator that JAX should own.
    tf.config.set_visible_devices([], "GPU")
    train_state.use_classic_prng()
    train.quiet_library_logs()
    try:
        config = (FLAGS.config if FLAGS.config is not None
                  else checkpoints.load_config(FLAGS.workdir))
    except FileNotFoundError as error:  # no --config and not a training workdir
        raise cli.error("python -m sln_jax.main", error) from None
    if FLAGS.coordinator_address is not None:
        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
    elif config.multihost:
        jax.distributed.initialize()
    logging.info(
        "process %d/%d, %d local / %d global devices (%s)",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.devices()[0].platform,
    )
    try:
        run(config, FLAGS.workdir, FLAGS.mode)
    except train.TrainingInterrupted as stop:
        raise cli.stopped(stop.exit_status, f"{stop}.", "sln_jax.main") from None
    except KeyboardInterrupt:
        raise cli.stopped(130, "interrupted; the run resumes from its latest checkpoint.",
                          "sln_jax.main") from None
    except FileNotFoundError as error:  # no checkpoint to evaluate, no records, ...
        raise cli.error("python -m sln_jax.main", error) from None


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=cli.parse_global("python -m sln_jax.main"))
