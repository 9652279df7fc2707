"""gymnax's `step` contract with a pluggable auto-reset, for envs whose default reset would waste work."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def step_with_reset(env, key: jax.Array, state, action, params, reset: Callable):
    """`env.step_env`, truncation and auto-reset, returning gymnax's six values.

    `reset(done, key, obs_stepped, state_stepped, params) -> (obs, state)` replaces gymnax's "reset every env
    and select" (which draws a reset frame for every env, done or not).
    """
    if params is None:
        params = env.default_params
    key_step, key_reset = jax.random.split(key)
    obs_st, state_st, reward, terminated, info = env.step_env(key_step, state, action, params)
    truncated = env.is_truncated(state_st, params)
    done = jnp.logical_or(terminated, truncated)
    obs, state = reset(done, key_reset, obs_st, state_st, params)
    info = {**info, "terminated": terminated, "truncated": truncated, "final_observation": obs_st}
    return obs, state, reward, terminated, truncated, info


def step_without_reset(env, key: jax.Array, state, action, params):
    """gymnax's step with no auto-reset: (obs, state, reward, terminated, truncated).

    For loops that stop counting an episode at its end (a fitness is the return of each rollout's first
    episode): the reset gymnax computes at every step would only be masked out. The key is split as
    `env.step` splits it, so the steps taken are the same. An env may provide its own
    `step_without_reset` (the dream draws its randomness as its `step` does, in one call). Envs without
    `step_env` fall back to `env.step`. The methods are looked up on the class: gymnax's wrappers forward
    unknown attributes to the env they wrap, whose `step_env` would skip the wrapper (and expect its state).
    """
    if getattr(type(env), "step_without_reset", None) is not None:
        return env.step_without_reset(key, state, action, params)
    if getattr(type(env), "step_env", None) is None:
        obs, state, reward, terminated, truncated, _ = env.step(key, state, action, params)
        return obs, state, reward, terminated, truncated
    key_step, _ = jax.random.split(key)
    obs, state, reward, terminated, _ = env.step_env(key_step, state, action, params)
    return obs, state, reward, terminated, env.is_truncated(state, params)
