"""worldmodels_jax: World Models, Q-learning and attention as pure, compiled JAX functions."""

from worldmodels_jax import envs as _envs  # noqa: F401  (registers our gymnax environments)

__version__ = "0.1.0"
