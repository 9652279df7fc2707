"""DQN (Mnih et al. 2015) with optional Double DQN, compiled whole.

Structure of a run (all static, no `lax.cond` on the training schedule, so vmapping over seeds costs
no wasted branches):

    warm-up:  `learning_starts` vector steps with a uniform-random policy fill the replay buffer
    periods:  `num_evals` times
                 `iters_per_eval` times: `train_frequency` epsilon-greedy vector steps,
                                         then `gradient_steps` minibatch updates
                 greedy evaluation on `eval_episodes` fresh episodes

`make_dqn(config)` exposes the pieces (`init`, `period`) so a caller can stop early (the benchmark
does); `make_train(config)` returns `train(key)`, the whole run as one scan, for `jit(vmap(train))`.

Bootstrapping: the stored next observation is `info["final_observation"]` and the stored discount
is gamma * (1 - terminated), so a time-limit truncation still bootstraps from the state reached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from worldmodels_jax.errors import ConfigError, check
from worldmodels_jax.rl import targets
from worldmodels_jax.rl.common import epsilon_greedy, evaluate_episodes, make_discrete_env, make_schedule
from worldmodels_jax.rl.networks import make_network
from worldmodels_jax.rl.replay import ReplayState, replay_add_batch, replay_init, replay_sample


@dataclass(frozen=True)
class DQNConfig:
    """DQN / Double DQN on a gymnax env with a Discrete action space."""

    env_id: str = "CartPole-v1"
    """gymnax environment id (Discrete actions)."""
    max_episode_steps: int = 0
    """Time limit (truncation) of an episode; 0 keeps the env's own (500 for CartPole-v1)."""
    num_envs: int = 4
    """Parallel environments; one vector step is num_envs env steps."""
    total_steps: int = 100_000
    """Environment steps per seed (summed over parallel envs), warm-up included."""
    learning_starts: int = 1_000
    """Env steps of uniform-random play that fill the buffer before learning starts."""
    buffer_size: int = 100_000
    """Replay capacity in transitions."""
    batch_size: int = 64
    """Minibatch size of one gradient step."""
    train_frequency: int = 64
    """Vector steps between two training phases."""
    gradient_steps: int = 128
    """Gradient steps per training phase (replay ratio = gradient_steps * batch / (train_frequency * num_envs))."""
    learning_rate: float = 1e-3
    """Adam learning rate at the start."""
    lr_end: float = 0.0
    """Learning rate at the end of the run (linear decay; equal to learning_rate for a constant one)."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    max_grad_norm: float = 10.0
    """Global gradient-norm clip (0 disables it)."""
    gamma: float = 0.99
    """Discount factor."""
    target_update: Literal["periodic", "polyak"] = "periodic"
    """Copy the online params every target_update_interval gradient steps, or Polyak-average with tau."""
    target_update_interval: int = 128
    """Gradient steps between target copies (periodic)."""
    tau: float = 0.005
    """Polyak rate: target <- tau * online + (1 - tau) * target after every gradient step."""
    eps_start: float = 1.0
    """Initial exploration rate (after warm-up)."""
    eps_end: float = 0.04
    """Final exploration rate."""
    eps_fraction: float = 0.16
    """Fraction of total_steps over which epsilon decays linearly."""
    huber_delta: float = 1.0
    """Huber loss threshold on the TD error (use a large value for a squared loss)."""
    reward_clip: bool = False
    """Clip rewards to [-1, 1] before storing them (Mnih et al. 2015, for Atari-like scores)."""
    double_dqn: bool = True
    """Double DQN: the online net picks the next action, the target net values it."""
    network: Literal["auto", "mlp", "cnn"] = "auto"
    """Q-network: the MinAtar CNN for (H, W, C) observations, an MLP otherwise."""
    hidden: tuple[int, ...] = (128, 128)
    """MLP hidden widths (the CNN uses the first as its dense width)."""
    num_evals: int = 40
    """Greedy evaluations along the run (learning-curve points)."""
    eval_episodes: int = 50
    """Greedy episodes per evaluation."""
    eval_epsilon: float = 0.0
    """Exploration rate during evaluation (0: greedy)."""
    keep_best: bool = True
    """Deliver the params of the best evaluation so far (ties go to the later one) rather than the last
    ones, like SB3's EvalCallback best model; the final test re-evaluates them on fresh episodes."""
    test_episodes: int = 100
    """Fresh greedy episodes of the final test of the delivered params."""

    def validate(self) -> None:
        positive = ("num_envs", "total_steps", "buffer_size", "batch_size", "train_frequency",
                    "gradient_steps", "target_update_interval", "num_evals", "eval_episodes")
        for name in positive:
            check(getattr(self, name) >= 1, ConfigError, f"{name} must be >= 1, got {getattr(self, name)}")
        check(self.learning_starts >= self.batch_size, ConfigError,
              f"learning_starts ({self.learning_starts}) must be >= batch_size ({self.batch_size})")
        check(self.learning_starts <= self.buffer_size, ConfigError,
              "learning_starts must not exceed buffer_size")
        check(self.num_envs <= self.buffer_size, ConfigError, "num_envs must not exceed buffer_size")
        check(self.target_update in ("periodic", "polyak"), ConfigError,
              f"target_update must be 'periodic' or 'polyak', got {self.target_update!r}")
        check(0.0 < self.tau <= 1.0, ConfigError, f"tau must be in (0, 1], got {self.tau}")
        check(0.0 <= self.gamma <= 1.0, ConfigError, f"gamma must be in [0, 1], got {self.gamma}")
        check(0.0 < self.eps_fraction <= 1.0, ConfigError, "eps_fraction must be in (0, 1]")


