"""Tests of the ``python -m sln_jax.evaluate`` CLI: table, metrics file, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from sln_jax import evaluate, evaluation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rle(mask):
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    r["counts"] = r["counts"].decode("ascii")
    return r


@pytest.fixture()
def files(tmp_path):
    masks = [np.zeros((40, 40), bool) for _ in range(2)]
    masks[0][0:20, 0:20] = True
    masks[1][10:40, 10:40] = True
    visible = [masks[0], masks[1] & ~masks[0]]
    gt = {"images": [{"id": 3, "height": 40, "width": 40}],
          "categories": [{"id": 1}],
          "annotations": [
              {"id": k + 1, "image_id": 3, "category_id": 1, "segmentation": _rle(a),
               "visible_mask": _rle(v), "area": float(a.sum()), "iscrowd": False,
               "occlude_rate": float(1 - v.sum() / a.sum()), "order": k + 1}
              for k, (a, v) in enumerate(zip(masks, visible))]}
    results = [{"image_id": 3, "category_id": 1, "segmentation": _rle(a),
                "visible_mask": _rle(v), "score": 0.9 - k / 10, "occlude_rate": 0.0,
                "depth_order": {str(1 - k): 1 - 2 * k}}
               for k, (a, v) in enumerate(zip(masks, visible))]
    gt_path, results_path = tmp_path / "gt.json", tmp_path / "results.json"
    gt_path.write_text(json.dumps(gt))
    results_path.write_text(json.dumps(results))
    return gt_path, results_path


def test_cli_prints_table_and_writes_metrics(files, tmp_path, capsys):
    gt_path, results_path = files
    out = tmp_path / "out" / "metrics.json"
    status = evaluate.main(["--gt", str(gt_path), "--results", str(results_path),
                            "--output", str(out)])
    assert status == 0
    printed = capsys.readouterr().out
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000" \
        in printed
    assert "order/accuracy" in printed
    metrics = json.loads(out.read_text())
    assert metrics == evaluation.evaluate(str(gt_path), str(results_path))
    assert metrics["amodal/AP"] == 1.0 and metrics["modal/AP"] == 1.0
    assert metrics["order/accuracy"] == 1.0 and metrics["order/pairs"] == 1
    assert metrics["occlusion/accuracy"] == 0.5  # the second instance is occluded
    assert [p.name for p in out.parent.iterdir()] == ["metrics.json"]  # no temp file left


def test_cli_iou_type_selects_variants(files, tmp_path):
    gt_path, results_path = files
    out = tmp_path / "m.json"
    assert evaluate.main(["--gt", str(gt_path), "--results", str(results_path),
                          "--iou_type", "modal", "--output", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert "modal/AP" in metrics and "amodal/AP" not in metrics


def test_cli_bad_input_exits_2_with_one_line(files, tmp_path, capsys):
    gt_path, _ = files
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 12, "category_id": 1, "score": 1.0,
                                "segmentation": {"size": [40, 40], "counts": "0"}}]))
    assert evaluate.main(["--gt", str(gt_path), "--results", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.json" in err and "image_id" in err


def test_module_entry_point(files):
    gt_path, results_path = files
    proc = subprocess.run([sys.executable, "-m", "sln_jax.evaluate", "--gt", str(gt_path),
                           "--results", str(results_path), "--format", "coco"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "modal masks" in proc.stdout and "occlusion/f1" in proc.stdout
