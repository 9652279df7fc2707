"""The large-population evolution engine: sharded over devices and hosts, chunked, resumable.

    problem = env_problem("CartPole-v1", MLPPolicy((32,), num_actions=2))
    result = evolve(problem, ESConfig(strategy="CMA_ES", population=1024, rollouts=4, ...),
                    EvolveConfig(seed=0, pop_chunk=256), out="runs/cartpole")

The original's protocol: a candidate's fitness is the mean return of R rollouts (`ESConfig.rollouts`), all
candidates of a generation meet the same episode seeds (common random numbers), strategies that can
sample antithetic pairs do, an optional L2 penalty is subtracted, and every K generations
(`ESConfig.eval_every`) the distribution mean is evaluated over many episodes with the best-so-far kept.

How it is built:
- `make_engine` does the Python-side setup once and returns pure, jitted `init()` and
  `run_chunk(state, generations)`. A chunk is a `lax.scan` over generations (ask → evaluate → tell)
  followed by the evaluation of the mean and the best-so-far update, all in one compiled call.
- The population axis is sharded over a 1-D `jax.sharding.Mesh` named "pop" (all devices, of every
  process under `jax.distributed`): evaluation is a `shard_map`, the ES state is replicated. Each device
  evaluates its members in chunks of `EvolveConfig.pop_chunk` with `lax.map`, so populations larger
  than memory run without changing any result.
- Episodes run in chunks of steps inside a `while_loop` that exits when every episode of the batch has
  ended; no per-step state is stored.
- `evolve` is the host loop: progress bar, metrics JSONL, orbax checkpoints of the whole engine state
  (ES state, problem state such as the observation normaliser, RNG key, best-so-far) after every chunk,
  `resume`, and a clear stop when the ES state becomes non-finite.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from worldmodels_jax.envs.stepping import step_without_reset
from worldmodels_jax.errors import CheckpointError, ConfigError, EnvError, NonFiniteError
from worldmodels_jax.evolution import (WORST_FITNESS, ESConfig, es_state_is_finite, make_strategy, mean_sq,
                                      strong_types)
from worldmodels_jax.models.small_dense import resolve_small_dense, small_dense

AXIS = "pop"
STAGE = "evolve"


# ---------------------------------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class EvolveConfig:
    """Engine settings (the strategy and the evaluation protocol live in `ESConfig`)."""

    seed: int = 0
    """Seed of the whole run: ES sampling, episode seeds, evaluation seeds."""
    pop_chunk: int | None = None
    """Members evaluated at once on each device (`lax.map` over chunks); None: the device's whole share."""
    max_steps: int | None = None
    """Episode step limit; None: the env's own `max_steps_in_episode`."""
    step_chunk: int = 50
    """Env steps per iteration of the early-exit `while_loop`."""
    early_exit: bool = True
    """Stop stepping once every episode of a batch has ended (False: always `max_steps` steps)."""
    normalize_obs: bool = False
    """Normalise observations by running mean/std (problem state, checkpointed) before the policy."""
    devices: int | None = None
    """Shard over the first this many devices; None: all devices of all processes."""
    small_dense: int | None = None
    """A Linen policy's `nn.Dense` layers with at most 32 inputs and at most this many kernel entries are computed
    as multiply-adds, fused with the rest of the step (`models.small_dense`; the same function up to float
    rounding). None: automatic (256 on the CPU, where an MLP 4-32-2 steps 1.7-2.8x faster; off on GPU and TPU,
    not measured there); 0: off."""

    def __post_init__(self):
        if self.pop_chunk is not None and self.pop_chunk < 1:
            raise ConfigError(f"pop_chunk must be >= 1 or None, got {self.pop_chunk}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.step_chunk < 1:
            raise ConfigError(f"step_chunk must be >= 1, got {self.step_chunk}")
        if self.devices is not None and self.devices < 1:
            raise ConfigError(f"devices must be >= 1, got {self.devices}")
        if self.small_dense is not None and self.small_dense < 0:
            raise ConfigError(f"small_dense must be None (automatic), 0 (off) or a kernel size > 0, got "
                              f"{self.small_dense}")


MIN_MEMBERS_PER_CPU_DEVICE = 2048
"""`cpu_devices_for` gives each simulated CPU device at least this many members. On the 2-core CPU, CartPole-v1
with an MLP 4-32-2 as XLA's dots and 4 rollouts (benchmarks/bench_neuroevolution.py): two devices against one,
interleaved in one process, two devices ran 0.88x as fast as one at population 64, 0.97-1.03x at 256-2048 and
1.22-1.32x at 4096; with a 4-64-64-2 policy 1.65x at 4096."""


def cpu_devices_for(population: int, eval_episodes: int = 1, pop_chunk: int | None = None,
                    cores: int | None = None, fused_policy: bool = False) -> int:
    """How many CPU devices to simulate for a population on a CPU host: one per core, but each with at least
    MIN_MEMBERS_PER_CPU_DEVICE members, and a count that divides the population, eval_episodes and (per device)
    pop_chunk. 1 where that leaves no choice, and 1 for a `fused_policy`.

    On a CPU, JAX runs each device's shard on a thread of its own, while one device's batched dots leave cores
    idle; with a small population the sharding costs more than it gains (see MIN_MEMBERS_PER_CPU_DEVICE). A
    fused policy (every Dense layer computed as multiply-adds, `models.small_dense.all_dense_small`) makes a
    step one large loop, which XLA already spreads over the cores: one device used 1.9 CPU-seconds per second
    at population 4096, and two devices ran 0.83-0.90x as fast as one at 1024-16384.
    The count is fixed when JAX starts (`jax_num_cpu_devices`), so `wmj evolve` applies it by starting over.
    """
    if fused_policy:
        return 1
    import os

    cores = (os.cpu_count() or 1) if cores is None else cores
    most = max(1, min(cores, population // MIN_MEMBERS_PER_CPU_DEVICE))
    for n in range(most, 1, -1):
        local = population // n
        chunk_fits = pop_chunk is None or local % min(pop_chunk, local) == 0
        if population % n == 0 and eval_episodes % n == 0 and chunk_fits:
            return n
    return 1


def cpu_devices_environ(devices: int, environ: dict | None = None) -> dict[str, str]:
    """A copy of `environ` (default: os.environ) for a new process with `devices` simulated CPU devices:
    `JAX_NUM_CPU_DEVICES` set, and any `--xla_force_host_platform_device_count` dropped from `XLA_FLAGS`."""
    import os

    environ = dict(os.environ if environ is None else environ)
    flags = [f for f in environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    return {**environ, "JAX_NUM_CPU_DEVICES": str(devices), "XLA_FLAGS": " ".join(flags)}


def cpu_devices_to_start(choice: str, auto: Callable[[], int | None]) -> int | None:
    """The simulated CPU device count a command asked for with `--cpu-devices choice` ('auto' or N >= 1), or None
    to keep this process's devices: on GPU/TPU, under multi-process JAX, when the process already has N, or when
    `auto()` (None: the user chose the mesh) asks for no more than it already simulates."""
    try:
        wanted = None if choice == "auto" else int(choice)
    except ValueError:
        wanted = 0
    if wanted is not None and wanted < 1:
        raise ConfigError(f"--cpu-devices must be 'auto' or an int >= 1, got {choice!r}")
    if jax.default_backend() != "cpu" or jax.process_count() > 1:
        return None
    have = jax.local_device_count()
    if wanted is None:
        wanted = auto()
        # never fewer than the user already simulates (XLA_FLAGS=--xla_force_host_platform_device_count)
        return wanted if wanted is not None and wanted > have else None
    return wanted if wanted != have else None


def restart_with_cpu_devices(devices: int, command: list[str]):
    """Replaces this process with `python *command` run with `devices` simulated CPU devices (the count is fixed
    when JAX starts). The new process sees WMJ_CPU_DEVICES_BOOTSTRAPPED=1 and must not restart again."""
    import os
    import sys

    env = {**cpu_devices_environ(devices), "WMJ_CPU_DEVICES_BOOTSTRAPPED": "1"}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *command], env)


def make_mesh(devices: int | None = None) -> Mesh:
    """A 1-D mesh named "pop" over all devices (of every process), or the first `devices` of them."""
    available = jax.devices()
    if devices is not None and devices > len(available):
        raise ConfigError(f"asked for {devices} devices, only {len(available)} exist")
    chosen = available if devices is None else available[:devices]
    return Mesh(np.asarray(chosen), (AXIS,))


def validate(es: ESConfig, config: EvolveConfig, n_devices: int) -> None:
    """Checks the sizes that must divide; raises ConfigError naming the fix."""
    if es.population % n_devices:
        raise ConfigError(f"population {es.population} must be divisible by the number of devices {n_devices} "
                          f"(the population axis is sharded); use e.g. {n_devices * max(1, es.population // n_devices)}")
    local = es.population // n_devices
    if config.pop_chunk is not None and local % min(config.pop_chunk, local):
        raise ConfigError(f"each device evaluates {local} members, which pop_chunk {config.pop_chunk} must divide")
    if es.eval_episodes % n_devices:
        raise ConfigError(f"eval_episodes {es.eval_episodes} must be divisible by the number of devices {n_devices}")


# ---------------------------------------------------------------------------------------------- policies
class MLPPolicy(nn.Module):
    """obs → tanh MLP → action. Discrete: argmax of logits (or a categorical sample); Box: tanh scaled to bounds.

    Called as `apply(params, obs, key)`, the convention of evosax's `GymnaxProblem`, so any Linen module
    with that signature can be used in its place.
    """

    hidden: Sequence[int] = (32,)
    num_outputs: int = 2
    discrete: bool = True
    stochastic: bool = False
    """Discrete only: sample from softmax(logits) instead of taking the argmax."""
    low: float = -1.0
    high: float = 1.0

    @nn.compact
    def __call__(self, obs, key=None):
        x = obs.reshape(-1) if obs.ndim > 1 else obs
        for width in self.hidden:
            x = nn.tanh(nn.Dense(width)(x))
        x = nn.Dense(self.num_outputs)(x)
        if self.discrete:
            return jax.random.categorical(key, x) if self.stochastic else jnp.argmax(x)
        return self.low + (jnp.tanh(x) + 1.0) * 0.5 * (self.high - self.low)


@dataclasses.dataclass(frozen=True)
class LinenPolicyAgent:
    """Adapts a Linen module `apply(params, obs, key) -> action` to the `Agent` protocol of rollouts.py."""

    module: nn.Module
    small_dense_entries: int = 0
    """Dense layers up to this kernel size as multiply-adds (`models.small_dense`; 0: XLA's dots)."""

    def init_carry(self, wm_params):
        return jnp.zeros(())

    def act(self, wm_params, c_params, carry, obs, first, key):
        with small_dense(self.small_dense_entries):
            return self.module.apply(c_params, obs, key), carry


# ---------------------------------------------------------------------------------------------- problems
@struct.dataclass
class ObsNorm:
    """Running observation statistics (Chan et al.'s parallel mean/variance)."""

    count: jax.Array  # ()
    mean: jax.Array  # obs shape
    m2: jax.Array  # obs shape

    def std(self) -> jax.Array:
        var = jnp.where(self.count > 1, self.m2 / jnp.maximum(self.count, 1.0), 1.0)
        return jnp.clip(jnp.sqrt(var), 1e-6, 1e6)

    def merge(self, count, shifted_sum, shifted_sq) -> "ObsNorm":
        """Adds a batch given as Σ(x−mean) and Σ(x−mean)² over `count` samples, shifted by the current mean."""
        total = self.count + count
        safe_n = jnp.maximum(count, 1.0)
        batch_mean_shift = shifted_sum / safe_n
        batch_m2 = shifted_sq - shifted_sum * batch_mean_shift
        mean = self.mean + shifted_sum / jnp.maximum(total, 1.0)
        m2 = self.m2 + batch_m2 + jnp.square(batch_mean_shift) * self.count * count / jnp.maximum(total, 1.0)
        keep = count > 0
        return ObsNorm(total, jnp.where(keep, mean, self.mean), jnp.where(keep, jnp.maximum(m2, 0.0), self.m2))


@dataclasses.dataclass(frozen=True)
class EnvProblem:
    """Maximise the mean episode return of an `Agent` (rollouts.py protocol) in a gymnax env.

    `template` is the controller's parameter pytree (also the initial mean x0). The problem state is the
    observation normaliser (an empty pytree when `normalize_obs` is off).
    """

    env: Any
    env_params: Any
    agent: Any
    template: Any
    wm_params: Any = None
    max_steps: int = 500
    step_chunk: int = 50
    early_exit: bool = True
    normalize_obs: bool = False

    def init_state(self):
        if not self.normalize_obs:
            return {}
        shape = self.env.observation_space(self.env_params).shape
        return ObsNorm(jnp.zeros((), jnp.float32), jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32))

    def update_state(self, pstate, stats):
        if not self.normalize_obs:
            return pstate
        return pstate.merge(stats["count"], stats["sum"], stats["sq"])

    def episodes(self, params, keys, pstate, shared_keys: bool):
        """Episodes of a batch of members: params [p, ...]; keys [R] (shared by all members) or [p, R].

        Returns (returns [p, R], lengths [p, R], stats) where stats sums the normaliser's inputs and the
        steps simulated.
        """
        env, env_params, agent, wm = self.env, self.env_params, self.agent, self.wm_params
        max_steps, normalize = self.max_steps, self.normalize_obs
        p = jax.tree.leaves(params)[0].shape[0]
        rollouts = keys.shape[-2] if jnp.issubdtype(keys.dtype, jnp.unsignedinteger) else keys.shape[-1]
        fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))
        fold_all = (lambda k, i: fold(k, i)) if shared_keys else jax.vmap(fold, in_axes=(0, None))
        reset_keys, run_keys = fold_all(keys, 0), fold_all(keys, 1)
        reset = jax.vmap(env.reset, in_axes=(0, None))
        if shared_keys:
            obs, env_state = reset(reset_keys, env_params)
            obs, env_state = jax.tree.map(lambda x: jnp.broadcast_to(x, (p, *x.shape)), (obs, env_state))
        else:
            obs, env_state = jax.vmap(reset, in_axes=(0, None))(reset_keys, env_params)
        carry = agent.init_carry(wm)
        carry = jax.tree.map(lambda x: jnp.broadcast_to(x, (p, rollouts, *jnp.shape(x))), carry)
        if normalize:
            norm_mean, norm_std = pstate.mean, pstate.std()

        def env_step(c_p, state, key_t, t):
            obs, env_state, carry, alive, first, ret, length, s1, s2 = state
            key_act, key_env = jax.random.split(key_t)
            x = (obs - norm_mean) / norm_std if normalize else obs
            action, carry = agent.act(wm, c_p, carry, x, first, key_act)
            if normalize:
                d = jnp.where(alive, obs - norm_mean, 0.0)
                s1, s2 = s1 + d, s2 + d * d
            # no auto-reset: a rollout's return is its first episode's; after the end the state is frozen
            obs_new, state_new, reward, terminated, truncated = step_without_reset(env, key_env, env_state, action,
                                                                                   env_params)
            obs, env_state = jax.tree.map(lambda new, old: jnp.where(alive, new, old),
                                          (obs_new, state_new), (obs, env_state))
            ret = ret + jnp.where(alive, reward, 0.0)
            length = length + alive.astype(jnp.int32)
            alive = alive & ~(terminated | truncated) & (t + 1 < max_steps)
            return (obs, env_state, carry, alive, jnp.zeros_like(first), ret, length, s1, s2)

        over_rollouts = jax.vmap(env_step, in_axes=(None, 0, 0, None))
        batched = jax.vmap(over_rollouts, in_axes=(0, 0, None if shared_keys else 0, None))
        step_keys_at = jax.vmap(jax.random.fold_in, in_axes=(0, None))
        if not shared_keys:
            step_keys_at = jax.vmap(step_keys_at, in_axes=(0, None))

        def chunk_body(loop):
            t, state = loop

            def scan_body(state, i):
                return batched(params, state, step_keys_at(run_keys, t + i), t + i), None

            state, _ = jax.lax.scan(scan_body, state, jnp.arange(self.step_chunk))
            return t + self.step_chunk, state

        def cond(loop):
            t, state = loop
            return (t < max_steps) & (jnp.any(state[3]) | (not self.early_exit))

        zeros = jnp.zeros((p, rollouts), jnp.float32)
        obs_zeros = jnp.zeros((p, rollouts, *obs.shape[2:]), jnp.float32) if normalize else zeros
        init = (obs, env_state, carry, jnp.ones((p, rollouts), bool), jnp.ones((p, rollouts), bool), zeros,
                jnp.zeros((p, rollouts), jnp.int32), obs_zeros, obs_zeros)
        t_end, final = jax.lax.while_loop(cond, chunk_body, (jnp.array(0), init))
        ret, length = final[5], final[6]
        stats = {"env_steps": jnp.sum(length).astype(jnp.float32),
                 "sim_steps": (t_end * p * rollouts).astype(jnp.float32)}
        if normalize:
            stats.update(count=jnp.sum(length).astype(jnp.float32), sum=jnp.sum(final[7], axis=(0, 1)),
                         sq=jnp.sum(final[8], axis=(0, 1)))
        return ret, length, stats


