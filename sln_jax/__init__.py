"""sln-jax: the Semantics Layering Network for amodal instance segmentation, in JAX/Flax.

Importing the package changes nothing global: the entry points (``sln_jax.main``,
``sln_jax.demo``, ``sln_jax.infer``) choose JAX's PRNG implementation
(``sln_jax.train_state.use_classic_prng``) when they start.
"""
