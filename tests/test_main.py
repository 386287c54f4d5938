"""Tests of the sln_jax.main CLI: config overrides, modes, the outputs of a whole run."""

import json
import os
import shutil

import pytest

from sln_jax import checkpoints, main
from tiny_dataset import load_tiny_config, run_main, start_main

# ARCHITECTURE.md's flat metric names that every synthetic (COCO-format) evaluation writes.
REQUIRED_METRICS = [
    f"{kind}/{name}"
    for kind in ("amodal", "modal")
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")
] + [
    "amodal/AR100_none",
    "amodal/AR100_partial",
    "amodal/AR100_heavy",
    "occlusion/accuracy",
    "occlusion/f1",
    "order/accuracy",
    "order/recall",
    "order/pairs",
]
RESULT_KEYS = {"image_id", "category_id", "score", "bbox", "segmentation", "visible_mask", "occlude_rate", "depth_order"}


def test_unknown_mode_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="mode='bogus'"):
        main.run(load_tiny_config(), str(tmp_path), "bogus")


def test_evaluate_without_checkpoint_fails_clearly(tmp_path):
    config = load_tiny_config()
    with pytest.raises(FileNotFoundError, match="no checkpoint in .*checkpoints: train first"):
        main.run(config, str(tmp_path), "evaluate")


def _one_line_error(result, text: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "sln_jax.main: error:" in line]
    assert len(lines) == 1 and text in lines[0], result.stderr[-3000:]


def test_unknown_override_fails_naming_the_field(tmp_path):
    result = run_main(f"--workdir={tmp_path}", "--config.train.num_stepz=3", timeout=300)
    _one_line_error(result, "--config.train.num_stepz: the config has no field 'num_stepz'")
    assert 'Did you mean "num_steps"' in result.stderr


def test_bad_mode_is_a_one_line_error(tmp_path):
    result = run_main(f"--workdir={tmp_path}", "--mode=bogus", timeout=300)
    _one_line_error(result, "--mode=bogus: value should be one of")


def test_evaluate_of_a_workdir_without_a_run_is_a_one_line_error(tmp_path):
    result = run_main(f"--workdir={tmp_path}", "--mode=evaluate", timeout=300, config=None)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "sln_jax.main: error:" in result.stderr and "no config.json" in result.stderr


@pytest.mark.slow
def test_train_and_evaluate_writes_every_output(tiny_run, tmp_path):
    """The session's run (``tiny_run``: the tiny config with --config.train.num_steps=2
    --config.optim.learning_rate=0.001 --config.eval.num_pictures=2, mode
    train_and_evaluate) wrote every output; evaluating its workdir again, with the config or
    with the workdir's saved one, gives the same metrics."""
    result, records = tiny_run.result, tiny_run.records
    workdir = tiny_run.workdir
    assert result.returncode == 0, result.stderr[-3000:]
    # Overrides reached the run: recorded config, schedule length, checkpoint step.
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["train"]["num_steps"] == 2 and saved["optim"]["learning_rate"] == 0.001
    assert saved["data"]["dir"] == records
    checkpoint = checkpoints.load_checkpoint(str(workdir))
    assert checkpoint["step"] == 2 and checkpoint["config"] == saved
    assert "step 2/2" in result.stderr
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert set(REQUIRED_METRICS) <= set(metrics)
    assert all(v == -1 or 0 <= v <= 1 for k, v in metrics.items() if k != "order/pairs")
    results = json.loads((workdir / "results_val.json").read_text())
    gt = json.loads((tiny_run.raw / "annotations" / "val.json").read_text())
    assert results and {r["image_id"] for r in results} <= {image["id"] for image in gt["images"]}
    for entry in results:
        assert RESULT_KEYS <= set(entry)
    assert sorted(os.listdir(workdir / "pictures")) == ["val_00.png", "val_01.png"]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir))
    # Two more invocations, each on its own copy of the workdir (the session's stays as the
    # run left it), run side by side:
    # a second invocation resumes at the end: it trains no step and evaluates again;
    again_dir, saved_dir = tmp_path / "again", tmp_path / "saved"
    for copy in (again_dir, saved_dir):
        shutil.copytree(workdir, copy)
        os.remove(copy / "metrics.json")  # each must write its own
    again = start_main(f"--workdir={again_dir}", f"--config.data.dir={records}",
                       "--config.train.num_steps=2", "--config.optim.learning_rate=0.001",
                       "--mode=evaluate")
    # without --config the workdir's saved config serves: its records and val annotations.
    saved_run = start_main(f"--workdir={saved_dir}", "--mode=evaluate", config=None)
    try:
        again_err = again.communicate(timeout=1500)[1]
        saved_err = saved_run.communicate(timeout=1500)[1]
    finally:
        for process in (again, saved_run):
            if process.poll() is None:
                process.kill()
    assert again.returncode == 0, again_err[-3000:]
    assert "Evaluation at step 2" in again_err
    assert json.loads((again_dir / "metrics.json").read_text()) == metrics
    assert saved_run.returncode == 0, saved_err[-3000:]
    assert json.loads((saved_dir / "metrics.json").read_text()) == metrics
