"""Package-level behaviour: the PRNG flag, and conversion workers that stay light."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "JAX_THREEFRY_PARTITIONABLE"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_threefry_flag_set_whether_or_not_jax_was_imported_first():
    assert _run("import sln_jax, jax; print(jax.config.jax_threefry_partitionable)") == "False"
    assert _run("import jax, sln_jax; print(jax.config.jax_threefry_partitionable)") == "False"


def test_conversion_imports_neither_jax_nor_tensorflow():
    # Each conversion worker process would pay seconds of CPU for them.
    out = _run("import sys, data_prep.convert, data_prep.kins, data_prep.synthetic; "
               "print(sorted(m for m in ('jax', 'tensorflow', 'flax') if m in sys.modules))")
    assert out == "[]"


def test_main_job_module_is_light_to_import():
    # Spawned data workers import the main module (sln_jax.demo) again.
    out = _run("import sys, sln_jax.demo; "
               "print(sorted(m for m in ('jax', 'tensorflow', 'flax') if m in sys.modules))")
    assert out == "[]"
