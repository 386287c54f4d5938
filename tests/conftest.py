import atexit
import os
import shutil
import sys
import tempfile

# Tests import the helpers beside them (scene_strategies) and the package from the repo root.
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

# Several tests compile the same tiny-config programs, some in subprocesses (main, infer,
# distributed): a compilation cache shared by the session's processes compiles each once
# (measured: the main end-to-end test 98 s -> 47 s). Fresh per session, so nothing stale is
# ever reused; set here, before anything imports JAX, so that subprocesses inherit it.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="sln-jax-test-xla-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")

# The entry points select the classic threefry PRNG (sln_jax.train_state.use_classic_prng);
# tests that call the library directly, and their subprocesses, get it the same way.
os.environ.setdefault("JAX_THREEFRY_PARTITIONABLE", "false")

from xla_env import TEST_XLA_FLAGS  # noqa: E402

if TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny config trained 2 steps and evaluated by ``python -m sln_jax.main``, once per
    session (``tiny_dataset.train_tiny_run``). test_main checks every output of the run; the
    tests that need a trained workdir read it. Nobody writes to it: a test that runs more
    modes on it works on a copy."""
    from tiny_dataset import train_tiny_run

    run = train_tiny_run(tmp_path_factory.mktemp("tiny_run"))
    assert run.result.returncode == 0, run.result.stderr[-3000:]
    return run
