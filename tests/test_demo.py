"""The main job's command line: a failing data step is one line, not a traceback."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_failing_data_step_is_one_clear_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "sln_jax.demo", f"--workdir={tmp_path / 'w'}",
         "--config.synthetic.num_train=-3"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "--num_train must be >= 0, got -3" in done.stderr
    assert "sln_jax.demo: error: python -m data_prep.synthetic failed" in done.stderr