class Transition(NamedTuple):
    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    discount: jax.Array  # gamma * (1 - terminated)
    next_obs: jax.Array  # info["final_observation"]


@struct.dataclass
class Runner:
    params: Any
    target_params: Any
    best_params: Any  # params of the best evaluation so far
    best_return: jax.Array  # its mean evaluation return
    opt_state: Any
    buffer: ReplayState
    env_state: Any
    obs: jax.Array
    episode_return: jax.Array  # (num_envs,) running undiscounted return
    key: jax.Array
    env_steps: jax.Array  # int32
    grad_steps: jax.Array  # int32


class DQN(NamedTuple):
    config: DQNConfig
    env: Any
    env_params: Any
    network: Any
    init: Any  # key -> Runner (warm-up done)
    period: Any  # Runner -> (Runner, metrics dict)
    test: Any  # (Runner, key) -> (delivered params, (test_episodes,) returns)
    greedy_act: Any  # (params, key, obs) -> action
    steps_per_period: int


def td_loss(network, params, target_params, batch: Transition, double: bool, huber_delta: float):
    """Mean Huber loss of the (Double) Q-learning TD errors of a minibatch."""
    q_t_target = network.apply(target_params, batch.next_obs)
    if double:
        # One forward pass of the online net over obs and next_obs together (cheaper on a CPU).
        q_online = network.apply(params, jnp.concatenate([batch.obs, batch.next_obs]))
        q_tm1, q_t_online = jnp.split(q_online, 2)
        td = jax.vmap(targets.double_q_learning)(
            q_tm1, batch.action, batch.reward, batch.discount, q_t_target, q_t_online
        )
    else:
        q_tm1 = network.apply(params, batch.obs)
        td = jax.vmap(targets.q_learning)(q_tm1, batch.action, batch.reward, batch.discount, q_t_target)
    return jnp.mean(targets.huber(td, huber_delta)), td


