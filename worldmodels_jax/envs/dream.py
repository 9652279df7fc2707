"""The dream: a gymnax Environment whose dynamics are a trained M sampled at temperature τ.

Observation: [z_t, h_t, c_t] (M's latent and memory; no c for the transformer M), which is exactly what a world-model agent
composes from real frames, so a controller trained here runs unchanged in the real env.
Episodes start from stored initial latents of real episodes. done = (M's done logit > 0) (an M
without a done head never ends an episode: the pipeline refuses to train in such a dream);
the reward is +1 per step (or M's reward head); truncation at `max_steps_in_episode`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces

from worldmodels_jax.envs.actions import ActionEncoder
from worldmodels_jax.errors import ConfigError, ShapeError
from worldmodels_jax.models.mdnrnn import mdn_sample_from_uniform, normal_from_uniform


@struct.dataclass
class DreamState(environment.EnvState):
    z: jax.Array
    carry: Any  # M's recurrent state (LSTMCarry or the transformer's KV caches)
    time: int


@struct.dataclass
class DreamParams(environment.EnvParams):
    memory_params: Any = None
    initial_mu: jax.Array = None  # [N, z]: μ of first frames of real episodes
    initial_logvar: jax.Array = None
    temperature: float = 1.0
    max_steps_in_episode: int = 2100


class DreamEnv(environment.Environment[DreamState, DreamParams]):
    """M as an environment. `action_space` is the real env's; actions are encoded for M as in training."""

    def __init__(self, memory, action_space, action_encoder: ActionEncoder, reward: str = "constant"):
        super().__init__()
        if reward not in ("constant", "head"):
            raise ConfigError(f"dream reward must be 'constant' or 'head', got {reward!r}")
        if reward == "head" and not memory.config.reward_head:
            raise ConfigError("dream reward 'head' needs M trained with reward_head=True")
        self.memory = memory
        self._action_space = action_space
        self.action_encoder = action_encoder
        self.reward_kind = reward
        from worldmodels_jax.models.memory import has_cell_state

        self.with_cell_state = has_cell_state(memory)
        self.z_size = memory.config.z_size
        self.obs_shape = (memory.config.z_size + memory.feature_size * (2 if self.with_cell_state else 1),)

    @property
    def default_params(self) -> DreamParams:
        return DreamParams()

    def observation_of_state(self, state: DreamState) -> jax.Array:
        """The observation is a pure function of the state (`rollouts.run_episodes` uses this)."""
        return self._obs(state)

    def _obs(self, state: DreamState) -> jax.Array:
        parts = [state.z, state.carry.h] + ([state.carry.c] if self.with_cell_state else [])
        return jnp.concatenate(parts)

    def _initial_state(self, uniform: jax.Array, params: DreamParams) -> DreamState:
        """A start state from z_size + 1 uniforms (the start index, then ε)."""
        count = params.initial_mu.shape[0]
        index = jnp.minimum((uniform[0] * count).astype(jnp.int32), count - 1)
        z = params.initial_mu[index] + jnp.exp(0.5 * params.initial_logvar[index]) * normal_from_uniform(uniform[1:])
        carry = self.memory.apply({"params": params.memory_params}, method="initial_carry")
        return DreamState(z=z, carry=carry, time=0)

    def _check_params(self, params: DreamParams) -> None:
        if params.memory_params is None or params.initial_mu is None:
            raise ConfigError("DreamParams needs memory_params and initial_mu/initial_logvar from real episodes")

    def reset_env(self, key, params: DreamParams):
        self._check_params(params)
        state = self._initial_state(jax.random.uniform(key, (self.z_size + 1,)), params)
        return self._obs(state), state

    def step(self, key, state: DreamState, action, params: DreamParams | None = None):
        """gymnax's step contract (truncation, auto-reset, final_observation) from one random draw per step.

        The draw holds the sample's uniforms and the reset's; the reset selects on the state and builds the
        observation once. Each threefry call is a loop of its own on the CPU, so this matters in the dream.
        """
        params = self.default_params if params is None else params
        self._check_params(params)
        z = self.z_size
        uniform = jax.random.uniform(key, (3 * z + 1,))
        obs_st, state_st, reward, terminated, info = self._step(uniform[: 2 * z].reshape(2, z), state, action, params)
        truncated = self.is_truncated(state_st, params)
        done = jnp.logical_or(terminated, truncated)
        fresh = self._initial_state(uniform[2 * z:], params)
        new_state = jax.tree.map(lambda new, old: jnp.where(done, new, old), fresh, state_st)
        info = {**info, "terminated": terminated, "truncated": truncated, "final_observation": obs_st}
        return self._obs(new_state), new_state, reward, terminated, truncated, info

    def step_without_reset(self, key, state: DreamState, action, params: DreamParams):
        """`step` without its auto-reset, from the same draw: (obs, state, reward, terminated, truncated)."""
        self._check_params(params)
        z = self.z_size
        uniform = jax.random.uniform(key, (3 * z + 1,))
        obs, new_state, reward, terminated, _ = self._step(uniform[: 2 * z].reshape(2, z), state, action, params)
        return obs, new_state, reward, terminated, self.is_truncated(new_state, params)

    def step_env(self, key, state: DreamState, action, params: DreamParams):
        return self._step(jax.random.uniform(key, (2, self.z_size)), state, action, params)

    def _step(self, uniform, state: DreamState, action, params: DreamParams):
        encoded = self.action_encoder(jnp.asarray(action))
        if encoded.shape != (self.memory.config.action_size,):
            raise ShapeError(f"dream action encodes to {encoded.shape}, M expects ({self.memory.config.action_size},)")
        carry, output, _ = self.memory.apply(
            {"params": params.memory_params}, state.carry, state.z, encoded,
            jnp.asarray(state.time == 0), method="step",
        )
        z = mdn_sample_from_uniform(uniform, output, params.temperature)
        terminated = output.done_logit > 0
        reward = output.reward if self.reward_kind == "head" else jnp.float32(1.0)
        new_state = DreamState(z=z, carry=carry, time=state.time + 1)
        return self._obs(new_state), new_state, jnp.asarray(reward, jnp.float32), terminated, {}

    def is_terminated(self, state, params):
        return jnp.array(False)

    @property
    def name(self) -> str:
        return "Dream"

    @property
    def num_actions(self) -> int:
        return getattr(self._action_space, "n", 0)

    def action_space(self, params=None):
        return self._action_space

    def observation_space(self, params):
        return spaces.Box(-jnp.inf, jnp.inf, self.obs_shape, jnp.float32)
