"""SIGTERM / SIGINT during training: the step finishes, a checkpoint is written, the run
prints how to resume and exits 143 / 130 without a traceback; the printed command resumes."""

import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from sln_jax import checkpoints
from tiny_dataset import REPO, TINY_CONFIG, make_tiny_dataset
from xla_env import subprocess_env


def run_until(args: list[str], marker: str, signum: int, timeout: float = 900
              ) -> tuple[int, str, float]:
    """Starts ``args``, sends ``signum`` once stderr shows ``marker``; (status, stderr, s to exit)."""
    process = subprocess.Popen(args, cwd=REPO, env=dict(subprocess_env(), PYTHONPATH=REPO),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, sent, deadline = [], None, time.monotonic() + timeout
    try:
        for line in process.stdout:
            lines.append(line)
            if sent is None and marker in line:
                process.send_signal(signum)
                sent = time.monotonic()
            assert time.monotonic() < deadline, "".join(lines)[-3000:]
        status = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert sent is not None, "".join(lines)[-3000:]
    return status, "".join(lines), time.monotonic() - sent


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_the_printed_command_resumes(tmp_path):
    records = make_tiny_dataset(str(tmp_path / "data"))
    workdir = tmp_path / "workdir"
    command = [sys.executable, "-m", "sln_jax.main", "--config", TINY_CONFIG,
               f"--workdir={workdir}", f"--config.data.dir={records}", "--mode=train",
               "--config.train.num_steps=1000", "--config.checkpoint.every_steps=1000"]
    status, output, seconds = run_until(command, "step 1 done", signal.SIGTERM)
    assert status == 143, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert seconds < 60, f"{seconds:.0f} s from SIGTERM to exit"
    # No start-up noise that reads like a failure (TensorFlow's notices).
    assert "oneDNN" not in output and "absl::InitializeLog" not in output, output[:3000]
    first = checkpoints.load_checkpoint(str(workdir))["step"]
    assert 1 <= first < 1000
    assert f"after step {first}" in output
    resume = [line for line in output.splitlines() if line.startswith("resume with: ")]
    assert len(resume) == 1, output[-3000:]
    words = shlex.split(resume[0].removeprefix("resume with: "))
    assert words[:3] == ["python", "-m", "sln_jax.main"]
    # The printed command continues from the checkpoint; Ctrl-C (SIGINT) stops it the same way.
    status, output, _ = run_until([sys.executable] + words[1:], f"step {first + 1} done",
                                  signal.SIGINT)
    assert f"Resumed from step {first}" in output
    assert status == 130, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert checkpoints.load_checkpoint(str(workdir))["step"] > first
