"""XLA settings of the test session, shared by the in-process tests and their subprocesses."""

from __future__ import annotations

import os

from sln_jax import runtime

# At test sizes XLA:CPU's backend optimizations cost more compile time than they save in
# run time (measured: main end-to-end 73 -> 51 s, two-image overfit 66 -> 54 s), and so do
# its fusion emitters: with the classic emitters (--xla_cpu_use_fusion_emitters=false) the
# tiny config's train step compiles in ~7 s instead of ~17 s and runs ~1.5x slower, which at
# test sizes costs far less (with the CLIs' flags below, the whole suite's CPU time went from
# 18 min 35 s to 14 min 04 s). Tests check behaviour, not speed; benchmarks and the main job
# keep the default.
# The command-line tools' own flags (runtime.CPU_XLA_FLAGS, which they add to XLA_FLAGS
# unless set) are set here too, so the tests and the CLIs they start run with the same
# XLA_FLAGS: those are part of the compilation cache's key, and a program that both compile
# (the tiny config's init and eval step, infer's forward pass) is then compiled once.
TEST_XLA_FLAGS = runtime.xla_flags_with(
    "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false",
    runtime.CPU_XLA_FLAGS)


def subprocess_env(device_count: int | None = None) -> dict[str, str]:
    """os.environ for a JAX subprocess on CPU: the test XLA flags, optionally forcing
    ``device_count`` host devices (and never inheriting another forced count)."""
    flags = TEST_XLA_FLAGS
    if device_count is not None:
        flags += f" --xla_force_host_platform_device_count={device_count}"
    return dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
