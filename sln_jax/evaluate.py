"""CLI: evaluate a COCO results file against a GT file and print / save the metrics.

    python -m sln_jax.evaluate --gt GT.json --results RESULTS.json \
        [--format coco|cocoa] [--output metrics.json] [--iou_type amodal modal]

Prints ``sln_jax.evaluation.format_table`` and, with ``--output``, writes the flat metrics
JSON atomically. Exit status 2 with a one-line message for bad input.
"""

from __future__ import annotations

import argparse
import sys

from sln_jax import evaluation


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m sln_jax.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gt", required=True, help="ground-truth JSON")
    parser.add_argument("--results", required=True, help="COCO results JSON (list)")
    parser.add_argument("--format", default="coco", choices=("coco", "cocoa"),
                        help="GT format: COCO / D2SA-style, or the COCOA per-image format")
    parser.add_argument("--output", help="where to write the flat metrics JSON")
    parser.add_argument("--iou_type", nargs="+", default=["amodal", "modal"],
                        choices=("amodal", "modal"), help="mask types to evaluate")
    return parser.parse_args(argv)


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
