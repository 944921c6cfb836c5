"""lfm-jax: Local Flow Matching and Flow Map Matching in JAX."""

__version__ = "0.1.0"
