"""Checks the README's results table against a run of the main job.

    python benchmarks/check_readme.py --workdir W [--tolerance 0.02] [--readme README.md]
        [--run [--budget 600]]

Compares the table under the README's "## Results of the main command" heading with
``W/metrics.md``, the table the main job (``python -m sln_jax.demo --workdir W``) writes;
``--run`` runs the main job into W first and times it: the job's budget is 10 minutes end to
end on 2 CPU cores (``--budget`` seconds). Exits 0 when they agree (and the run kept to its
budget), 1 naming every metric that differs (values by more than ``--tolerance``, absolute;
pair counts by more than ``--tolerance`` relative, since XLA's CPU code may differ slightly
between processors) or that only one of the two tables has, and a run over budget, 2 when a
file or table is missing.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_SECTION = "## Results of the main command"
METRICS_MARKDOWN = "metrics.md"  # sln_jax.demo.METRICS_MARKDOWN (not imported: absl flags)
# A cell value: a number, optionally followed by "(N pairs)".
_VALUE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(?:\((\d+)\s+pairs\))?\s*$")
_NAME = re.compile(r"^[a-z][\w]*/[\w/]+$")


def parse_table(text: str) -> dict[str, float]:
    """{metric: value} of the first "| metric | value | ..." Markdown table in ``text``.

    Cells come in (name, value) pairs; "0.480 (123 pairs)" gives the metric's value and
    ``order/pairs`` = 123.

    Raises:
      ValueError: when ``text`` has no such table or a value cell is not a number.
    """
    lines = text.splitlines()
    start = next((k for k, line in enumerate(lines)
                  if line.strip().startswith("|") and "metric" in line and "value" in line), None)
    if start is None:
        raise ValueError("no '| metric | value |' table")
    metrics: dict[str, float] = {}
    for line in lines[start + 1:]:
        line = line.strip()
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        if all(set(c) <= set("-: ") for c in cells):
            continue  # the header rule
        for name, value in zip(cells[0::2], cells[1::2]):
            if not name:
                continue
            match = _VALUE.match(value)
            if not _NAME.match(name) or match is None:
                raise ValueError(f"table row {line!r}: {name!r} = {value!r} is not a metric "
                                 "and a number")
            metrics[name] = float(match.group(1))
            if match.group(2) is not None:
                metrics["order/pairs"] = float(match.group(2))
    if not metrics:
        raise ValueError("the '| metric | value |' table has no rows")
    return metrics


def readme_table(readme: str) -> dict[str, float]:
    """The results table of the README's "## Results of the main command" section."""
    start = readme.find(README_SECTION)
    if start < 0:
        raise ValueError(f"no '{README_SECTION}' section")
    end = readme.find("\n## ", start + len(README_SECTION))
    return parse_table(readme[start:end if end >= 0 else len(readme)])


def compare(readme: dict[str, float], run: dict[str, float], tolerance: float) -> list[str]:
    """One line per metric that differs between the README's table and the run's, sorted."""
    problems = []
    for name in sorted(set(readme) | set(run)):
        if name not in run:
            problems.append(f"{name}: README {readme[name]:g}, not in the run's table")
        elif name not in readme:
            problems.append(f"{name}: run {run[name]:g}, not in the README's table")
        else:
            a, b = readme[name], run[name]
            allowed = tolerance * max(abs(a), abs(b)) if name == "order/pairs" else tolerance
            if abs(a - b) > allowed + 1e-12:
                problems.append(f"{name}: README {a:g}, run {b:g} (differ by {abs(a - b):.3g} > "
                                f"{allowed:.3g})")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="the main job's workdir")
    parser.add_argument("--tolerance", type=float, default=0.02,
                        help="largest absolute difference of a metric (relative for counts)")
    parser.add_argument("--readme", default=os.path.join(REPO, "README.md"))
    parser.add_argument("--run", action="store_true",
                        help="run the main job into --workdir first")
    parser.add_argument("--budget", type=float, default=600.0,
                        help="with --run: the main job's wall-time budget in seconds")
    args = parser.parse_args(argv)
    over_budget = []
    if args.run:
        start = time.monotonic()
        status = subprocess.call([sys.executable, "-m", "sln_jax.demo",
                                  f"--workdir={args.workdir}"], cwd=REPO)
        seconds = time.monotonic() - start
        if status:
            print(f"check_readme: the main job failed (exit {status})", file=sys.stderr)
            return 2
        print(f"main job: {seconds:.0f} s end to end (budget {args.budget:.0f} s)")
        if seconds > args.budget:
            over_budget.append(f"the main job took {seconds:.0f} s, over its budget of "
                               f"{args.budget:.0f} s")
    path = os.path.join(args.workdir, METRICS_MARKDOWN)
    tables = []
    for source, read in ((args.readme, readme_table), (path, parse_table)):
        try:
            with open(source) as f:
                tables.append(read(f.read()))
        except (OSError, ValueError) as e:
            print(f"check_readme: {source}: {e}", file=sys.stderr)
            return 2
    readme, run = tables
    problems = compare(readme, run, args.tolerance)
    if problems:
        print(f"README results table differs from {path} (tolerance {args.tolerance}):")
        for line in problems:
            print(f"  {line}")
    for line in over_budget:
        print(f"check_readme: {line}")
    if problems or over_budget:
        return 1
    print(f"README results table matches {path} ({len(run)} metrics, tolerance "
          f"{args.tolerance})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