@dataclasses.dataclass(frozen=True)
class FunctionProblem:
    """A deterministic black-box objective `fn(params) -> score` (maximised); for tests and toy runs."""

    fn: Callable
    template: Any

    def init_state(self):
        return {}

    def update_state(self, pstate, stats):
        return pstate

    def episodes(self, params, keys, pstate, shared_keys: bool):
        score = jax.vmap(self.fn)(params)
        rollouts = keys.shape[-2] if jnp.issubdtype(keys.dtype, jnp.unsignedinteger) else keys.shape[-1]
        ret = jnp.broadcast_to(score[:, None], (score.shape[0], rollouts))
        ones = jnp.ones(ret.shape, jnp.int32)
        return ret, ones, {"env_steps": jnp.sum(ones).astype(jnp.float32), "sim_steps": jnp.sum(ones).astype(jnp.float32)}


def check_env_spaces(env, env_params, env_id: str = "the env", need_vector_obs: bool = True) -> tuple[int, bool, tuple]:
    """(number of policy outputs, discrete?, (low, high)) of an env, or EnvError if its spaces cannot be used."""
    try:
        obs_space, act_space = env.observation_space(env_params), env.action_space(env_params)
    except (NotImplementedError, AttributeError) as err:
        raise EnvError(f"{env_id} does not define observation_space/action_space ({err}); the engine needs both") from err
    shape = getattr(obs_space, "shape", None)
    if shape is None:
        raise EnvError(f"{env_id}'s observation space {type(obs_space).__name__} has no array shape")
    if need_vector_obs and len(shape) != 1:
        raise EnvError(f"{env_id} has observations of shape {tuple(shape)}; the mlp policy needs a vector "
                       "observation space. For pixel envs use an Agent with V (env_problem(..., agent=...)).")
    name = type(act_space).__name__
    if name == "Discrete":
        return int(act_space.n), True, (0.0, 0.0)
    if name == "Box" and len(act_space.shape) == 1:
        low, high = np.broadcast_to(np.asarray(act_space.low, np.float32), act_space.shape), \
            np.broadcast_to(np.asarray(act_space.high, np.float32), act_space.shape)
        if not (np.all(low == low[0]) and np.all(high == high[0]) and np.isfinite(low[0]) and np.isfinite(high[0])):
            raise EnvError(f"{env_id}'s Box action space needs finite, uniform bounds for the mlp policy")
        return int(act_space.shape[0]), False, (float(low[0]), float(high[0]))
    raise EnvError(f"{env_id}'s action space {name}{getattr(act_space, 'shape', '')} is not supported: "
                   "need Discrete or a 1-D Box")


