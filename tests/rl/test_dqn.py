"""DQN: the loss against hand-computed values, what the buffer stores at episode ends, clear errors,
and a tiny run that must learn."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from worldmodels_jax.errors import ConfigError, EnvError
from worldmodels_jax.rl import dqn


class TableNet:
    """A 'network' that looks Q up in a table: params (S, A), obs int (B,)."""

    @staticmethod
    def apply(params, obs):
        return params[obs]


def test_td_loss_hand_computed_plain_and_double():
    online = jnp.array([[1.0, 2.0], [3.0, 0.0], [0.0, 5.0]])
    target = jnp.array([[0.0, 0.0], [1.0, 4.0], [10.0, 1.0]])
    batch = dqn.Transition(
        obs=jnp.array([0, 0]), action=jnp.array([1, 0]), reward=jnp.array([1.0, 0.5]),
        discount=jnp.array([0.5, 0.0]), next_obs=jnp.array([1, 2]),
    )
    # Plain: targets 1 + 0.5 * max(1, 4) = 3 and 0.5 + 0 = 0.5; td = 3 - 2 = 1, 0.5 - 1 = -0.5
    # Huber(1) = 0.5, Huber(-0.5) = 0.125 -> mean 0.3125
    loss, td = jax.jit(lambda: dqn.td_loss(TableNet, online, target, batch, False, 1.0))()
    np.testing.assert_allclose(td, [1.0, -0.5])
    np.testing.assert_allclose(loss, 0.3125)
    # Double: the online net picks argmax(3, 0) = 0 at obs 1 -> target 1 + 0.5 * 1 = 1.5; td = -0.5
    loss, td = dqn.td_loss(TableNet, online, target, batch, True, 1.0)
    np.testing.assert_allclose(td, [-0.5, -0.5])
    np.testing.assert_allclose(loss, 0.125)
    # Huber beyond delta: delta 0.25 -> 0.25 * (1 - 0.125) = 0.21875 and 0.25 * (0.5 - 0.125) = 0.09375
    loss, _ = dqn.td_loss(TableNet, online, target, batch, False, 0.25)
    np.testing.assert_allclose(loss, (0.21875 + 0.09375) / 2)


def _warm_buffer(max_episode_steps):
    config = dqn.DQNConfig(
        max_episode_steps=max_episode_steps, num_envs=4, learning_starts=400, buffer_size=400,
        batch_size=32, total_steps=2_000, num_evals=1, hidden=(8,),
    )
    runner = jax.jit(dqn.make_dqn(config).init)(jax.random.key(0))
    return config, runner.buffer.data


def _cartpole_successor(obs, action):
    """Explicit Euler step of CartPole (gymnax's constants): what the next observation must be."""
    x, x_dot, theta, theta_dot = obs.T
    force = np.where(action == 1, 10.0, -10.0)
    cos, sin = np.cos(theta), np.sin(theta)
    temp = (force + 0.05 * theta_dot**2 * sin) / 1.1
    theta_acc = (9.8 * sin - cos * temp) / (0.5 * (4.0 / 3.0 - 0.1 * cos**2 / 1.1))
    x_acc = temp - 0.05 * theta_acc * cos / 1.1
    return np.stack([x + 0.02 * x_dot, x_dot + 0.02 * x_acc, theta + 0.02 * theta_dot,
                     theta_dot + 0.02 * theta_acc], 1)


@pytest.mark.parametrize("max_episode_steps", [0, 7])
def test_buffer_stores_final_observation_and_terminated_discount(max_episode_steps):
    """Every stored next_obs is the physical successor of obs, also where an episode ended (never the
    reset observation); the discount is 0 exactly where the pole fell or the cart left, gamma on
    time-limit truncations."""
    config, data = _warm_buffer(max_episode_steps)
    obs, action = np.asarray(data.obs), np.asarray(data.action)
    next_obs, discount = np.asarray(data.next_obs), np.asarray(data.discount)
    np.testing.assert_allclose(next_obs, _cartpole_successor(obs, action), atol=1e-5)
    fell = (np.abs(next_obs[:, 0]) > 2.4) | (np.abs(next_obs[:, 2]) > 12 * 2 * np.pi / 360)
    np.testing.assert_allclose(discount, np.where(fell, 0.0, config.gamma), atol=1e-7)
    assert fell.any() or max_episode_steps  # random play falls within 500 steps, not within 7
    # Episode boundaries, read off the ring (filled in order, num_envs transitions per vector step):
    # where the next transition of the same env does not start from this one's next_obs.
    n = config.num_envs
    same_env_next_obs = obs.reshape(-1, n, 4)[1:]
    ended = ~np.all(np.isclose(same_env_next_obs, next_obs.reshape(-1, n, 4)[:-1]), axis=-1)
    truncated = ended & ~fell.reshape(-1, n)[:-1]
    np.testing.assert_array_equal(np.abs(same_env_next_obs[ended]) <= 0.05, True)  # fresh resets
    if max_episode_steps:
        assert truncated.sum() >= 20  # 100 vector steps x 4 envs with a 7-step limit
        np.testing.assert_allclose(discount.reshape(-1, n)[:-1][truncated], config.gamma)
    else:
        assert truncated.sum() == 0  # random play never survives 500 steps


def test_clear_errors():
    with pytest.raises(EnvError, match="action space"):
        dqn.make_dqn(dqn.DQNConfig(env_id="Pendulum-v1"))
    with pytest.raises(EnvError, match="unknown environment"):
        dqn.make_dqn(dqn.DQNConfig(env_id="NoSuchEnv-v0"))
    with pytest.raises(ConfigError, match="learning_starts"):
        dqn.make_dqn(dqn.DQNConfig(learning_starts=10, batch_size=64))
    with pytest.raises(ConfigError, match="too small"):
        dqn.make_dqn(dqn.DQNConfig(total_steps=1_200, learning_starts=1_000))
    with pytest.raises(ConfigError, match="cnn"):
        dqn.make_dqn(dqn.DQNConfig(network="cnn"))


@pytest.mark.slow
def test_tiny_dqn_learns_cartpole():
    """A small budget (20k steps, tiny preset) must take CartPole well past random (~22) to a test return > 150."""
    config = dataclasses.replace(dqn.PRESETS["tiny"])
    out = jax.jit(jax.vmap(dqn.make_train(config)))(jax.random.split(jax.random.key(0), 2))
    assert np.all(np.asarray(out["test_return"]) > 150), np.asarray(out["metrics"]["eval_return"])
    np.testing.assert_array_equal(np.diff(np.asarray(out["metrics"]["env_steps"][0])) > 0, True)
