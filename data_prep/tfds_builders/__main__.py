"""CLI: prepare one of the sln-jax TFDS datasets, in this process or on Apache Beam.

    python -m data_prep.tfds_builders --dataset NAME [--config CONFIG] --data_dir DIR \\
        [--manual_dir DIR] [--beam_pipeline_options "runner=DirectRunner,..."]

What ``tfds build NAME --imports data_prep.tfds_builders`` does (TFDS's CLI; from the
repository root with ``PYTHONPATH=.``, see the README); bad input exits with status 1 and one
line naming the file and the image / annotation id, as ``data_prep.convert`` does, also
when the error happened in a Beam worker.
"""

from __future__ import annotations

import argparse
import re
import sys

from data_prep.scene import DataError

_DATA_ERROR = re.compile(r"DataError: (.+?)(?: \[while running [^\]]*\])?$", re.MULTILINE)


def data_error_line(err: BaseException) -> str | None:
    """The DataError message in an exception, or in the text Beam wraps a worker's in."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, DataError):
            return str(err)
        match = _DATA_ERROR.search(str(err))
        if match:
            return match.group(1).strip()
        err = err.__cause__ or err.__context__
    return None


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m data_prep.tfds_builders",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="e.g. sln_synthetic, kins_amodal")
    parser.add_argument("--config", default=None, help="builder config (default: the first)")
    parser.add_argument("--data_dir", required=True, help="TFDS data directory")
    parser.add_argument("--manual_dir", default=None,
                        help="manual download directory (default: DATA_DIR/downloads/manual)")
    parser.add_argument("--beam_pipeline_options", default=None,
                        help="generate on Beam, e.g. 'runner=DirectRunner,"
                             "direct_num_workers=2,direct_running_mode=multi_processing'")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    args = _parse_args(argv)
    import tensorflow_datasets as tfds

    import data_prep.tfds_builders  # noqa: F401  (registers the builders)

    name = args.dataset + (f"/{args.config}" if args.config else "")
    beam_options = None
    if args.beam_pipeline_options:
        from apache_beam.options.pipeline_options import PipelineOptions

        beam_options = PipelineOptions([f"--{option}" for option in
                                        args.beam_pipeline_options.split(",") if option])
    try:
        builder = tfds.builder(name, data_dir=args.data_dir)
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=args.manual_dir, beam_options=beam_options))
    except Exception as err:  # noqa: BLE001 - Beam wraps a worker's DataError
        line = data_error_line(err)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 1
    splits = ", ".join(f"{split} {info.num_examples}"
                       for split, info in builder.info.splits.items())
    print(f"{builder.name}/{builder.builder_config.name} {builder.version}: {splits} "
          f"-> {builder.data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
