"""Pieces shared by the learners: env checks, schedules, epsilon-greedy, greedy evaluation episodes."""

from __future__ import annotations

from typing import Callable

import gymnax
import jax
import jax.numpy as jnp
from gymnax.environments import spaces

from worldmodels_jax.errors import ConfigError, EnvError


def make_discrete_env(env_id: str, env_kwargs: dict | None = None, need_discrete_obs: bool = False):
    """`gymnax.make` plus clear errors for what our learners cannot use."""
    try:
        env, params = gymnax.make(env_id, **(env_kwargs or {}))
    except ValueError as err:
        raise EnvError(f"unknown environment {env_id!r}: {err}") from err
    except TypeError as err:
        raise EnvError(f"{env_id!r} does not accept the keyword arguments {env_kwargs}: {err}") from err
    action_space = env.action_space(params)
    if not isinstance(action_space, spaces.Discrete):
        raise EnvError(
            f"{env_id!r} has a {type(action_space).__name__} action space; value-based learners and this "
            "REINFORCE need a Discrete one (try CartPole-v1, Acrobot-v1, MountainCar-v0, *-MinAtar)."
        )
    if need_discrete_obs and not isinstance(env.observation_space(params), spaces.Discrete):
        raise EnvError(
            f"{env_id!r} has a {type(env.observation_space(params)).__name__} observation space; tabular "
            "methods need a Discrete one (e.g. FrozenLake-misc)."
        )
    return env, params


def frozen_lake_kwargs(env_id: str, map_name: str, is_slippery: bool) -> dict:
    """`gymnax.make` keyword arguments: FrozenLake's map and slipperiness, nothing for other envs."""
    if env_id != "FrozenLake-misc":
        return {}
    if map_name not in ("4x4", "8x8"):
        raise ConfigError(f"map_name must be '4x4' or '8x8', got {map_name!r}")
    return {"map_name": map_name, "is_slippery": is_slippery}


def linear_schedule(start: float, end: float, steps: int) -> Callable[[jax.Array], jax.Array]:
    """start -> end linearly over `steps`, then constant."""
    if steps < 0:
        raise ConfigError(f"a schedule length must be >= 0, got {steps}")

    def schedule(t):
        frac = jnp.clip(t / max(steps, 1), 0.0, 1.0)
        return start + frac * (end - start)

    return schedule


def exponential_schedule(start: float, end: float, steps: int) -> Callable[[jax.Array], jax.Array]:
    """start * (end / start)^(t / steps): geometric decay from start to end over `steps`, then constant."""
    if start <= 0 or end <= 0:
        raise ConfigError(f"exponential decay needs positive start and end, got {start}, {end}")

    def schedule(t):
        frac = jnp.clip(t / max(steps, 1), 0.0, 1.0)
        return start * (end / start) ** frac

    return schedule


def make_schedule(kind: str, start: float, end: float, steps: int):
    if kind == "linear":
        return linear_schedule(start, end, steps)
    if kind == "exponential":
        return exponential_schedule(start, end, steps)
    if kind == "constant":
        return lambda t: jnp.asarray(start, jnp.float32)
    raise ConfigError(f"schedule must be 'constant', 'linear' or 'exponential', got {kind!r}")


def epsilon_greedy(key: jax.Array, q: jax.Array, epsilon: jax.Array) -> jax.Array:
    """For one state's q (A,): a uniform action with probability epsilon, else argmax q."""
    key_explore, key_action = jax.random.split(key)
    random_action = jax.random.randint(key_action, (), 0, q.shape[-1])
    explore = jax.random.uniform(key_explore) < epsilon
    return jnp.where(explore, random_action, jnp.argmax(q)).astype(jnp.int32)


def evaluate_episodes(
    env, params, act: Callable[[jax.Array, jax.Array], jax.Array], key: jax.Array, num_episodes: int
) -> jax.Array:
    """Returns (num_episodes,) undiscounted returns of one episode in each of `num_episodes` envs.

    `act(key, obs) -> action` for one observation (vmapped here). Episodes run to termination or the
    env's time limit; the loop is a `while_loop` that stops as soon as every episode has ended, and
    rewards after an episode's end are masked out.
    """
    horizon = int(params.max_steps_in_episode)
    key_reset, key_loop = jax.random.split(key)
    obs, state = jax.vmap(env.reset, (0, None))(jax.random.split(key_reset, num_episodes), params)
    step_env = jax.vmap(env.step, (0, 0, 0, None))

    def cond(carry):
        *_, alive, t, _ = carry
        return jnp.logical_and(t < horizon, jnp.any(alive > 0))

    def body(carry):
        obs, state, ret, alive, t, key = carry
        key, key_act, key_env = jax.random.split(key, 3)
        action = jax.vmap(act)(jax.random.split(key_act, num_episodes), obs)
        obs, state, reward, terminated, truncated, _ = step_env(
            jax.random.split(key_env, num_episodes), state, action, params
        )
        ret = ret + alive * reward
        alive = alive * (1.0 - jnp.logical_or(terminated, truncated).astype(jnp.float32))
        return obs, state, ret, alive, t + 1, key

    zeros = jnp.zeros(num_episodes, jnp.float32)
    init = (obs, state, zeros, zeros + 1.0, jnp.int32(0), key_loop)
    _, _, ret, _, _, _ = jax.lax.while_loop(cond, body, init)
    return ret