def make_gymnax_env(env_id: str):
    """`gymnax.make(env_id)` with our envs registered; an unknown id is an EnvError."""
    import gymnax

    try:
        import worldmodels_jax.envs  # noqa: F401  (registers our envs with gymnax)
    except Exception:  # noqa: BLE001 - optional extras
        pass
    try:
        return gymnax.make(env_id)
    except Exception as err:  # noqa: BLE001 - gymnax raises ValueError with a long list
        raise EnvError(f"unknown gymnax env {env_id!r} ({str(err)[:200]})") from err


def env_problem(env, policy: nn.Module | None = None, *, agent=None, template=None, wm_params=None,
                env_params=None, config: EvolveConfig = EvolveConfig(), key: jax.Array | None = None) -> EnvProblem:
    """An `EnvProblem` for a gymnax env (an id, registered with gymnax, or an Environment instance).

    Either `policy`, a Linen module `apply(params, obs, key) -> action` (its params are initialised from
    `key` unless `template` is given), or `agent` (rollouts.py's protocol, e.g. V+M+C on pixels) with its
    controller `template` and `wm_params`.
    """
    env_id = env if isinstance(env, str) else type(env).__name__
    if isinstance(env, str):
        env, default_params = make_gymnax_env(env)
        env_params = default_params if env_params is None else env_params
    elif env_params is None:
        env_params = env.default_params
    if (policy is None) == (agent is None):
        raise ConfigError("give exactly one of policy (a Linen module) or agent (with its template)")
    if policy is not None:
        check_env_spaces(env, env_params, env_id, need_vector_obs=False)
        agent = LinenPolicyAgent(policy, resolve_small_dense(config.small_dense))
        if template is None:
            key = jax.random.PRNGKey(0) if key is None else key
            obs, _ = env.reset(key, env_params)
            template = policy.init(key, obs, key)
    elif template is None:
        raise ConfigError("an agent needs its controller parameter template")
    if config.normalize_obs:
        check_env_spaces(env, env_params, env_id, need_vector_obs=False)
    max_steps = config.max_steps or int(getattr(env_params, "max_steps_in_episode", 0) or 0)
    if max_steps < 1:
        raise ConfigError(f"{env_id} has no max_steps_in_episode; set EvolveConfig.max_steps")
    return EnvProblem(env, env_params, agent, template, wm_params, max_steps, config.step_chunk,
                      config.early_exit, config.normalize_obs)


