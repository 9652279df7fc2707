"""Tabular Q-learning (off-policy) and SARSA (on-policy) with epsilon-greedy exploration.

`make_train(config)` builds the env and schedules once and returns `train(key)`, a pure function whose
whole run is a `lax.scan` over evaluation periods of a `lax.scan` over steps of `num_envs` parallel
envs; `jax.jit(jax.vmap(train))(keys)` trains many seeds at once.

Each step updates Q[s, a] += lr * td for every env's transition (simultaneous updates to the same cell
add up). The bootstrap follows the shared rule in `targets`: discount gamma * (1 - terminated), from
`info["final_observation"]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp

from worldmodels_jax.errors import ConfigError, check
from worldmodels_jax.rl import targets
from worldmodels_jax.rl.common import (
    epsilon_greedy,
    evaluate_episodes,
    frozen_lake_kwargs,
    make_discrete_env,
    make_schedule,
)


@dataclass(frozen=True)
class TabularConfig:
    """Tabular Q-learning / SARSA on a gymnax env with a Discrete observation space."""

    algorithm: Literal["q-learning", "sarsa"] = "q-learning"
    """Off-policy Q-learning or on-policy SARSA."""
    env_id: str = "FrozenLake-misc"
    """gymnax environment id; its observation space must be Discrete."""
    map_name: str = "4x4"
    """FrozenLake map: 4x4 or 8x8 (ignored by other envs)."""
    is_slippery: bool = True
    """FrozenLake: moves go sideways with probability 2/3 (ignored by other envs)."""
    num_envs: int = 8
    """Parallel environments stepped together; each contributes one update per step."""
    total_steps: int = 200_000
    """Environment steps per seed, summed over the parallel envs."""
    gamma: float = 0.99
    """Discount factor."""
    lr_start: float = 0.1
    """Initial learning rate."""
    lr_end: float = 0.01
    """Final learning rate."""
    lr_schedule: Literal["constant", "linear", "exponential"] = "linear"
    """How the learning rate goes from lr_start to lr_end over lr_decay_fraction of the run."""
    lr_decay_fraction: float = 1.0
    """Fraction of the run over which the learning rate decays."""
    eps_start: float = 1.0
    """Initial exploration rate."""
    eps_end: float = 0.05
    """Final exploration rate."""
    eps_schedule: Literal["constant", "linear", "exponential"] = "linear"
    """How epsilon goes from eps_start to eps_end over eps_decay_fraction of the run."""
    eps_decay_fraction: float = 0.5
    """Fraction of the run over which epsilon decays."""
    q_init: float = 0.0
    """Initial value of every Q[s, a] (optimism encourages exploration)."""
    num_evals: int = 20
    """Greedy evaluations along the run (the learning curve's points)."""
    eval_episodes: int = 1000
    """Greedy rollout episodes per evaluation (success rate = mean return on FrozenLake)."""

    def env_kwargs(self) -> dict:
        return frozen_lake_kwargs(self.env_id, self.map_name, self.is_slippery)

    def validate(self) -> None:
        check(self.algorithm in ("q-learning", "sarsa"), ConfigError,
              f"algorithm must be 'q-learning' or 'sarsa', got {self.algorithm!r}")
        check(self.num_envs >= 1, ConfigError, "num_envs must be >= 1")
        check(self.total_steps >= self.num_envs * self.num_evals, ConfigError,
              "total_steps must be >= num_envs * num_evals (at least one step per evaluation period)")
        check(0.0 <= self.gamma <= 1.0, ConfigError, f"gamma must be in [0, 1], got {self.gamma}")
        check(0.0 <= self.eps_end <= 1.0 and 0.0 <= self.eps_start <= 1.0, ConfigError,
              "epsilons must be in [0, 1]")


def make_train(config: TabularConfig):
    """Returns `train(key) -> {"q", "eval_return", "steps"}` for one seed."""
    config.validate()
    env, params = make_discrete_env(config.env_id, config.env_kwargs(), need_discrete_obs=True)
    num_states = env.observation_space(params).n
    num_actions = env.action_space(params).n
    steps_per_eval = config.total_steps // (config.num_envs * config.num_evals)
    num_updates = steps_per_eval * config.num_evals  # vector steps in the whole run
    lr_fn = make_schedule(config.lr_schedule, config.lr_start, config.lr_end,
                          int(config.lr_decay_fraction * num_updates))
    eps_fn = make_schedule(config.eps_schedule, config.eps_start, config.eps_end,
                           int(config.eps_decay_fraction * num_updates))
    is_sarsa = config.algorithm == "sarsa"
    step_env = jax.vmap(env.step, (0, 0, 0, None))
    select = jax.vmap(epsilon_greedy, (0, 0, None))

    def act_batch(key, q_table, obs, epsilon):
        return select(jax.random.split(key, config.num_envs), q_table[obs], epsilon)

    def train(key):
        key_q, key_reset, key_first, key_run = jax.random.split(key, 4)
        del key_q
        q_table = jnp.full((num_states, num_actions), config.q_init, jnp.float32)
        obs, env_state = jax.vmap(env.reset, (0, None))(
            jax.random.split(key_reset, config.num_envs), params
        )
        action = act_batch(key_first, q_table, obs, eps_fn(0))

        def env_step(carry, key_t):
            q_table, obs, env_state, action, t = carry
            key_env, key_boot, key_next = jax.random.split(key_t, 3)
            epsilon, lr = eps_fn(t), lr_fn(t)
            next_obs, env_state, reward, terminated, truncated, info = step_env(
                jax.random.split(key_env, config.num_envs), env_state, action, params
            )
            boot_obs = info["final_observation"]
            discount = targets.bootstrap_discount(config.gamma, terminated)
            if is_sarsa:
                # a_t: the action the policy takes in the reached state (used when the episode goes on).
                boot_action = act_batch(key_boot, q_table, boot_obs, epsilon)
                td = jax.vmap(targets.sarsa)(q_table[obs], action, reward, discount, q_table[boot_obs],
                                             boot_action)
                done = jnp.logical_or(terminated, truncated)
                fresh_action = act_batch(key_next, q_table, next_obs, epsilon)
                next_action = jnp.where(done, fresh_action, boot_action)
            else:
                td = jax.vmap(targets.q_learning)(q_table[obs], action, reward, discount, q_table[boot_obs])
                next_action = act_batch(key_next, q_table, next_obs, epsilon)
            q_table = q_table.at[obs, action].add(lr * td)
            return (q_table, next_obs, env_state, next_action, t + 1), None

        def greedy_act(q_table):
            return lambda key, obs: jnp.argmax(q_table[obs]).astype(jnp.int32)

        def period(carry, key_p):
            key_steps, key_eval = jax.random.split(key_p)
            carry, _ = jax.lax.scan(env_step, carry, jax.random.split(key_steps, steps_per_eval))
            returns = evaluate_episodes(env, params, greedy_act(carry[0]), key_eval, config.eval_episodes)
            return carry, returns.mean()

        carry = (q_table, obs, env_state, action, jnp.int32(0))
        carry, eval_return = jax.lax.scan(period, carry, jax.random.split(key_run, config.num_evals))
        steps = (jnp.arange(1, config.num_evals + 1) * steps_per_eval * config.num_envs)
        return {"q": carry[0], "eval_return": eval_return, "steps": steps}

    return train


PRESETS: dict[str, TabularConfig] = {
    "frozenlake4x4": TabularConfig(),
    "frozenlake4x4-sarsa": TabularConfig(algorithm="sarsa"),
    "frozenlake8x8": TabularConfig(
        map_name="8x8", total_steps=2_000_000, eps_decay_fraction=0.7
    ),
    "tiny": TabularConfig(total_steps=20_000, num_evals=4, eval_episodes=200),
}