def make_dqn(config: DQNConfig) -> DQN:
    config.validate()
    env, params = make_discrete_env(config.env_id)
    if config.max_episode_steps > 0:
        params = params.replace(max_steps_in_episode=config.max_episode_steps)
    num_actions = env.action_space(params).n
    obs_shape = tuple(env.observation_space(params).shape)
    network = make_network(config.network, obs_shape, num_actions, config.hidden)

    n = config.num_envs
    warmup_iters = -(-config.learning_starts // n)
    learn_steps = config.total_steps - warmup_iters * n
    steps_per_iter = config.train_frequency * n
    iters_per_eval = learn_steps // (steps_per_iter * config.num_evals)
    check(iters_per_eval >= 1, ConfigError,
          f"total_steps {config.total_steps} is too small for learning_starts {config.learning_starts}, "
          f"num_evals {config.num_evals} and train_frequency * num_envs = {steps_per_iter}")
    steps_per_period = iters_per_eval * steps_per_iter
    total_grad_steps = iters_per_eval * config.num_evals * config.gradient_steps

    eps_fn = make_schedule("linear", config.eps_start, config.eps_end,
                           int(config.eps_fraction * config.total_steps))
    lr_fn = make_schedule("linear", config.learning_rate, config.lr_end, total_grad_steps)
    chain = [optax.clip_by_global_norm(config.max_grad_norm)] if config.max_grad_norm > 0 else []
    optimizer = optax.chain(*chain, optax.adam(lr_fn, eps=config.adam_eps))
    step_env = jax.vmap(env.step, (0, 0, 0, None))
    q_fn = jax.vmap(lambda p, o: network.apply(p, o), (None, 0))

    def act(params_, key, obs, epsilon):
        # Batched epsilon-greedy: one uniform and one randint draw for all envs (fewer PRNG calls than a
        # vmapped per-env `epsilon_greedy`, so a smaller program to compile; the same distribution).
        q = q_fn(params_, obs)
        key_explore, key_action = jax.random.split(key)
        explore = jax.random.uniform(key_explore, (n,)) < epsilon
        random_action = jax.random.randint(key_action, (n,), 0, num_actions)
        return jnp.where(explore, random_action, jnp.argmax(q, axis=-1)).astype(jnp.int32)

    def greedy_act(params_, key, obs):
        q = network.apply(params_, obs)
        if config.eval_epsilon == 0.0:  # static: greedy evaluation draws no random numbers
            return jnp.argmax(q).astype(jnp.int32)
        return epsilon_greedy(key, q, config.eval_epsilon)

    def env_step(runner: Runner, epsilon, random_policy: bool):
        key, key_act, key_env = jax.random.split(runner.key, 3)
        if random_policy:
            action = jax.random.randint(key_act, (n,), 0, num_actions)
        else:
            action = act(runner.params, key_act, runner.obs, epsilon)
        obs, env_state, reward, terminated, truncated, info = step_env(
            jax.random.split(key_env, n), runner.env_state, action, params
        )
        stored_reward = jnp.clip(reward, -1.0, 1.0) if config.reward_clip else reward
        transition = Transition(
            obs=runner.obs,
            action=action,
            reward=stored_reward.astype(jnp.float32),
            discount=targets.bootstrap_discount(config.gamma, terminated),
            next_obs=info["final_observation"],
        )
        done = jnp.logical_or(terminated, truncated)
        episode_return = runner.episode_return + reward
        finished = (jnp.sum(jnp.where(done, episode_return, 0.0)), jnp.sum(done))
        runner = runner.replace(
            buffer=replay_add_batch(runner.buffer, transition),
            env_state=env_state,
            obs=obs,
            episode_return=jnp.where(done, 0.0, episode_return),
            key=key,
            env_steps=runner.env_steps + n,
        )
        return runner, finished

    def grad_step(runner: Runner, _):
        key, key_sample = jax.random.split(runner.key)
        batch = replay_sample(runner.buffer, key_sample, config.batch_size)
        (loss, _), grads = jax.value_and_grad(
            lambda p: td_loss(network, p, runner.target_params, batch, config.double_dqn, config.huber_delta),
            has_aux=True,
        )(runner.params)
        updates, opt_state = optimizer.update(grads, runner.opt_state, runner.params)
        params_ = optax.apply_updates(runner.params, updates)
        grad_steps = runner.grad_steps + 1
        if config.target_update == "polyak":
            target = optax.incremental_update(params_, runner.target_params, config.tau)
        else:
            target = optax.periodic_update(params_, runner.target_params, grad_steps,
                                           config.target_update_interval)
        runner = runner.replace(params=params_, target_params=target, opt_state=opt_state, key=key,
                                grad_steps=grad_steps)
        return runner, loss

    def train_iteration(runner: Runner, _):
        def collect(r, _):
            return env_step(r, eps_fn(r.env_steps), random_policy=False)

        runner, (ret_sum, ep_count) = jax.lax.scan(collect, runner, None, config.train_frequency)
        runner, losses = jax.lax.scan(grad_step, runner, None, config.gradient_steps)
        return runner, (ret_sum.sum(), ep_count.sum(), losses.mean())

    def init(key) -> Runner:
        key_net, key_reset, key_run = jax.random.split(key, 3)
        obs, env_state = jax.vmap(env.reset, (0, None))(jax.random.split(key_reset, n), params)
        net_params = network.init(key_net, obs[0])
        example = Transition(obs=obs[0], action=jnp.int32(0), reward=jnp.float32(0),
                             discount=jnp.float32(0), next_obs=obs[0])
        runner = Runner(
            params=net_params,
            target_params=net_params,
            best_params=net_params,
            best_return=jnp.float32(-jnp.inf),
            opt_state=optimizer.init(net_params),
            buffer=replay_init(example, config.buffer_size),
            env_state=env_state,
            obs=obs,
            episode_return=jnp.zeros(n, jnp.float32),
            key=key_run,
            env_steps=jnp.int32(0),
            grad_steps=jnp.int32(0),
        )
        runner, _ = jax.lax.scan(lambda r, _: env_step(r, 1.0, random_policy=True), runner, None,
                                 warmup_iters)
        return runner

    def period(runner: Runner):
        runner, (ret_sum, ep_count, losses) = jax.lax.scan(train_iteration, runner, None, iters_per_eval)
        key, key_eval = jax.random.split(runner.key)
        runner = runner.replace(key=key)
        returns = evaluate_episodes(env, params, lambda k, o: greedy_act(runner.params, k, o), key_eval,
                                    config.eval_episodes)
        better = returns.mean() >= runner.best_return
        runner = runner.replace(
            best_params=jax.tree.map(lambda b, p: jnp.where(better, p, b), runner.best_params, runner.params),
            best_return=jnp.where(better, returns.mean(), runner.best_return),
        )
        metrics = {
            "env_steps": runner.env_steps,
            "eval_return": returns.mean(),
            "eval_return_std": returns.std(),
            "train_return": ret_sum.sum() / jnp.maximum(ep_count.sum(), 1),
            "loss": losses.mean(),
            "epsilon": eps_fn(runner.env_steps),
        }
        return runner, metrics

    def test(runner: Runner, key):
        delivered = runner.best_params if config.keep_best else runner.params
        returns = evaluate_episodes(env, params, lambda k, o: greedy_act(delivered, k, o), key,
                                    config.test_episodes)
        return delivered, returns

    return DQN(config=config, env=env, env_params=params, network=network, init=init, period=period,
               test=test, greedy_act=greedy_act, steps_per_period=steps_per_period)


def make_train(config: DQNConfig):
    """Returns `train(key) -> {"params", "metrics", "test_return"}` for one seed.

    `metrics` holds (num_evals,) curves; `params` are the delivered params (best evaluation if
    `keep_best`, else the last); `test_return` is their mean over `test_episodes` fresh episodes.
    """
    dqn = make_dqn(config)

    def train(key):
        key_run, key_test = jax.random.split(key)
        runner = dqn.init(key_run)
        runner, metrics = jax.lax.scan(lambda r, _: dqn.period(r), runner, None, config.num_evals)
        delivered, returns = dqn.test(runner, key_test)
        return {"params": delivered, "metrics": metrics, "test_return": returns.mean(),
                "test_return_std": returns.std()}

    return train


PRESETS: dict[str, DQNConfig] = {
    # CartPole-v1 on a CPU (the defaults): RL Zoo's schedule (256 env steps, then 128 gradient steps
    # with a target sync per phase), a 128x128 MLP, lr 1e-3 decayed to 0, Double DQN.
    "cartpole": DQNConfig(),
    # CartPole-v1 against the clock (benchmarks/bench_dqn.py): RL Zoo's CartPole schedule (256 env steps, then
    # 128 gradient steps; epsilon 1 -> 0.04 over 8k steps, plain DQN) with a 64x64 MLP at a constant lr 3e-3, which
    # costs about half as much per step as 128x128; total_steps only sets the cap. Chosen by an 8-seed sweep
    # (docs/rl.md).
    "cartpole-fast": DQNConfig(
        total_steps=100_000, eps_fraction=0.08, learning_rate=3e-3, lr_end=3e-3, double_dqn=False,
        hidden=(64, 64),
    ),
    # A quick run (CI-sized): a 64x64 MLP, constant lr, 20k steps.
    "tiny": DQNConfig(
        total_steps=20_000, buffer_size=20_000, train_frequency=16, gradient_steps=16,
        target_update_interval=100, learning_rate=2.3e-3, lr_end=2.3e-3, double_dqn=False,
        hidden=(64, 64), num_evals=8, eval_episodes=20, test_episodes=20,
    ),
    # Breakout-MinAtar on a CPU: 250k env steps, one batch-64 update per 8 env steps (~10 min on 2 cores).
    "breakout-cpu": DQNConfig(
        env_id="Breakout-MinAtar", num_envs=8, total_steps=250_000, learning_starts=5_000,
        buffer_size=100_000, batch_size=64, train_frequency=1, gradient_steps=1, learning_rate=5e-4,
        lr_end=5e-5, adam_eps=3.125e-4, target_update_interval=500, eps_end=0.05, eps_fraction=0.2,
        hidden=(128,), num_evals=10, eval_episodes=32, test_episodes=100, double_dqn=True,
    ),
    # Breakout-MinAtar on a GPU: the MinAtar paper's scale (5M frames), many envs per step.
    "breakout-gpu": DQNConfig(
        env_id="Breakout-MinAtar", num_envs=128, total_steps=5_000_000, learning_starts=50_000,
        buffer_size=500_000, batch_size=256, train_frequency=1, gradient_steps=4, learning_rate=3e-4,
        lr_end=3e-5, adam_eps=3.125e-4, target_update_interval=1000, eps_end=0.01, eps_fraction=0.1,
        hidden=(128,), num_evals=50, eval_episodes=128, double_dqn=True,
    ),
}
