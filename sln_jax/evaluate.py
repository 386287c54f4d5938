"""CLI: evaluate a COCO results file against a GT file and print / save the metrics.

    python -m sln_jax.evaluate --gt GT.json --results RESULTS.json \
        [--format coco|cocoa] [--output metrics.json] [--iou_type amodal --iou_type modal]

Prints ``sln_jax.evaluation.format_table`` and, with ``--output``, writes the flat metrics
JSON atomically. Exit status 2 with a one-line message for bad input.
"""

from __future__ import annotations

import sys

from absl import flags

from sln_jax import cli, evaluation


def _define_flags(values: flags.FlagValues) -> None:
    flags.DEFINE_string("gt", None, "ground-truth JSON", flag_values=values)
    flags.DEFINE_string("results", None, "COCO results JSON (list)", flag_values=values)
    flags.DEFINE_enum("format", "coco", ["coco", "cocoa"],
                      "GT format: COCO / D2SA-style, or the COCOA per-image format",
                      flag_values=values)
    flags.DEFINE_string("output", None, "where to write the flat metrics JSON",
                        flag_values=values)
    flags.DEFINE_multi_enum("iou_type", ["amodal", "modal"], ["amodal", "modal"],
                            "mask types to evaluate (repeat the flag for both)",
                            flag_values=values)
    flags.mark_flags_as_required(["gt", "results"], flag_values=values)


def parse_args(argv: list[str] | None = None) -> flags.FlagValues:
    """Command-line flags (see the module docstring; ``sln_jax.cli``)."""
    return cli.parse(_define_flags, argv, "python -m sln_jax.evaluate")


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation; returns the process exit status."""
    args = parse_args(argv)
    try:
        metrics = evaluation.evaluate(args.gt, args.results, fmt=args.format,
                                      iou_types=args.iou_type)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(evaluation.format_table(metrics))
    if args.output:
        evaluation.write_metrics(args.output, metrics)
        print(f"metrics written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
