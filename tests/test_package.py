"""Package-level behaviour: the PRNG flag, and conversion workers that stay light."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _start(code: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "JAX_THREEFRY_PARTITIONABLE"}
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _output(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return out.strip()


def _run(code: str) -> str:
    return _output(_start(code))


def test_importing_the_package_leaves_the_prng_setting_alone():
    # Three fresh interpreters, started side by side.
    default, imported, classic = (_start(code) for code in (
        "import jax; print(jax.config.jax_threefry_partitionable)",
        "import jax, sln_jax, sln_jax.train, sln_jax.infer, sln_jax.main; "
        "print(jax.config.jax_threefry_partitionable)",
        "import jax; from sln_jax import train_state; train_state.use_classic_prng(); "
        "print(jax.config.jax_threefry_partitionable)"))
    default = _output(default)
    assert _output(imported) == default
    assert _output(classic) == "False"


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
