"""XLA settings of the test session, shared by the in-process tests and their subprocesses."""

from __future__ import annotations

import os

# At test sizes XLA:CPU's backend optimizations cost more compile time than they save in
# run time (measured: main end-to-end 73 -> 51 s, two-image overfit 66 -> 54 s). Tests check
# behaviour, not speed; benchmarks and the main job keep the default.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def subprocess_env(device_count: int | None = None) -> dict[str, str]:
    """os.environ for a JAX subprocess on CPU: the test XLA flags, optionally forcing
    ``device_count`` host devices (and never inheriting another forced count)."""
    flags = TEST_XLA_FLAGS
    if device_count is not None:
        flags += f" --xla_force_host_platform_device_count={device_count}"
    return dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
