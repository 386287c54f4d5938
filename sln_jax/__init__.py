"""sln-jax: the Semantics Layering Network for amodal instance segmentation, in JAX/Flax."""

import jax as _jax

# The default partitionable threefry PRNG makes XLA:CPU compile every random op (parameter
# init, the samplers inside the train step) about 3x slower on this project's CPU machines;
# the classic threefry gives the same quality of randomness and compiles quickly.
_jax.config.update("jax_threefry_partitionable", False)
