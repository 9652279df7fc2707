"""The evolution engine and rollouts: evosax's sign convention, non-finite handling, early-exit rollouts."""

import dataclasses

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from worldmodels_jax.errors import ConfigError
from worldmodels_jax.evolution import WORST_FITNESS, ESConfig, es_state_is_finite, make_evolution
from worldmodels_jax.models.controller import ActionMapping, Controller, ControllerConfig, init_controller
from worldmodels_jax.rollouts import Agent, WorldModelParams, population_returns, run_episodes


def test_cma_es_maximises_fitness():
    target = {"w": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array(3.0)}

    def fitness(population, key):
        return -sum(jnp.sum(jnp.square(population[k] - target[k]).reshape(population[k].shape[0], -1), axis=1)
                    for k in target)

    cfg = ESConfig(population=16, sigma_init=0.5, l2_coef=0.0, generations=60)
    init, run_chunk, mean_params = make_evolution(fitness, jax.tree.map(jnp.zeros_like, target), cfg)
    state, metrics = run_chunk(init(jax.random.PRNGKey(0)), 60)
    mean = mean_params(state)
    np.testing.assert_allclose(mean["w"], target["w"], atol=0.05)
    assert float(mean["b"]) == pytest.approx(3.0, abs=0.05)
    assert metrics["return_max"][-1] > metrics["return_max"][0]
    assert es_state_is_finite(state)


@pytest.mark.parametrize("strategy", ["CMA_ES", "Sep_CMA_ES", "SNES", "Open_ES"])
def test_the_initial_state_has_the_types_of_a_chunk_s_output_so_a_chunk_compiles_once(strategy):
    """evosax's init leaves weakly typed fields; fed back, a chunk's output would make the jit compile again."""
    cfg = ESConfig(strategy=strategy, population=8, sigma_init=0.5, l2_coef=0.0)
    init, run_chunk, _ = make_evolution(lambda p, k: -jnp.sum(jnp.square(p["x"]), axis=1), {"x": jnp.zeros(3)}, cfg)
    state = init(jax.random.PRNGKey(0))
    after, _ = run_chunk(state, 2)
    assert jax.tree.map(jax.typeof, state) == jax.tree.map(jax.typeof, after)
    run_chunk(after, 2)
    assert run_chunk._cache_size() == 1


@pytest.mark.parametrize("strategy", ["Sep_CMA_ES", "SNES", "Open_ES"])
def test_other_strategies_by_name_improve(strategy):
    def fitness(population, key):
        return -jnp.sum(jnp.square(population["x"] - 2.0), axis=1)

    cfg = ESConfig(strategy=strategy, population=16, sigma_init=0.5, l2_coef=0.0, open_es_lr=0.1)
    init, run_chunk, mean_params = make_evolution(fitness, {"x": jnp.zeros(4)}, cfg)
    state, metrics = run_chunk(init(jax.random.PRNGKey(1)), 80)
    assert float(jnp.sum(jnp.square(mean_params(state)["x"] - 2.0))) < 0.5 * 16.0


def test_non_finite_fitness_counts_as_worst_and_is_reported():
    def fitness(population, key):
        values = -jnp.sum(jnp.square(population["x"]), axis=1)
        return values.at[0].set(jnp.nan).at[1].set(jnp.inf)

    cfg = ESConfig(population=8, l2_coef=0.0)
    init, run_chunk, _ = make_evolution(fitness, {"x": jnp.zeros(3)}, cfg)
    state, metrics = run_chunk(init(jax.random.PRNGKey(0)), 3)
    np.testing.assert_array_equal(metrics["non_finite"], 2)
    assert es_state_is_finite(state)
    assert np.all(np.asarray(metrics["fitness_best"]) > WORST_FITNESS)


def test_l2_penalty_pulls_towards_zero():
    def fitness(population, key):
        return jnp.zeros(population["x"].shape[0])  # only the penalty matters

    cfg = ESConfig(population=16, sigma_init=0.5, l2_coef=1.0)
    init, run_chunk, mean_params = make_evolution(fitness, {"x": jnp.zeros(3)}, cfg, x0={"x": jnp.full(3, 3.0)})
    state, _ = run_chunk(init(jax.random.PRNGKey(0)), 40)
    assert float(jnp.max(jnp.abs(mean_params(state)["x"]))) < 0.5


def test_invalid_es_configs_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown evolution strategy"):
        ESConfig(strategy="CMAES")
    with pytest.raises(ConfigError, match="population must be >= 2"):
        ESConfig(population=1)
    with pytest.raises(ConfigError, match="even"):
        ESConfig(strategy="Open_ES", population=7)


