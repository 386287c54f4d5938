"""sln-jax: the Semantics Layering Network for amodal instance segmentation, in JAX/Flax."""

import os as _os
import sys as _sys

# The default partitionable threefry PRNG makes XLA:CPU compile every random op (parameter
# init, the samplers inside the train step) about 3x slower on this project's CPU machines;
# the classic threefry gives the same quality of randomness and compiles quickly.
# The NumPy-only modules (layering, semdist: used by the data conversion workers) must not
# pay for importing JAX, so the flag goes through JAX's environment variable unless JAX is
# already loaded.
if "jax" in _sys.modules:
    _sys.modules["jax"].config.update("jax_threefry_partitionable", False)
else:
    _os.environ["JAX_THREEFRY_PARTITIONABLE"] = "false"
