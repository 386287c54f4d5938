"""Ablation of SLN's design on the main job: one table, every row a full main-job run.

Each variant is the main job (``python -m sln_jax.demo``: generate, convert, train, evaluate)
with a few config overrides, run in its own subprocess and workdir ``ROOT/VARIANT``; the
table is read back from each run's ``metrics.json``. A finished variant is not rerun (delete
its workdir to redo it). Variants:

* default: ``configs/synthetic.py`` as it is (head 'layers', GLM, K = 4, instance context,
  order head);
* semdist head: the paper's representation, the sem-dist map regressed directly;
* no GLM: the layering head without the global layering map;
* K = 2: one hidden level instead of three (records converted with that K; the default is
  K = 4: visible, hidden once, twice, three times or more);
* no hidden weight: hidden pixels weighted like visible ones in the layers loss (1 vs 2);
* no instance context: the layering head without ``InstanceContext`` (the paper's head);
* no order head: the depth order read off the layering maps only (the paper's decoding),
  without the pairwise ``OrderHead``;
* sigmoid loss: the reference's per-layer binary cross-entropies (``config.loss.layers_form``).
* semantic input (exact classes): the layering head also takes the generator's exact class
  map (background and the 5 classes, ROI-aligned like the GLM map), as the reference feeds
  DeepLab's class probabilities: an upper bound on what a semantic segmentation adds.
* semantic head (learned): the GLM predicts that class map itself, trained on the exact
  maps (``config.model.semantic_head``): what of that bound a learned map keeps.

  python benchmarks/ablation.py --root workdir/ablation [--steps N] [--only default,no_glm]
      [--markdown FILE]

``--steps`` shortens every run alike (the default is the config's ``train.num_steps``, the
main job's budget). Prints, and optionally writes, a Markdown table: amodal AP50 and AP,
modal AP, occlusion F1, order accuracy (all pairs, and over the pairs given an order) and recall.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VARIANTS = {
    "default": [],
    "semdist head": ["--config.model.head=semdist"],
    "no GLM": ["--config.model.glm=False"],
    "K = 2": ["--config.data.num_layers=2", "--config.model.num_layers=2"],
    "no hidden weight": ["--config.loss.occluded_pixel_weight=1.0"],
    "no instance context": ["--config.model.instance_context=False"],
    "no order head": ["--config.model.order_head=False"],
    "sigmoid loss (reference)": ["--config.loss.layers_form=sigmoid"],
    "semantic input (exact classes)": ["--config.synthetic.semantic=True",
                                       "--config.model.semantic_channels=6"],
    "semantic head (learned)": ["--config.synthetic.semantic=True",
                                "--config.model.semantic_channels=6",
                                "--config.model.semantic_head=True"],
}
COLUMNS = (("amodal/AP50", "AP50"), ("amodal/AP", "AP"), ("modal/AP", "modal AP"),
           ("occlusion/f1", "occl. F1"),
           ("order/accuracy", "order acc."), ("order/accuracy_decided", "acc. decided"),
           ("order/recall", "order recall"))


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def run_variant(name: str, overrides: list[str], root: str, steps: int | None) -> dict:
    """The metrics of one variant, running its main job unless its metrics.json exists."""
    workdir = os.path.join(root, slug(name))
    metrics_path = os.path.join(workdir, "metrics.json")
    if not os.path.exists(metrics_path):
        command = [sys.executable, "-m", "sln_jax.demo", f"--workdir={workdir}", *overrides]
        if steps is not None:
            command.append(f"--config.train.num_steps={steps}")
        os.makedirs(workdir, exist_ok=True)
        start = time.perf_counter()
        with open(os.path.join(workdir, "ablation.log"), "w") as log:
            result = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            raise SystemExit(f"ablation: variant {name!r} failed (exit {result.returncode}); "
                             f"see {os.path.join(workdir, 'ablation.log')}")
        print(f"  {name}: {time.perf_counter() - start:.0f} s", flush=True)
    with open(metrics_path) as f:
        return json.load(f)


def table(rows: dict[str, dict]) -> str:
    head = "| variant | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [head, "|---" * (len(COLUMNS) + 1) + "|"]
    for name, metrics in rows.items():
        cells = [f"{metrics.get(key, -1.0):.3f}" for key, _ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="one workdir per variant under it")
    parser.add_argument("--steps", type=int, default=None, help="train steps of every run")
    parser.add_argument("--only", default="", help="comma-separated variant names")
    parser.add_argument("--markdown", default="", help="also write the table to this file")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"ablation: unknown variants {unknown}; choose from {list(VARIANTS)}")
    rows = {}
    for name in names:
        rows[name] = run_variant(name, VARIANTS[name], args.root, args.steps)
    text = table(rows)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