@dataclasses.dataclass(frozen=True)
class LinearAgent:
    """A state-based agent for CartPole-v1: action = 1 if w·obs > 0."""

    def init_carry(self, wm_params):
        return jnp.zeros(())

    def act(self, wm_params, c_params, carry, obs, first, key):
        return (jnp.dot(c_params, obs) > 0).astype(jnp.int32), carry


def _python_episode(env, params, w, key, max_steps):
    obs, state = env.reset(jax.random.fold_in(key, 0), params)
    run_key = jax.random.fold_in(key, 1)
    total = 0.0
    for t in range(max_steps):
        _, key_env = jax.random.split(jax.random.fold_in(run_key, t))
        action = jnp.int32(float(jnp.dot(w, obs)) > 0)
        obs, state, reward, terminated, truncated, _ = env.step(key_env, state, action, params)
        total += float(reward)
        if terminated or truncated:
            return total, t + 1
    return total, max_steps


def test_early_exit_rollouts_match_a_python_loop():
    env, params = gymnax.make("CartPole-v1")
    weights = jnp.array([[0.0, 0.0, 1.0, 0.0], [0.1, 0.5, 3.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    keys = jax.random.split(jax.random.PRNGKey(5), 3)
    stats = jax.jit(lambda w, k: run_episodes(env, params, LinearAgent(), WorldModelParams(), w, k, 200, chunk=16))(
        weights, keys)
    for i in range(3):
        ret, length = _python_episode(env, params, weights[i], keys[i], 200)
        assert float(stats.returns[i]) == pytest.approx(ret)
        assert int(stats.lengths[i]) == length


def test_population_returns_use_common_random_numbers():
    env, params = gymnax.make("CartPole-v1")
    w = jnp.array([0.1, 0.5, 3.0, 1.0])
    population = jnp.stack([w, w, w])
    returns = population_returns(env, params, LinearAgent(), WorldModelParams(), population, jax.random.PRNGKey(0),
                                 rollouts=3, max_steps=100, chunk=10)
    assert float(returns[0]) == float(returns[1]) == float(returns[2])
    weak = jnp.array([0.0, 0.0, 1.0, 0.0])  # returns depend on the initial state
    independent = population_returns(env, params, LinearAgent(), WorldModelParams(), jnp.stack([weak] * 8),
                                     jax.random.PRNGKey(0), rollouts=1, max_steps=500, chunk=10,
                                     common_random_numbers=False)
    assert len(np.unique(np.asarray(independent))) > 1


def test_held_features_replace_c_s_input_before_standardisation():
    """`WorldModelParams.held`: C sees the held z or h (then standardised), whatever the observation."""
    config = ControllerConfig(mode="z_h", z_size=3, feature_size=2, num_outputs=2)
    controller = Controller(config)
    c_params = init_controller(jax.random.PRNGKey(0), config)
    agent = Agent(controller=controller, mapping=ActionMapping("box", 2, (-1.0, -1.0), (1.0, 1.0)),
                  obs_kind="features")
    z, h = jnp.array([0.3, -1.2, 2.0]), jnp.array([1.5, -0.7])
    stats = {"z_mean": jnp.array([0.1, 0.2, 0.3]), "z_std": jnp.array([1.0, 2.0, 4.0]),
             "h_mean": jnp.array([0.5, -0.5]), "h_std": jnp.array([2.0, 0.5])}
    carry = agent.init_carry(None)

    def act(held):
        wm = WorldModelParams(feature_stats=stats, held=held)
        return agent.act(wm, c_params, carry, jnp.concatenate([z, h]), jnp.array(False), jax.random.PRNGKey(1))[0]

    def by_hand(z_in, h_in):
        raw = controller.apply({"params": c_params}, (z_in - stats["z_mean"]) / stats["z_std"],
                               (h_in - stats["h_mean"]) / stats["h_std"], None)
        return agent.mapping(raw)

    np.testing.assert_allclose(act(None), by_hand(z, h), rtol=1e-6)
    np.testing.assert_allclose(act({"h": stats["h_mean"]}), by_hand(z, stats["h_mean"]), rtol=1e-6)
    np.testing.assert_allclose(act({"z": stats["z_mean"]}), by_hand(stats["z_mean"], h), rtol=1e-6)
    assert not np.allclose(act({"h": stats["h_mean"]}), act(None))  # holding h changes what C does