def mlp_for_env(env, env_params, hidden: Sequence[int] = (32,), stochastic: bool = False, env_id: str = "the env"):
    """The MLPPolicy sized for a vector-observation env (EnvError otherwise)."""
    outputs, discrete, (low, high) = check_env_spaces(env, env_params, env_id, need_vector_obs=True)
    return MLPPolicy(tuple(hidden), outputs, discrete, stochastic, low, high)


# ---------------------------------------------------------------------------------------------- engine
@struct.dataclass
class EngineState:
    es_state: Any
    problem_state: Any
    key: jax.Array
    generation: jax.Array
    best_score: jax.Array
    best_params: Any


@dataclasses.dataclass(frozen=True)
class Engine:
    init: Callable  # () -> EngineState (replicated on the mesh)
    run_chunk: Callable  # (state, generations: static int) -> (state, per-generation metrics, eval metrics)
    run_generations: Callable  # (state, generations: static int) -> (state, metrics); no evaluation of the mean
    mean_params: Callable  # state -> the distribution mean as a parameter pytree
    evaluate: Callable  # (params, pstate, key) -> returns [eval_episodes]
    mesh: Mesh
    replicated: NamedSharding


def make_engine(problem, es: ESConfig, config: EvolveConfig = EvolveConfig(), mesh: Mesh | None = None) -> Engine:
    """Python-side setup once; returns the jitted, sharded pure functions of the run (see module docstring)."""
    mesh = make_mesh(config.devices) if mesh is None else mesh
    n_devices = mesh.size
    validate(es, config, n_devices)
    strategy, es_params = make_strategy(es, problem.template)
    x0 = problem.template
    local = es.population // n_devices
    chunk = local if config.pop_chunk is None else min(config.pop_chunk, local)
    n_chunks = local // chunk
    replicated = NamedSharding(mesh, P())

    def evaluate_local(params, member_ids, key, pstate):
        """A device's share: params [local, ...] in `n_chunks` chunks of `chunk` members."""
        if es.common_random_numbers:
            keys = jax.random.split(key, es.rollouts)
            shared = True
        else:
            member_keys = jax.vmap(lambda i: jax.random.fold_in(key, i))
            shared = False

        def one_chunk(args):
            p_chunk, ids = args
            keys_c = keys if shared else jax.vmap(lambda k: jax.random.split(k, es.rollouts))(member_keys(ids))
            ret, _, stats = problem.episodes(p_chunk, keys_c, pstate, shared)
            return ret.mean(axis=1), stats

        split = lambda x: x.reshape((n_chunks, chunk, *x.shape[1:]))  # noqa: E731
        returns, stats = jax.lax.map(one_chunk, (jax.tree.map(split, params), split(member_ids)))
        stats = jax.tree.map(lambda s: jax.lax.psum(jnp.sum(s, axis=0), AXIS), stats)
        return returns.reshape(local), stats

    evaluate_population = jax.shard_map(evaluate_local, mesh=mesh, in_specs=(P(AXIS), P(AXIS), P(), P()),
                                        out_specs=(P(AXIS), P()), check_vma=False)

    def evaluate_mean_local(params, keys, pstate):
        batched = jax.tree.map(lambda x: x[None], params)
        ret, _, _ = problem.episodes(batched, keys, pstate, True)
        return ret[0]

    evaluate_episodes = jax.shard_map(evaluate_mean_local, mesh=mesh, in_specs=(P(), P(AXIS), P()),
                                      out_specs=P(AXIS), check_vma=False)

    def evaluate(params, pstate, key):
        return evaluate_episodes(params, jax.random.split(key, es.eval_episodes), pstate)

    def init() -> EngineState:
        key_init, key_run = jax.random.split(jax.random.PRNGKey(config.seed))
        es_state = strategy.init(key_init, x0, es_params)
        # strong types: the state fed back from run_chunk must not trigger a second compile
        return strong_types(EngineState(es_state, problem.init_state(), key_run, jnp.zeros((), jnp.int32),
                                        jnp.asarray(-jnp.inf, jnp.float32), x0))

    member_ids = jnp.arange(es.population)

    def generation(state: EngineState, _):
        key, key_ask, key_fit, key_tell = jax.random.split(state.key, 4)
        population, es_state = strategy.ask(key_ask, state.es_state, es_params)
        population = jax.lax.with_sharding_constraint(population, replicated)
        returns, stats = evaluate_population(population, member_ids, key_fit, state.problem_state)
        fitness = returns - es.l2_coef * mean_sq(population) if es.l2_coef else returns
        finite = jnp.isfinite(fitness)
        fitness = jnp.where(finite, fitness, WORST_FITNESS)
        es_state, _ = strategy.tell(key_tell, population, -fitness, es_state, es_params)  # evosax minimises
        metrics = {
            "generation": state.generation + 1,
            "return_mean": jnp.mean(jnp.where(finite, returns, jnp.nan)),
            "return_max": jnp.max(jnp.where(finite, returns, -jnp.inf)),
            "return_min": jnp.min(jnp.where(finite, returns, jnp.inf)),
            "fitness_best": jnp.max(fitness),
            "non_finite": jnp.sum(~finite),
            "env_steps": stats["env_steps"],
            "sim_steps": stats["sim_steps"],
        }
        pstate = problem.update_state(state.problem_state, stats)
        return state.replace(es_state=es_state, problem_state=pstate, key=key, generation=state.generation + 1), metrics

    def run_generations(state: EngineState, generations: int):
        state, metrics = jax.lax.scan(generation, state, None, length=generations)
        return strong_types(state), metrics

    def run_chunk(state: EngineState, generations: int):
        state, metrics = run_generations(state, generations)
        key, key_eval = jax.random.split(state.key)
        mean = strategy.get_mean(state.es_state)
        returns = evaluate(mean, state.problem_state, key_eval)
        score = jnp.mean(returns)
        better = score > state.best_score  # a NaN score never replaces the best
        best_params = jax.tree.map(lambda m, b: jnp.where(better, m, b), mean, state.best_params)
        state = state.replace(key=key, best_score=jnp.where(better, score, state.best_score), best_params=best_params)
        evaluation = {"eval_mean": score, "eval_std": jnp.std(returns), "eval_min": jnp.min(returns),
                      "eval_max": jnp.max(returns), "best_eval": state.best_score}
        return state, metrics, evaluation

    return Engine(
        init=jax.jit(init, out_shardings=replicated),
        run_chunk=jax.jit(run_chunk, static_argnums=1, out_shardings=replicated, donate_argnums=0),
        run_generations=jax.jit(run_generations, static_argnums=1, out_shardings=replicated, donate_argnums=0),
        mean_params=jax.jit(lambda s: strategy.get_mean(s.es_state), out_shardings=replicated),
        evaluate=jax.jit(evaluate, out_shardings=replicated),
        mesh=mesh, replicated=replicated)


