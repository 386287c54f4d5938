"""sln_jax.runtime: the CPU XLA flags the command-line tools set before JAX starts."""

import os
import subprocess
import sys

import pytest

from sln_jax import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAG = "--xla_cpu_experimental_ynn_fusion_type="


def test_flags_are_appended_once_and_the_users_value_wins():
    assert runtime.xla_flags_with("", {"a_flag": ""}) == "--a_flag="
    assert runtime.xla_flags_with("--x=1", {"a_flag": "v"}) == "--x=1 --a_flag=v"
    assert runtime.xla_flags_with("--a_flag=mine --x=1", {"a_flag": "v"}) == "--a_flag=mine --x=1"
    assert runtime.xla_flags_with("-a_flag", {"a_flag": "v"}) == "-a_flag"


def _python(code: str, xla_flags: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env=dict(env, JAX_PLATFORMS="cpu"), timeout=300)


CONV_GRAD = """
import os, numpy as np
from sln_jax import runtime
runtime.configure_cpu()
import jax, jax.numpy as jnp
x = jax.random.normal(jax.random.key(0), (4, 8, 8, 16))
w = jax.random.normal(jax.random.key(1), (1, 1, 16, 32))
f = lambda w: jnp.sum(jax.lax.conv_general_dilated(x, w, (1, 1), 'VALID',
    dimension_numbers=('NHWC', 'HWIO', 'NHWC')) ** 2)
print(os.environ['XLA_FLAGS'])
print(repr(np.asarray(jax.jit(jax.grad(f))(w)).ravel()[:8].tolist()))
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    os.environ['XLA_FLAGS'] = ''
    runtime.configure_cpu()
print(len(caught), os.environ['XLA_FLAGS'] == '')
"""


def test_configure_cpu_sets_the_flag_before_the_backend_and_keeps_numerics():
    """In a fresh process the flag lands in XLA_FLAGS (XLA accepts it: an unknown flag aborts),
    the conv gradient equals the one computed with the fusions explicitly on, and a call
    after the backend started warns and changes nothing."""
    off = _python(CONV_GRAD, None)
    assert off.returncode == 0, off.stderr[-2000:]
    flags, grads_off, warned = off.stdout.strip().splitlines()
    assert FLAG in flags.split()
    assert warned == "1 True"
    on = _python(CONV_GRAD, "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce")
    assert on.returncode == 0, on.stderr[-2000:]
    lines = on.stdout.strip().splitlines()
    assert "ynn_fusion_type=dot,eltwise,reduce" in lines[0] and FLAG not in lines[0].split()
    assert eval(lines[1]) == pytest.approx(eval(grads_off), rel=1e-5)


@pytest.mark.parametrize("module", ["sln_jax.main", "sln_jax.demo", "sln_jax.infer"])
def test_every_cli_configures_the_cpu_first(module):
    """Each CLI's ``main`` calls ``runtime.configure_cpu`` before anything else (each module
    defines its absl flags at import, so each runs in its own process)."""
    code = (f"import importlib, sys\nfrom sln_jax import runtime\n"
            f"def called():\n    print('configured'); sys.exit(3)\n"
            f"runtime.configure_cpu = called\n"
            f"importlib.import_module('{module}').main(['prog'])\n")
    result = _python(code, None)
    assert (result.returncode, result.stdout.strip()) == (3, "configured"), result.stderr[-2000:]


def test_tensorflow_imports_without_its_start_up_notices():
    code = ("import os, sys\nfrom sln_jax import runtime\n"
            "tf = runtime.import_tensorflow()\n"
            "os.write(2, b'kept\\n')\nprint(tf.constant(2).numpy() + 1)\n")
    result = _python(code, None)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "3"
    for notice in runtime.TENSORFLOW_NOTICES:
        assert notice not in result.stderr, result.stderr
    assert "kept" in result.stderr


def test_jax_backends_it_cannot_start_are_not_logged():
    code = ("from absl import logging\nlogging.set_verbosity(logging.INFO)\n"
            "logging.use_absl_handler()\nfrom sln_jax import runtime\n"
            "runtime.quiet_jax_logs()\nimport jax\nprint(jax.devices()[0].platform)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Unable to initialize backend" not in result.stderr, result.stderr


def test_main_imports_tensorflow_only_when_run():
    # sln_jax.main must not import TensorFlow before runtime.import_tensorflow hides its notices.
    result = _python("import sys, sln_jax.main; print('tensorflow' in sys.modules)", None)
    assert result.stdout.strip() == "False", result.stderr[-2000:]


def test_train_imports_tensorflow_only_when_it_writes_summaries():
    # The train / eval steps must not pay TensorFlow's import (~5 s, ~570 MB): flax's
    # TensorBoard writer is imported by MetricWriter, not by the module.
    result = _python("import sys, sln_jax.train; print('tensorflow' in sys.modules)", None)
    assert result.stdout.strip() == "False", result.stderr[-2000:]


RELEASE = """
import sys, numpy as np
from sln_jax import runtime
def rss_mb():
    return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20
base = rss_mb()
# Holes between live blocks: glibc's free() trims only the heap's top, so they stay resident
# (as the compiler's freed heap does) until malloc_trim.
chunks, pins = [], []
for _ in range(4000):
    chunks.append(np.ones(60_000 // 8))
    pins.append(np.ones(100))
del chunks
before = rss_mb() - base
released = runtime.release_host_memory()
print(before, rss_mb() - base, released)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim")
def test_release_host_memory_returns_freed_heap_holes_to_the_os():
    result = _python(RELEASE, None)
    assert result.returncode == 0, result.stderr[-2000:]
    before, after, released = result.stdout.split()
    assert released == "True"
    assert float(before) > 150  # ~230 MB of freed 60 KB blocks still resident
    assert float(after) < 0.3 * float(before)
