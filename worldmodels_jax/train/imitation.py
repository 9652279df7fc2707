"""Warm-starting C by imitation: fit a controller to a teacher's actions, then let CMA-ES refine it.

At `carracing-cpu-small`'s ES budget (60 generations of 32) the search, not C's inputs, limits the score: a
linear controller on the car's true state reaches the same ~580 as those on z or [z, h] (docs/carracing_studies.md,
"Seed 13, and what limits the controllers"). An ES that starts from a controller already fitted to a good driver spends its budget refining
rather than finding how to drive, and where it starts depends on what its inputs can express.

The recipe, one function each:
1. `collect_demonstrations`: an explorer (the noisy scripted driver) drives; every step records the frame, the
   action taken and the teacher's action for the same state (the scripted driver without noise), so the labels
   also cover the states a noisy driver reaches and the teacher never would (as in DAgger's relabelling).
2. `controller_features`: V encodes the frames and M steps on (z, action taken), exactly as `Agent.act` does in
   a rollout: C's h at step t is M's state after steps 0..t-1, zero at an episode's first step.
3. `fit_controller`: Adam on the mean squared error between C's mapped actions and the teacher's, full batch.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

from worldmodels_jax.errors import ShapeError


@struct.dataclass
class Demonstrations:
    obs: jax.Array  # [N, T, 64, 64, 3] uint8, the frame seen before acting
    action: jax.Array  # [N, T, A] the action taken (the explorer's)
    label: jax.Array  # [N, T, A] the teacher's action for the same state
    first: jax.Array  # [N, T] bool, an episode's first step


def collect_demonstrations(env, env_params, teacher: Callable, explorer: Callable, key: jax.Array, num_envs: int,
                           steps: int) -> Demonstrations:
    """`num_envs` envs, `steps` steps each, auto-resetting. `teacher(state, params) -> action` labels each state;
    `explorer(key, state, params) -> action` drives."""

    def one_env(key):
        key_reset, key_loop = jax.random.split(key)
        obs, state = env.reset(key_reset, env_params)

        def step(carry, key_t):
            obs, state, first = carry
            key_explore, key_step = jax.random.split(key_t)
            label = teacher(state, env_params)
            action = explorer(key_explore, state, env_params)
            next_obs, state, _, terminated, truncated, _ = env.step(key_step, state, action, env_params)
            return (next_obs, state, terminated | truncated), (obs, action, label, first)

        _, (obs, action, label, first) = jax.lax.scan(step, (obs, state, jnp.array(True)),
                                                      jax.random.split(key_loop, steps))
        return Demonstrations(obs=obs, action=action, label=label, first=first)

    return jax.vmap(one_env)(jax.random.split(key, num_envs))


def controller_features(agent, wm_params, demos: Demonstrations):
    """(z [N, T, z], h [N, T, H] or None, c or None): what C reads at each demonstration step in a rollout, before
    standardisation. z is V's mean (C's input when `z_sample` is off; its expectation otherwise)."""
    from worldmodels_jax.pipeline import ENCODE_CHUNK, make_frame_encoder

    num_envs, steps = demos.first.shape
    if demos.obs.shape[:2] != (num_envs, steps):
        raise ShapeError(f"demonstration frames {demos.obs.shape} do not match first {demos.first.shape}")
    frames = demos.obs.reshape((-1, *demos.obs.shape[2:]))
    pad = (-frames.shape[0]) % ENCODE_CHUNK
    frames = jnp.concatenate([frames, jnp.zeros((pad, *frames.shape[1:]), frames.dtype)]) if pad else frames
    mu, _ = make_frame_encoder(agent.vae)(wm_params.vae, frames)
    z = mu[: num_envs * steps].reshape((num_envs, steps, -1))
    if not agent.uses_memory:
        return z, None, None

    def one_env(z_env, action_env, first_env):
        def step(carry, inputs):
            z_t, action_t, first_t = inputs
            carry = agent.reset_carry(carry, first_t)
            read = (carry.h, getattr(carry, "c", None))
            return agent.memory_step(wm_params, carry, z_t, action_t, first_t), read

        _, (h, c) = jax.lax.scan(step, agent.init_carry(wm_params), (z_env, action_env, first_env))
        return h, c

    h, c = jax.vmap(one_env)(z, demos.action, demos.first)
    return z, h, c


def imitation_loss(agent, wm_params, c_params, z, h, c, labels) -> jax.Array:
    """Mean over steps of the squared error between C's actions (through the agent's mapping) and `labels`."""
    actions = agent.mapping(agent.controller_outputs(wm_params, c_params, z, h, c))
    return jnp.mean(jnp.sum(jnp.square(actions - labels), axis=-1))


def fit_controller(agent, wm_params, c_params, z, h, c, labels, steps: int, learning_rate: float):
    """Adam on `imitation_loss`, full batch, from `c_params`: (fitted params, losses [steps])."""
    optimizer = optax.adam(learning_rate)

    def body(carry, _):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(lambda p: imitation_loss(agent, wm_params, p, z, h, c, labels))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    (c_params, _), losses = jax.lax.scan(body, (c_params, optimizer.init(c_params)), None, length=steps)
    return c_params, losses


__all__ = ["Demonstrations", "collect_demonstrations", "controller_features", "imitation_loss",
           "fit_controller"]
