"""Process-level XLA settings that the command-line tools apply before JAX starts its backend.

``configure_cpu()`` turns XLA:CPU's experimental YNNPACK fusions off
(``--xla_cpu_experimental_ynn_fusion_type=``, an empty fusion-type list). Measured on the 2-core
CPU with jax 0.10.2 (``benchmarks/bench_vs_torchvision.py``, README "Speed"): with the
fusions on, the weight gradient of a 1x1 convolution runs at ~8 GFLOP/s against ~130 GFLOP/s
for forward convolutions, and the ResNet-50-FPN SLN train step is 2.3x slower at 256 px
(inference 1.8x); losses agree to float reordering. The flag is a debug option every XLA
backend parses and only XLA:CPU reads, so it is harmless on GPU and TPU.

Nothing happens on import (importing ``sln_jax`` must not change the importer's JAX): the
CLIs call ``configure_cpu()`` first thing in ``main``. A flag the user already put in
``XLA_FLAGS`` wins, so ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=...`` restores any
setting.
"""

from __future__ import annotations

import os
import sys
import warnings

__all__ = ["CPU_XLA_FLAGS", "TENSORFLOW_NOTICES", "configure_cpu", "import_tensorflow",
           "quiet_jax_logs", "release_host_memory", "xla_flags_with"]

# Lines TensorFlow's C++ start-up writes to stderr that report no problem: the oneDNN notice,
# the CPU-feature notice (and its second line) and absl's pre-initialization banner. TF >= 2.16
# writes them whatever TF_CPP_MIN_LOG_LEVEL says.
TENSORFLOW_NOTICES = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions:",
)

# name -> value; each is added to XLA_FLAGS unless XLA_FLAGS already names it.
CPU_XLA_FLAGS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def xla_flags_with(flags: str, extra: dict[str, str]) -> str:
    """``flags`` (an XLA_FLAGS string) with ``--name=value`` appended for each name of
    ``extra`` that ``flags`` does not already set."""
    present = {part.lstrip("-").split("=", 1)[0] for part in flags.split()}
    added = [f"--{name}={value}" for name, value in extra.items() if name not in present]
    return " ".join([flags.strip()] + added).strip()


def configure_cpu() -> str:
    """Adds ``CPU_XLA_FLAGS`` to ``os.environ['XLA_FLAGS']``; returns the new value.

    Must run before JAX initializes a backend (the first computation or device query);
    later calls warn and change nothing, since XLA reads the flags once per process.
    """
    new = xla_flags_with(os.environ.get("XLA_FLAGS", ""), CPU_XLA_FLAGS)
    if new == os.environ.get("XLA_FLAGS", ""):
        return new
    bridge = sys.modules.get("jax._src.xla_bridge")
    if bridge is not None and bridge.backends_are_initialized():
        warnings.warn("sln_jax.runtime.configure_cpu: JAX's backend is already initialized; "
                      "the CPU XLA flags take effect only in a new process", stacklevel=2)
        return os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = new
    return new


def import_tensorflow():
    """``import tensorflow`` without its start-up notices (``TENSORFLOW_NOTICES``).

    For the command-line tools, called before anything imports TensorFlow: stderr (the file
    descriptor, since the notices come from C++) goes to a temporary file during the import;
    every other line written meanwhile is copied back to stderr. Also sets
    ``TF_CPP_MIN_LOG_LEVEL=1`` (TensorFlow's later INFO lines) unless the user set it.
    Returns the ``tensorflow`` module.
    """
    import tempfile

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            kept = [line for line in lines
                    if not any(notice in line for notice in TENSORFLOW_NOTICES)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
    return tensorflow


def quiet_jax_logs() -> None:
    """Hides JAX's INFO lines on backends it could not start (``Unable to initialize backend
    'tpu': ... libtpu.so``), which a CLI logging at INFO would otherwise print on every run;
    JAX's warnings stay."""
    import logging

    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)


def release_host_memory() -> bool:
    """Returns the C heap's free pages to the OS (glibc ``malloc_trim(0)``); False elsewhere.

    XLA's compiler (LLVM) and parameter initialisation leave ~1 GB of freed but still mapped
    heap behind them: the paper-config step at 256 px measured 2762 MB of resident memory after
    compiling and 1789 MB after this call (``benchmarks/bench_vs_torchvision.py``), and the
    step's temporaries (~1.2 GB) then come on top of the smaller figure, so the process's peak
    falls by as much. The training loop calls it once after the first (compiling) step. Live
    buffers are untouched; costs a few milliseconds.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        trim = libc.malloc_trim if libc is not None else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to release
        return False
    if trim is None:
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True
