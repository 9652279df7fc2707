"""REINFORCE (Monte Carlo policy gradient) with a learned state-value baseline, compiled whole.

Each update rolls out exactly one episode in each of `num_envs` envs (a fixed `max_steps_in_episode`
scan with an alive mask), computes the discounted returns-to-go G_t, and takes one Adam step on

    policy loss   -mean_t[ log pi(a_t | s_t) * (G_t - V(s_t)) ]   (advantages normalised over the batch)
    value loss     mean_t[ (G_t - V(s_t))^2 ]

over the steps inside the episodes. Bootstrapping rule: an episode cut by the time limit (truncated, not
terminated) gets gamma * V(final_observation) added after its last reward; a terminated one gets 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax

from worldmodels_jax.errors import ConfigError, check
from worldmodels_jax.rl.common import evaluate_episodes, make_discrete_env
from worldmodels_jax.rl.networks import MLP


@dataclass(frozen=True)
class ReinforceConfig:
    """REINFORCE with a value baseline on a gymnax env with a Discrete action space."""

    env_id: str = "CartPole-v1"
    """gymnax environment id (Discrete actions, vector observations)."""
    num_envs: int = 16
    """Episodes per update (one per parallel env)."""
    num_updates: int = 200
    """Policy-gradient updates per seed."""
    gamma: float = 0.99
    """Discount of the returns-to-go."""
    learning_rate: float = 3e-3
    """Adam learning rate of the policy at the start (decays linearly to lr_end)."""
    lr_end: float = 3e-4
    """Policy learning rate at the last update."""
    value_learning_rate: float = 3e-3
    """Adam learning rate of the baseline."""
    baseline: bool = True
    """Subtract a learned V(s); without it the plain return (normalised) weights the log-probabilities."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden widths of both the policy and the value MLP."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip (0 disables it)."""
    num_evals: int = 10
    """Greedy evaluations along the run (learning-curve points)."""
    eval_episodes: int = 100
    """Episodes per evaluation."""
    eval_greedy: bool = True
    """Evaluate argmax actions (True) or sampled ones (False)."""

    def validate(self) -> None:
        for name in ("num_envs", "num_updates", "num_evals", "eval_episodes"):
            check(getattr(self, name) >= 1, ConfigError, f"{name} must be >= 1")
        check(self.num_updates % self.num_evals == 0, ConfigError,
              f"num_updates ({self.num_updates}) must be a multiple of num_evals ({self.num_evals})")
        check(0.0 <= self.gamma <= 1.0, ConfigError, f"gamma must be in [0, 1], got {self.gamma}")


def returns_to_go(rewards, terminated, truncated, bootstrap_values, alive, gamma):
    """Discounted returns of ONE env's episode, time-major (T,) inputs.

    G_t = r_t + gamma * [terminated_t ? 0 : truncated_t ? V(final obs_t) : G_{t+1}], masked by `alive`
    (steps after the episode ended are 0 and do not leak into earlier returns).
    """

    def body(g_next, x):
        r, term, trunc, v_boot, a = x
        cont = jnp.where(term, 0.0, jnp.where(trunc, v_boot, g_next))
        g = (r + gamma * cont) * a
        return g, g

    _, g = jax.lax.scan(body, jnp.float32(0.0), (rewards, terminated, truncated, bootstrap_values, alive),
                        reverse=True)
    return g


def make_train(config: ReinforceConfig):
    """Returns `train(key) -> {"params", "metrics": {name: (num_evals,)}}` for one seed."""
    config.validate()
    env, params = make_discrete_env(config.env_id)
    num_actions = env.action_space(params).n
    horizon = int(params.max_steps_in_episode)
    policy_net = MLP(num_outputs=num_actions, hidden=config.hidden)
    value_net = MLP(num_outputs=1, hidden=config.hidden)
    updates_per_eval = config.num_updates // config.num_evals
    lr = optax.linear_schedule(config.learning_rate, config.lr_end, config.num_updates)
    clip = [optax.clip_by_global_norm(config.max_grad_norm)] if config.max_grad_norm > 0 else []
    policy_opt = optax.chain(*clip, optax.adam(lr))
    value_opt = optax.chain(*clip, optax.adam(config.value_learning_rate))
    n = config.num_envs
    step_env = jax.vmap(env.step, (0, 0, 0, None))

    def rollout(policy_params, value_params, key):
        key_reset, key_steps = jax.random.split(key)
        obs, state = jax.vmap(env.reset, (0, None))(jax.random.split(key_reset, n), params)

        def step(carry, key_t):
            obs, state, alive = carry
            key_act, key_env = jax.random.split(key_t)
            logits = policy_net.apply(policy_params, obs)
            action = jax.random.categorical(key_act, logits)
            next_obs, state, reward, terminated, truncated, info = step_env(
                jax.random.split(key_env, n), state, action, params
            )
            v_boot = value_net.apply(value_params, info["final_observation"])[:, 0]
            out = (obs, action, reward, terminated, truncated, v_boot, alive)
            alive = alive * (1.0 - jnp.logical_or(terminated, truncated))
            return (next_obs, state, alive), out

        init = (obs, state, jnp.ones(n, jnp.float32))
        _, traj = jax.lax.scan(step, init, jax.random.split(key_steps, horizon))
        return traj  # time-major (T, n, ...)

    def losses(policy_params, value_params, traj):
        obs, action, reward, terminated, truncated, v_boot, alive = traj
        g = jax.vmap(returns_to_go, (1, 1, 1, 1, 1, None), 1)(
            reward, terminated, truncated, jax.lax.stop_gradient(v_boot), alive, config.gamma
        )
        count = jnp.maximum(alive.sum(), 1.0)
        values = value_net.apply(value_params, obs)[..., 0]
        adv = g - jax.lax.stop_gradient(values) if config.baseline else g
        mean = (adv * alive).sum() / count
        std = jnp.sqrt((((adv - mean) * alive) ** 2).sum() / count) + 1e-8
        adv = (adv - mean) / std
        logp = jax.nn.log_softmax(policy_net.apply(policy_params, obs))
        logp_a = jnp.take_along_axis(logp, action[..., None], -1)[..., 0]
        policy_loss = -(logp_a * adv * alive).sum() / count
        value_loss = (((g - values) ** 2) * alive).sum() / count
        episode_return = (reward * alive).sum(0).mean()
        return policy_loss, value_loss, episode_return

    def update(carry, key):
        policy_params, value_params, policy_state, value_state = carry
        traj = rollout(policy_params, value_params, key)
        (p_loss, (v_loss, ret)), (p_grad, v_grad) = jax.value_and_grad(
            lambda pp, vp: (lambda pl, vl, r: (pl + vl, (vl, r)))(*losses(pp, vp, traj)),
            argnums=(0, 1), has_aux=True,
        )(policy_params, value_params)
        p_upd, policy_state = policy_opt.update(p_grad, policy_state, policy_params)
        v_upd, value_state = value_opt.update(v_grad, value_state, value_params)
        policy_params = optax.apply_updates(policy_params, p_upd)
        value_params = optax.apply_updates(value_params, v_upd)
        return (policy_params, value_params, policy_state, value_state), (ret, v_loss)

    def act_fn(policy_params):
        def act(key, obs):
            logits = policy_net.apply(policy_params, obs)
            if config.eval_greedy:
                return jnp.argmax(logits).astype(jnp.int32)
            return jax.random.categorical(key, logits).astype(jnp.int32)

        return act

    def period(carry, key):
        key_updates, key_eval = jax.random.split(key)
        carry, (ret, v_loss) = jax.lax.scan(update, carry, jax.random.split(key_updates, updates_per_eval))
        returns = evaluate_episodes(env, params, act_fn(carry[0]), key_eval, config.eval_episodes)
        metrics = {"eval_return": returns.mean(), "eval_return_std": returns.std(),
                   "train_return": ret.mean(), "value_loss": v_loss.mean()}
        return carry, metrics

    def train(key):
        key_policy, key_value, key_run = jax.random.split(key, 3)
        obs = jnp.zeros(env.observation_space(params).shape, jnp.float32)  # for shapes only
        policy_params = policy_net.init(key_policy, obs)
        value_params = value_net.init(key_value, obs)
        carry = (policy_params, value_params, policy_opt.init(policy_params), value_opt.init(value_params))
        carry, metrics = jax.lax.scan(period, carry, jax.random.split(key_run, config.num_evals))
        episodes = jnp.arange(1, config.num_evals + 1) * updates_per_eval * n
        metrics = {**metrics, "episodes": episodes}
        return {"params": {"policy": carry[0], "value": carry[1]}, "metrics": metrics}

    return train


PRESETS: dict[str, ReinforceConfig] = {
    "cartpole": ReinforceConfig(),
    "tiny": ReinforceConfig(num_updates=40, num_evals=2, eval_episodes=10),
}
