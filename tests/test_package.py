"""Package-level behaviour: the PRNG flag, and conversion workers that stay light."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "JAX_THREEFRY_PARTITIONABLE"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_importing_the_package_leaves_the_prng_setting_alone():
    default = _run("import jax; print(jax.config.jax_threefry_partitionable)")
    code = ("import jax, sln_jax, sln_jax.train, sln_jax.infer, sln_jax.main; "
            "print(jax.config.jax_threefry_partitionable)")
    assert _run(code) == default
    assert _run("import jax; from sln_jax import train_state; "
                "train_state.use_classic_prng(); "
                "print(jax.config.jax_threefry_partitionable)") == "False"


def test_entry_points_select_the_classic_prng():
    for path in ("sln_jax/main.py", "sln_jax/demo.py", "sln_jax/infer.py"):
        with open(os.path.join(ROOT, path)) as f:
            assert "train_state.use_classic_prng()" in f.read(), path


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
