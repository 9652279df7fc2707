"""TD targets and errors for ONE transition (rlax style); batch them with `jax.vmap`.

Naming: `_tm1` is the step the update is about (s_{t-1}, a_{t-1}), `_t` the step after it.
`discount_t` is gamma * (1 - terminated_t): only true termination zeroes the continuation. A transition
cut by a time limit (truncated, not terminated) keeps discount_t = gamma and bootstraps from the real
next observation, gymnax's `info["final_observation"]`, never from the auto-reset one.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def bootstrap_discount(gamma: float, terminated_t: jax.Array) -> jax.Array:
    """gamma * (1 - terminated): truncation does not enter (it is not a property of the MDP)."""
    return gamma * (1.0 - terminated_t.astype(jnp.float32))


def bootstrap_observation(obs_t: jax.Array, info_t: dict) -> jax.Array:
    """The observation to bootstrap from: the one before gymnax's auto-reset.

    gymnax returns the reset observation as `obs` when an episode ends; the observation the agent
    actually reached is `info["final_observation"]` (equal to `obs` when the episode goes on).
    """
    del obs_t
    return info_t["final_observation"]


def q_learning(
    q_tm1: jax.Array, a_tm1: jax.Array, r_t: jax.Array, discount_t: jax.Array, q_t: jax.Array
) -> jax.Array:
    """TD error r_t + discount_t max_a q_t[a] - q_tm1[a_tm1] (target held constant)."""
    chex.assert_rank([q_tm1, a_tm1, r_t, discount_t, q_t], [1, 0, 0, 0, 1])
    target = jax.lax.stop_gradient(r_t + discount_t * jnp.max(q_t))
    return target - q_tm1[a_tm1]


def sarsa(
    q_tm1: jax.Array,
    a_tm1: jax.Array,
    r_t: jax.Array,
    discount_t: jax.Array,
    q_t: jax.Array,
    a_t: jax.Array,
) -> jax.Array:
    """TD error r_t + discount_t q_t[a_t] - q_tm1[a_tm1], with a_t the action the policy takes next."""
    chex.assert_rank([q_tm1, a_tm1, r_t, discount_t, q_t, a_t], [1, 0, 0, 0, 1, 0])
    target = jax.lax.stop_gradient(r_t + discount_t * q_t[a_t])
    return target - q_tm1[a_tm1]


def double_q_learning(
    q_tm1: jax.Array,
    a_tm1: jax.Array,
    r_t: jax.Array,
    discount_t: jax.Array,
    q_t_value: jax.Array,
    q_t_selector: jax.Array,
) -> jax.Array:
    """Double DQN TD error: the online net selects argmax_a q_t_selector, the target net values it."""
    chex.assert_rank([q_tm1, a_tm1, r_t, discount_t, q_t_value, q_t_selector], [1, 0, 0, 0, 1, 1])
    best = jnp.argmax(q_t_selector)
    target = jax.lax.stop_gradient(r_t + discount_t * q_t_value[best])
    return target - q_tm1[a_tm1]


def huber(x: jax.Array, delta: float = 1.0) -> jax.Array:
    """0.5 x^2 for |x| <= delta, delta (|x| - delta / 2) beyond (the DQN loss on the TD error)."""
    abs_x = jnp.abs(x)
    quadratic = jnp.minimum(abs_x, delta)
    return 0.5 * quadratic**2 + delta * (abs_x - quadratic)