# ---------------------------------------------------------------------------------------------- host loop
def _host(tree):
    """Replicated (possibly multi-process) arrays → numpy, via each process's own copy."""
    def leaf(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return np.asarray(x)
    return jax.tree.map(leaf, tree)


def evolve(problem, es: ESConfig, config: EvolveConfig = EvolveConfig(), out: str | Path | None = None,
           resume: bool = False, progress: bool = True, mesh: Mesh | None = None,
           on_chunk: Callable[[dict], None] | None = None) -> dict:
    """Runs `es.generations` generations in chunks of `es.eval_every`, returns a summary dict.

    With `out`, writes config.json, metrics/evolve.jsonl (one record per generation; the chunk's last one
    carries the evaluation of the mean) and an orbax checkpoint of the whole engine state after every
    chunk; `resume=True` continues from the newest checkpoint. A non-finite ES state raises
    NonFiniteError before anything of that chunk is written, so the last checkpoint stays the last good one.
    """
    from tqdm.auto import tqdm

    from worldmodels_jax.rundir import RunDir

    engine = make_engine(problem, es, config, mesh)
    primary = jax.process_index() == 0
    state = engine.init()
    run = checkpointer = None
    if out is not None:
        run = RunDir(out)
        # Every process takes part in every orbax call, in the same order (orbax synchronises them);
        # only process 0 writes metrics, config and summary.
        checkpointer = run.checkpointer(STAGE)
        existing = checkpointer.latest_step()
        if existing is not None and not resume:
            raise ConfigError(f"{out} already holds an evolve checkpoint (generation {existing}); "
                              "pass resume=True (--resume) to continue it, or choose a new output directory")
        if resume and existing is not None:
            restored = checkpointer.restore(_host(state), existing)[1]
            state = jax.device_put(restored, engine.replicated)
            generation = int(_host(state.generation))
            if primary:
                kept = [r for r in run.read_metrics(STAGE) if r["generation"] <= generation]
                run.reset_metrics(STAGE)
                if kept:
                    run.log_metrics(STAGE, kept)
        elif primary:
            run.reset_metrics(STAGE)
        if primary:
            run.save_config({"es": es, "engine": config, "devices": engine.mesh.size,
                             "processes": jax.process_count()})
    start_generation = int(_host(state.generation))
    stopped_early, last_eval, env_steps, sim_steps = False, None, 0.0, 0.0
    start = time.perf_counter()
    with tqdm(total=es.generations, initial=start_generation, desc=f"evolve {es.strategy}",
              disable=not (progress and primary), dynamic_ncols=True) as bar:
        while int(_host(state.generation)) < es.generations:
            generations = min(es.eval_every, es.generations - int(_host(state.generation)))
            state, metrics, evaluation = engine.run_chunk(state, generations)
            if not es_state_is_finite(_host(state)):
                where = Path(out) / "checkpoints" / STAGE if out is not None else "(no output directory)"
                raise NonFiniteError(
                    f"the {es.strategy} state became non-finite by generation {int(_host(state.generation))}; "
                    f"stopped. The last good checkpoint is kept in {where}. Lower sigma_init, add an L2 penalty, "
                    "or check the fitness for overflow.")
            metrics, evaluation = _host(metrics), _host(evaluation)
            records = [{k: v[i] for k, v in metrics.items()} for i in range(generations)]
            records[-1].update(evaluation)
            last_eval = {k: float(v) for k, v in evaluation.items()}
            env_steps += float(np.sum(metrics["env_steps"]))
            sim_steps += float(np.sum(metrics["sim_steps"]))
            if run is not None:
                if primary:
                    run.log_metrics(STAGE, records)
                checkpointer.save(int(records[-1]["generation"]), _host(state))
            if on_chunk is not None:
                on_chunk(records[-1])
            bar.set_postfix(pop=f"{float(records[-1]['return_mean']):.1f}", mean=f"{last_eval['eval_mean']:.1f}",
                            best=f"{last_eval['best_eval']:.1f}", bad=int(np.sum(metrics["non_finite"])))
            bar.update(generations)
            if es.target_score is not None and last_eval["eval_mean"] >= es.target_score:
                stopped_early = True
                break
    seconds = time.perf_counter() - start
    host_state = _host(state)
    summary = {
        "generations": int(host_state.generation),
        "resumed_from": start_generation,
        "best_eval": float(host_state.best_score),
        "last_eval": last_eval,
        "stopped_early": stopped_early,
        "seconds": seconds,
        "env_steps": env_steps,
        "sim_steps": sim_steps,
        "env_steps_per_s": env_steps / seconds if seconds > 0 else None,
        "devices": engine.mesh.size,
        "processes": jax.process_count(),
        "mean_params": _host(engine.mean_params(state)),
        "best_params": host_state.best_params,
        "state": host_state,
    }
    if run is not None:
        run.checkpointer("evolve-best", max_to_keep=1).save(
            int(host_state.generation), {"best_params": host_state.best_params, "mean_params": summary["mean_params"],
                                         "problem_state": host_state.problem_state})
        if primary:
            from worldmodels_jax.rundir import write_json_atomic

            record = {k: v for k, v in summary.items() if k not in ("mean_params", "best_params", "state")}
            write_json_atomic(run.path / "summary.json", record)
    return summary


def load_summary(out: str | Path) -> dict:
    path = Path(out) / "summary.json"
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: the run has not finished")
    return json.loads(path.read_text())
