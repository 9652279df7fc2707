"""Population and batch rollouts with V, M and C in the loop: frame → z → h → action.

An `Agent` is static (models, action mapping, mode); its parameters are pytrees passed in, so a
whole population of controllers is a leading axis that `vmap` maps over. Episodes run in chunks
of steps inside a `lax.while_loop` that exits as soon as every episode in the batch has ended,
so a generation of short, failing episodes costs little.

Given a 1-D `jax.sharding.Mesh`, the batch of episodes is split over its devices (`shard_map`): each device
runs its share with a `while_loop` of its own. The same keys reach the same episodes, so results do not depend
on the device count (up to float rounding). On a CPU host, simulated CPU devices (`JAX_NUM_CPU_DEVICES`) put
every core to work: at the paper's model sizes one device keeps only ~1.2 of 2 cores busy (docs/carracing.md,
"Sharding the controller stage").
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from worldmodels_jax.envs.actions import ActionEncoder
from worldmodels_jax.errors import ConfigError
from worldmodels_jax.models.controller import ActionMapping, Controller
from worldmodels_jax.models.mdnrnn import LSTMCarry
from worldmodels_jax.models.vae import ConvVAE, for_inference, sample_z


@struct.dataclass
class WorldModelParams:
    """The frozen V and M parameters an agent needs (either may be None)."""

    vae: Any = None
    memory: Any = None
    feature_stats: Any = None
    """Optional {"z_mean", "z_std", "h_mean", "h_std"}: C sees standardised z and h (M still sees raw z)."""
    held: Any = None
    """Optional {"z": value, "h": value}, a feature ablation: C sees these values instead of its z or h (before
    any standardisation); M still steps on the real z (`Pipeline.evaluate_controller(mode, hold=...)`)."""


@dataclasses.dataclass(frozen=True)
class Agent:
    """frame → z → (h, c) → action, with M stepped on (z, a) after acting.

    obs_kind 'pixels': observations are frames, encoded by V. obs_kind 'features': observations are
    already [z, h, c] (the dream's observation), and the agent only applies C.
    """

    controller: Controller
    mapping: ActionMapping
    vae: ConvVAE | None = None
    memory: Any = None
    """M's memory module (MDNRNN or TransformerM)."""
    action_encoder: ActionEncoder | None = None
    obs_kind: str = "pixels"
    z_sample: bool = True
    """Sample z = μ + σ·ε from V (as the original did) instead of using μ."""

    def __post_init__(self):
        mode = self.controller.config.mode
        if self.obs_kind not in ("pixels", "features"):
            raise ConfigError(f"obs_kind must be 'pixels' or 'features', got {self.obs_kind!r}")
        if self.obs_kind == "pixels" and self.vae is None:
            raise ConfigError("a pixel agent needs V")
        if self.obs_kind == "pixels" and self.uses_memory and (self.memory is None or self.action_encoder is None):
            raise ConfigError(f"controller mode {mode!r} needs M and an action encoder")

    @property
    def uses_memory(self) -> bool:
        return self.controller.config.mode in ("z_h", "z_c_h")

    @property
    def z_size(self) -> int:
        return self.controller.config.z_size

    @property
    def feature_size(self) -> int:
        return self.controller.config.feature_size

    def init_carry(self, wm_params: WorldModelParams):
        if self.uses_memory and self.obs_kind == "pixels":
            return self.memory.apply({"params": wm_params.memory}, method="initial_carry")
        zeros = jnp.zeros((1,), jnp.float32)
        return LSTMCarry(h=zeros, c=zeros)

    def controller_outputs(self, wm_params: WorldModelParams | None, c_params, z: jax.Array, h: jax.Array | None,
                           c: jax.Array | None = None) -> jax.Array:
        """C's tanh outputs for raw features z (and M's h, c), as `act` computes them: held features replaced
        by their means, then standardised with `wm_params.feature_stats` when present."""
        stats = None if wm_params is None else wm_params.feature_stats
        held = None if wm_params is None else wm_params.held
        if held is not None:
            z = jnp.broadcast_to(held["z"], z.shape) if "z" in held else z
            h = jnp.broadcast_to(held["h"], h.shape) if "h" in held and h is not None else h
        if stats is not None:
            z = (z - stats["z_mean"]) / stats["z_std"]
            h = None if h is None else (h - stats["h_mean"]) / stats["h_std"]
        return self.controller.apply({"params": c_params}, z, h, c)

    def act(self, wm_params: WorldModelParams, c_params, carry: LSTMCarry, obs: jax.Array,
            first: jax.Array, key: jax.Array):
        """One step for one environment: returns (action, next carry)."""

        def controller(z, h, c):
            return self.controller_outputs(wm_params, c_params, z, h, c)

        if self.obs_kind == "features":
            if not self.uses_memory:  # C reads z alone: the observation may be just z
                return self.mapping(controller(obs[..., :self.z_size], None, None)), carry
            z, h, c = jnp.split(obs, [self.z_size, self.z_size + self.feature_size])
            return self.mapping(controller(z, h, c)), carry
        mu, logvar = for_inference(self.vae).apply({"params": wm_params.vae}, obs, method=ConvVAE.encode)
        z = sample_z(key, mu, logvar) if self.z_sample else mu
        if not self.uses_memory:
            return self.mapping(controller(z, None, None)), carry
        carry = self.reset_carry(carry, first)
        action = self.mapping(controller(z, carry.h, getattr(carry, "c", None)))
        return action, self.memory_step(wm_params, carry, z, action, first)

    @staticmethod
    def reset_carry(carry, first: jax.Array):
        """M's carry, zeroed at an episode's first step: what C reads as h (and c) at this step."""
        return jax.tree.map(lambda x: jnp.where(first, jnp.zeros_like(x), x), carry)

    def memory_step(self, wm_params: WorldModelParams, carry, z: jax.Array, action: jax.Array, first: jax.Array):
        """M's next carry after the agent (or whoever drove) took `action` on seeing z."""
        carry, _, _ = self.memory.apply(
            {"params": wm_params.memory}, carry, z, self.action_encoder(action), first, method="step"
        )
        return carry


@struct.dataclass
class EpisodeStats:
    returns: jax.Array  # [B]
    lengths: jax.Array  # [B]
    terminated: jax.Array  # [B] ended by termination (not truncation)


def summarize_returns(returns) -> dict:
    """Host-side mean, std and count of per-episode returns, as plain floats for JSON."""
    returns = np.asarray(returns, np.float64)
    return {"mean": float(returns.mean()), "std": float(returns.std()), "episodes": int(returns.size)}


def run_episodes(env, env_params, agent: Agent, wm_params: WorldModelParams, c_params, keys: jax.Array,
                 max_steps: int, chunk: int = 50, mesh: Mesh | None = None) -> EpisodeStats:
    """Runs one episode per key, with `c_params` batched along axis 0 like `keys` ([B] each).

    Steps run in chunks of `chunk` inside a `while_loop` that stops once every episode has ended
    (or after `max_steps`). Rewards after an episode's end are not counted. With a 1-D `mesh` of more than one
    device, the batch is split over the devices (see the module docstring).
    """
    if mesh is not None and mesh.size > 1:
        return _run_sharded(env, env_params, agent, wm_params, c_params, keys, max_steps, chunk, mesh)
    batch = keys.shape[0]
    reset_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
    run_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(reset_keys, env_params)
    carry = jax.vmap(lambda _: agent.init_carry(wm_params))(jnp.arange(batch))

    # An env whose observation is a pure function of its state (the dream: [z, h, c]) lets the agent read it
    # from the state: reading the loop-carried obs buffer instead cost 12% of a dream step on the CPU.
    observation_of = getattr(env, "observation_of_state", None)

    def one_step(c_p, state, keys_t, t):
        obs, env_state, carry, alive, first, ret, length, term = state
        if observation_of is not None:
            obs = observation_of(env_state)
        key_act, key_env = keys_t
        action, carry = agent.act(wm_params, c_p, carry, obs, first, key_act)
        obs, env_state, reward, terminated, truncated, _ = env.step(key_env, env_state, action, env_params)
        ret = ret + jnp.where(alive, reward, 0.0)
        length = length + alive.astype(jnp.int32)
        term = term | (alive & terminated)
        alive = alive & ~(terminated | truncated) & (t + 1 < max_steps)
        return (obs, env_state, carry, alive, jnp.zeros_like(first), ret, length, term)

    batched_step = jax.vmap(one_step, in_axes=(0, 0, 0, None))

    def chunk_body(loop_state):
        t, state = loop_state

        # The chunk's keys in one batched call (per-step calls cost a threefry loop each on the CPU).
        chunk_keys = jax.vmap(lambda i: jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, t + i)))(run_keys))(
            jnp.arange(chunk))  # [chunk, B, 2, key]

        def scan_body(state, inputs):
            i, keys_i = inputs
            return batched_step(c_params, state, (keys_i[:, 0], keys_i[:, 1]), t + i), None

        state, _ = jax.lax.scan(scan_body, state, (jnp.arange(chunk), chunk_keys))
        return t + chunk, state

    def cond(loop_state):
        t, state = loop_state
        return (t < max_steps) & jnp.any(state[3])

    zeros_f = jnp.zeros((batch,), jnp.float32)
    init = (obs, env_state, carry, jnp.ones((batch,), bool), jnp.ones((batch,), bool), zeros_f,
            jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), bool))
    _, final = jax.lax.while_loop(cond, chunk_body, (jnp.array(0), init))
    return EpisodeStats(returns=final[5], lengths=final[6], terminated=final[7])


