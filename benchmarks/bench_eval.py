"""Benchmark: sln_jax.evaluation vs pycocotools COCOeval (segm) on the same random set.

500 images of 256 x 256, 10 GT and 50 detections each (3 categories, some crowds),
perturbed copies of the GT as detections so that every IoU threshold sees matches.
Prints both wall times, the ratio, and the largest difference over the 12 stats.

    python benchmarks/bench_eval.py [--images 500] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import math
import os
import sys
import time

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sln_jax import evaluation  # noqa: E402

SIZE = 256


def _ellipse(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    cy, cx = rng.uniform(0, SIZE, 2)
    ry, rx = rng.uniform(4, 70, 2)
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def _rle(mask: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    r["counts"] = r["counts"].decode("ascii")
    return r


def make_dataset(num_images: int, seed: int) -> tuple[dict, list]:
    """GT dict (COCO style) and results list: 10 GT and 50 detections per image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32)
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "height": SIZE, "width": SIZE})
        gts = []
        for _ in range(10):
            mask = _ellipse(rng, yy, xx)
            category = int(rng.integers(1, 4))
            gts.append((mask, category))
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                "segmentation": _rle(mask), "area": float(mask.sum()),
                "iscrowd": int(rng.random() < 0.05), "bbox": [0, 0, 1, 1]})
        for _ in range(50):
            if rng.random() < 0.6:
                mask, category = gts[int(rng.integers(0, 10))]
                mask = np.roll(mask, tuple(rng.integers(-6, 7, 2)), axis=(0, 1))
            else:
                mask, category = _ellipse(rng, yy, xx), int(rng.integers(1, 4))
            ys, xs = np.nonzero(mask)
            box = ([float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                    float(ys.max() - ys.min() + 1)] if len(ys) else [0.0, 0.0, 0.0, 0.0])
            results.append({"image_id": image_id, "category_id": category,
                            "segmentation": _rle(mask), "bbox": box,
                            "score": float(np.round(rng.random(), 3))})
    categories = [{"id": c} for c in (1, 2, 3)]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def run_pycocotools(gt: dict, results: list) -> np.ndarray:
    """COCOeval (segm) stats [12]."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        e = COCOeval(coco, coco.loadRes(results), "segm")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return np.asarray(e.stats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each evaluator; the fastest is reported")
    args = parser.parse_args()
    t = time.perf_counter()
    gt, results = make_dataset(args.images, args.seed)
    print(f"dataset: {args.images} images, {len(gt['annotations'])} GT, {len(results)} "
          f"detections, {SIZE}x{SIZE} (built in {time.perf_counter() - t:.1f} s)")

    # Both wall and CPU time, best of --repeat runs: on a shared machine the CPU time
    # is the steadier figure.
    def timed(fn):
        best_wall = best_cpu = math.inf
        for _ in range(args.repeat):
            wall, cpu = time.perf_counter(), time.process_time()
            out = fn()
            best_wall = min(best_wall, time.perf_counter() - wall)
            best_cpu = min(best_cpu, time.process_time() - cpu)
        return out, best_wall, best_cpu

    # pycocotools edits its inputs: give each run fresh copies, made outside the timing.
    copies = iter([(copy.deepcopy(gt), copy.deepcopy(results)) for _ in range(args.repeat)])
    reference, wall_ref, cpu_ref = timed(lambda: run_pycocotools(*next(copies)))
    metrics, wall_ours, cpu_ours = timed(
        lambda: evaluation.evaluate(gt, results, iou_types=("amodal",)))
    ours = np.array([metrics[f"amodal/{name}"] for name, *_ in evaluation.metrics._COCO_STATS])

    print(f"pycocotools COCOeval (segm, load + evaluate + accumulate): "
          f"wall {wall_ref:6.2f} s  cpu {cpu_ref:6.2f} s")
    print(f"sln_jax.evaluation (amodal AP/AR + occlusion bins + occlusion/order metrics, "
          f"input validation): wall {wall_ours:6.2f} s  cpu {cpu_ours:6.2f} s")
    print(f"speed-up: wall {wall_ref / wall_ours:.2f}x  cpu {cpu_ref / cpu_ours:.2f}x")
    print(f"max |difference| over the 12 stats: {np.abs(ours - reference).max():.3e}")
    print(f"AP {ours[0]:.4f}  AP50 {ours[1]:.4f}  AR100 {ours[8]:.4f}")


if __name__ == "__main__":
    main()
