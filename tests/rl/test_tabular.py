"""Tabular control: it must reach the DP-optimal success rate; rollouts must agree with the exact model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from worldmodels_jax.errors import ConfigError, EnvError
from worldmodels_jax.rl import dp, tabular
from worldmodels_jax.rl.common import evaluate_episodes, make_discrete_env


def test_rollout_success_rate_matches_exact_probability():
    model = dp.tabular_model("FrozenLake-misc", map_name="4x4", is_slippery=True)
    policy = dp.value_iteration(model.mdp, 0.99, tol=1e-8).policy
    exact = float(dp.success_probability(model.mdp, policy, model.start, model.goal, model.horizon))
    env, params = make_discrete_env("FrozenLake-misc", {"map_name": "4x4", "is_slippery": True})
    returns = jax.jit(
        lambda k: evaluate_episodes(env, params, lambda _, obs: policy[obs], k, 4000)
    )(jax.random.key(0))
    # 4000 Bernoulli draws: std ~ 0.007; 4 sigma.
    assert abs(float(returns.mean()) - exact) < 0.028
    assert exact == pytest.approx(0.7402, abs=1e-3)


@pytest.mark.parametrize("algorithm", ["q-learning", "sarsa"])
def test_deterministic_lake_is_solved(algorithm):
    config = tabular.TabularConfig(
        algorithm=algorithm, is_slippery=False, total_steps=48_000, num_evals=2, eval_episodes=8
    )
    out = jax.jit(jax.vmap(tabular.make_train(config)))(jax.random.split(jax.random.key(0), 2))
    np.testing.assert_allclose(out["eval_return"][:, -1], 1.0)
    np.testing.assert_array_equal(out["steps"][0], [24000, 48000])


@pytest.mark.slow
def test_q_learning_reaches_dp_optimal_success_on_slippery_lake():
    config = tabular.TabularConfig(total_steps=120_000, num_evals=2, eval_episodes=500)
    out = jax.jit(jax.vmap(tabular.make_train(config)))(jax.random.split(jax.random.key(3), 3))
    model = dp.tabular_model("FrozenLake-misc", map_name="4x4", is_slippery=True)
    optimal = dp.value_iteration(model.mdp, 0.99, tol=1e-8).policy
    best = float(dp.success_probability(model.mdp, optimal, model.start, model.goal, model.horizon))
    exact = jax.vmap(lambda q: dp.success_probability(model.mdp, jnp.argmax(q, -1), model.start,
                                                      model.goal, model.horizon))(out["q"])
    assert float(exact.min()) > best - 0.03, (np.asarray(exact), best)
    # The rollout estimate along the way tracks it (500 episodes: std ~0.02).
    assert np.all(np.abs(np.asarray(out["eval_return"][:, -1]) - np.asarray(exact)) < 0.09)


def test_seeds_differ():
    config = tabular.TabularConfig(total_steps=4_000, num_evals=1, eval_episodes=4)
    out = jax.jit(jax.vmap(tabular.make_train(config)))(jax.random.split(jax.random.key(0), 2))
    assert not np.allclose(out["q"][0], out["q"][1])


def test_bad_inputs_are_clear_errors():
    with pytest.raises(EnvError, match="observation space"):
        tabular.make_train(tabular.TabularConfig(env_id="CartPole-v1"))
    with pytest.raises(EnvError, match="action space"):
        tabular.make_train(tabular.TabularConfig(env_id="Pendulum-v1"))
    with pytest.raises(ConfigError, match="algorithm"):
        tabular.make_train(tabular.TabularConfig(algorithm="td-lambda"))
    with pytest.raises(ConfigError, match="map_name"):
        tabular.make_train(tabular.TabularConfig(map_name="5x5"))