def _run_sharded(env, env_params, agent: Agent, wm_params: WorldModelParams, c_params, keys: jax.Array,
                 max_steps: int, chunk: int, mesh: Mesh) -> EpisodeStats:
    """`run_episodes` with the batch split over `mesh`'s one axis; padded to a multiple of its size with copies
    of episode 0, whose results are dropped."""
    if len(mesh.axis_names) != 1:
        raise ConfigError(f"rollouts shard over a 1-D mesh, got axes {mesh.axis_names}")
    batch, devices = keys.shape[0], mesh.size
    padded = -(-batch // devices) * devices

    def pad(x):
        return x if padded == batch else jnp.concatenate([x, jnp.repeat(x[:1], padded - batch, axis=0)])

    def local(c_params_local, keys_local):
        return run_episodes(env, env_params, agent, wm_params, c_params_local, keys_local, max_steps, chunk)

    axis = P(mesh.axis_names[0])
    sharded = jax.shard_map(local, mesh=mesh, in_specs=(axis, axis), out_specs=axis, check_vma=False)
    stats = sharded(jax.tree.map(pad, c_params), pad(keys))
    return jax.tree.map(lambda x: x[:batch], stats)


def population_returns(env, env_params, agent: Agent, wm_params: WorldModelParams, population,
                       key: jax.Array, rollouts: int, max_steps: int, chunk: int = 50,
                       common_random_numbers: bool = True, mesh: Mesh | None = None) -> jax.Array:
    """Mean return over `rollouts` episodes for each member of `population` (pytree with leading axis P).

    With common random numbers every member meets the same `rollouts` episode seeds, which makes
    their comparison fairer (the original shared seeds across the population the same way).
    """
    pop_size = jax.tree.leaves(population)[0].shape[0]
    if common_random_numbers:
        keys = jnp.tile(jax.random.split(key, rollouts), (pop_size, 1))
    else:
        keys = jax.random.split(key, pop_size * rollouts)
    flat_params = jax.tree.map(lambda x: jnp.repeat(x, rollouts, axis=0), population)
    stats = run_episodes(env, env_params, agent, wm_params, flat_params, keys, max_steps, chunk, mesh)
    return stats.returns.reshape((pop_size, rollouts)).mean(axis=1)


def evaluate_params(env, env_params, agent: Agent, wm_params: WorldModelParams, c_params, key: jax.Array,
                    episodes: int, max_steps: int, chunk: int = 50, mesh: Mesh | None = None) -> EpisodeStats:
    """`episodes` episodes of one controller (unbatched params)."""
    keys = jax.random.split(key, episodes)
    batched = jax.tree.map(lambda x: jnp.broadcast_to(x, (episodes, *x.shape)), c_params)
    return run_episodes(env, env_params, agent, wm_params, batched, keys, max_steps, chunk, mesh)


def random_policy_returns(env, env_params, key: jax.Array, episodes: int, max_steps: int, chunk: int = 50,
                          mesh: Mesh | None = None) -> EpisodeStats:
    """Episodes of a uniformly random policy (the baseline every report shows)."""
    from worldmodels_jax.envs.actions import action_spec, sample_action

    spec = action_spec(env.action_space(env_params))

    @dataclasses.dataclass(frozen=True)
    class _Random:
        def init_carry(self, wm_params):
            return jnp.zeros(())

        def act(self, wm_params, c_params, carry, obs, first, key):
            return sample_action(key, spec), carry

    dummy = jnp.zeros((episodes,))
    return run_episodes(env, env_params, _Random(), WorldModelParams(), dummy, jax.random.split(key, episodes),
                        max_steps, chunk, mesh)
