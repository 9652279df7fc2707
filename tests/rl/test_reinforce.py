"""REINFORCE: returns-to-go by hand (termination, truncation bootstrap, masking) and a tiny run that learns."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from worldmodels_jax.errors import ConfigError, EnvError
from worldmodels_jax.rl import reinforce


def test_returns_to_go_terminated_and_masked():
    f = jax.jit(reinforce.returns_to_go, static_argnums=5)
    g = f(jnp.array([1.0, 1.0, 1.0, 7.0]), jnp.array([False, False, True, False]),
          jnp.array([False, False, False, False]), jnp.full(4, 100.0), jnp.array([1.0, 1.0, 1.0, 0.0]), 0.5)
    # After termination nothing leaks back: G2 = 1, G1 = 1 + 0.5, G0 = 1 + 0.5 * 1.5; step 3 is masked.
    np.testing.assert_allclose(g, [1.75, 1.5, 1.0, 0.0])


def test_returns_to_go_truncation_bootstraps_from_value():
    g = reinforce.returns_to_go(jnp.array([1.0, 1.0]), jnp.array([False, False]), jnp.array([False, True]),
                                jnp.array([3.0, 10.0]), jnp.ones(2), 0.5)
    # G1 = 1 + 0.5 * V(final obs) = 6; G0 = 1 + 0.5 * 6 = 4 (V at non-final steps is ignored).
    np.testing.assert_allclose(g, [4.0, 6.0])


def test_returns_to_go_vmapped():
    rewards = jnp.ones((3, 2))
    term = jnp.array([[False, False], [False, True], [True, False]])
    g = jax.vmap(reinforce.returns_to_go, (1, 1, 1, 1, 1, None), 1)(
        rewards, term, jnp.zeros((3, 2), bool), jnp.zeros((3, 2)), jnp.ones((3, 2)), 1.0)
    np.testing.assert_allclose(g, [[3.0, 2.0], [2.0, 1.0], [1.0, 1.0]])


def test_clear_errors():
    with pytest.raises(EnvError, match="action space"):
        reinforce.make_train(reinforce.ReinforceConfig(env_id="MountainCarContinuous-v0"))
    with pytest.raises(ConfigError, match="multiple"):
        reinforce.make_train(reinforce.ReinforceConfig(num_updates=15, num_evals=2))


@pytest.mark.slow
def test_tiny_reinforce_learns_cartpole():
    config = dataclasses.replace(reinforce.PRESETS["tiny"], num_updates=60, num_evals=2, eval_episodes=20)
    out = jax.jit(jax.vmap(reinforce.make_train(config)))(jax.random.split(jax.random.key(0), 2))
    final = np.asarray(out["metrics"]["eval_return"][:, -1])
    assert np.all(final > 150), final
